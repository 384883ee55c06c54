"""What each ``peft-gpt2`` subcommand does with its parsed flags (``main.py`` builds the parser and runs one).

Heavy libraries load inside each command, after every check that needs none of them (``preflight``), so
``peft-gpt2 --help`` and a refusal are instant.
"""

from __future__ import annotations

import argparse
import sys

from peft_gpt2.cli.flags import generation_flags, named_adapters
from peft_gpt2.errors import PeftGpt2Error


def quiet_loading_bars() -> None:
    """Keep the training bar and the loss; drop the per-step bars of weight loading and dataset maps."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def train(args: argparse.Namespace) -> None:
    from peft_gpt2.config.preflight import check_train
    from peft_gpt2.config.recipe import load_recipe

    check_train(args.recipe, args.set, overwrite=args.overwrite)  # output folder, data path: before any library
    recipe = load_recipe(args.recipe, args.set)  # the train and method sections import TRL and PEFT to check keys
    quiet_loading_bars()
    from peft_gpt2.training.train import train as train_recipe

    train_recipe(recipe, overwrite=args.overwrite, resume=args.resume)


def decoding_settings(args: argparse.Namespace, folders: list[str] | tuple[str, ...] = ()):
    """Decoding: the flags given, over the runs' recorded ``generation`` section, over the defaults."""
    from peft_gpt2.inference.settings import resolve_settings
    from peft_gpt2.run_folder import Provenance

    given = {k: v for k, v in vars(args).items() if k in generation_flags() and v is not None}
    return resolve_settings(given, [Provenance.read(f).generation for f in folders])


def evaluate(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from peft_gpt2.adapters.folder import base_of, folder_kind
    from peft_gpt2.evaluation.compare import write_jsonl, write_lines
    from peft_gpt2.evaluation.evaluate import answer_records, evaluate_model, load_eval_records
    from peft_gpt2.run_folder import Provenance

    records, task = load_eval_records(args.data, args.task)  # bad data fails before any model loads
    records = records[: args.limit] if args.limit else records
    settings = decoding_settings(args, [args.adapter] if args.adapter else [])
    if args.adapter and folder_kind(args.adapter, allow_pickle=args.allow_pickle) == "model":
        model_name, adapter = args.adapter, None  # a full fine-tune is a model folder
    else:
        model_name, adapter = args.model or (base_of(args.adapter) if args.adapter else None), args.adapter
    if model_name is None:
        raise PeftGpt2Error("eval needs --model, --adapter, or both")
    quiet_loading_bars()
    from peft_gpt2.adapters.adapter_set import AdapterSet
    from peft_gpt2.models.loading import load_base

    model, tokenizer = load_base(model_name)
    adapters = {"adapter": adapter} if adapter else {}
    adapter_set = AdapterSet(model, tokenizer, adapters, force=args.force, allow_pickle=args.allow_pickle)
    template = args.template or Provenance.read(args.adapter or model_name).template
    label = Path(args.adapter).name if args.adapter else Path(model_name).name
    stem = f"{label}.{Path(args.data).stem}"
    answers, outputs = Path(args.out) / f"{stem}.answers.jsonl", Path(args.out) / f"{stem}.outputs.txt"
    summary = {"model": model_name, "adapter": adapter, "data": args.data, "task": task}
    if task == "data_to_text" and not all(r["references"] for r in records):  # inputs only: predict, no scores
        with adapter_set.using("adapter" if adapter else None):
            texts = answer_records(adapter_set.model, tokenizer, records, template, settings)
        print(json.dumps({**summary, "outputs": str(write_lines(texts, outputs))}))
        return
    with adapter_set.using("adapter" if adapter else None):
        result = evaluate_model(adapter_set.model, tokenizer, records, template=template, settings=settings)
    write_jsonl(result.answers, answers)
    summary.update(answers=str(answers))
    if task == "data_to_text":  # one line per MR, in input order: what the official E2E scripts score
        summary["outputs"] = str(write_lines([a["generated"] for a in result.answers], outputs))
    print(json.dumps({**summary, **result.metrics}, indent=2))


def compare(args: argparse.Namespace) -> None:
    import shlex
    from pathlib import Path

    from peft_gpt2.reporting.compare_report import compare_and_report

    settings = decoding_settings(args, args.runs)
    quiet_loading_bars()
    origin = {"command": "peft-gpt2 " + shlex.join(sys.argv[1:])}
    options = dict(data=args.data or None, base=args.base, task=args.task, limit=args.limit, reference=args.reference)
    paths = compare_and_report(args.runs, Path(args.out), args.name, settings, origin, **options)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def chat(args: argparse.Namespace) -> None:
    from peft_gpt2.cli.chat import chat_main

    adapters = named_adapters(args.adapter)
    quiet_loading_bars()
    settings = decoding_settings(args)
    chat_main(args.model, adapters, settings, args.template, force=args.force, allow_pickle=args.allow_pickle)


def freeze(args: argparse.Namespace) -> None:
    from peft_gpt2.training.hub import finished_run

    sys.stdout.write(finished_run(args.folder).requirements())


def merge(args: argparse.Namespace) -> None:
    from peft_gpt2.adapters.merge import merge_adapter

    quiet_loading_bars()
    out = merge_adapter(
        args.adapter,
        args.out,
        base=args.model,
        overwrite=args.overwrite,
        force=args.force,
        allow_pickle=args.allow_pickle,
    )
    print(f"saved merged model to {out}")


def serve(args: argparse.Namespace) -> None:
    from peft_gpt2.serving.app import serve as run_server  # FastAPI stays an optional dependency

    adapters = named_adapters(args.adapter)
    quiet_loading_bars()
    run_server(
        args.model,
        adapters,
        host=args.host,
        port=args.port,
        template=args.template,
        force=args.force,
        allow_pickle=args.allow_pickle,
        mode=args.mode,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        adapter_dirs=args.adapter_dir,
        max_loras=args.max_loras,
    )


def pipeline(args: argparse.Namespace) -> None:
    from peft_gpt2.cli.pipeline import load_pipeline, run_pipeline

    load_pipeline(args.pipeline)  # every stage checked (recipes, library values) before any runs
    quiet_loading_bars()
    run_pipeline(args.pipeline, rerun=args.rerun)
