"""The ``peft-gpt2`` command.

    peft-gpt2 train recipes/quickstart.yaml --set train.max_steps=20

Heavy libraries load inside each command, after every check that needs none of them (``preflight``), so
``peft-gpt2 --help`` and a refusal are instant. A mistake the user can fix (a ``PeftGpt2Error``), or a file the
system refuses (an ``OSError``: no permission, disk full, a folder where a file should be), prints one message and
exits 2, without a traceback. Library warnings that say nothing to our user are silenced (``quiet``;
``--verbose`` shows them).
"""

from __future__ import annotations

import argparse
import sys

from peft_gpt2.cli.flags import _add_generation_args, _add_trust_args, generation_flags, named_adapters, unknown_command
from peft_gpt2.cli.quiet import quiet_libraries
from peft_gpt2.errors import PeftGpt2Error, os_error
from peft_gpt2.training.hub import add_push_command


def _quiet_loading_bars() -> None:
    """Keep the training bar and the loss; drop the per-step bars of weight loading and dataset maps."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _train(args: argparse.Namespace) -> None:
    from peft_gpt2.config.preflight import check_train
    from peft_gpt2.config.recipe import load_recipe

    check_train(args.recipe, args.set, overwrite=args.overwrite)  # output folder, data path: before any library
    recipe = load_recipe(args.recipe, args.set)  # the train and method sections import TRL and PEFT to check keys
    _quiet_loading_bars()
    from peft_gpt2.training.train import train

    train(recipe, overwrite=args.overwrite, resume=args.resume)


def _settings(args: argparse.Namespace, folders: list[str] | tuple[str, ...] = ()):
    """Decoding: the flags given, over the runs' recorded ``generation`` section, over the defaults."""
    from peft_gpt2.inference.settings import resolve_settings
    from peft_gpt2.run_folder import Provenance

    given = {k: v for k, v in vars(args).items() if k in generation_flags() and v is not None}
    return resolve_settings(given, [Provenance.read(f).generation for f in folders])


def _eval(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from peft_gpt2.adapters.folder import base_of, folder_kind
    from peft_gpt2.evaluation.compare import write_jsonl, write_lines
    from peft_gpt2.evaluation.evaluate import answer_records, evaluate_model, load_eval_records
    from peft_gpt2.run_folder import Provenance

    records, task = load_eval_records(args.data, args.task)  # bad data fails before any model loads
    records = records[: args.limit] if args.limit else records
    settings = _settings(args, [args.adapter] if args.adapter else [])
    if args.adapter and folder_kind(args.adapter, allow_pickle=args.allow_pickle) == "model":
        model_name, adapter = args.adapter, None  # a full fine-tune is a model folder
    else:
        model_name, adapter = args.model or (base_of(args.adapter) if args.adapter else None), args.adapter
    if model_name is None:
        raise PeftGpt2Error("eval needs --model, --adapter, or both")
    _quiet_loading_bars()
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


def _compare(args: argparse.Namespace) -> None:
    import shlex
    from pathlib import Path

    from peft_gpt2.reporting.compare_report import compare_and_report

    settings = _settings(args, args.runs)
    _quiet_loading_bars()
    origin = {"command": "peft-gpt2 " + shlex.join(sys.argv[1:])}
    options = dict(data=args.data or None, base=args.base, task=args.task, limit=args.limit, reference=args.reference)
    paths = compare_and_report(args.runs, Path(args.out), args.name, settings, origin, **options)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _chat(args: argparse.Namespace) -> None:
    from peft_gpt2.cli.chat import chat_main

    adapters = named_adapters(args.adapter)
    _quiet_loading_bars()
    chat_main(args.model, adapters, _settings(args), args.template, force=args.force, allow_pickle=args.allow_pickle)


def _freeze(args: argparse.Namespace) -> None:
    from peft_gpt2.training.hub import finished_run

    sys.stdout.write(finished_run(args.folder).requirements())


def _merge(args: argparse.Namespace) -> None:
    from peft_gpt2.adapters.merge import merge_adapter

    _quiet_loading_bars()
    out = merge_adapter(
        args.adapter,
        args.out,
        base=args.model,
        overwrite=args.overwrite,
        force=args.force,
        allow_pickle=args.allow_pickle,
    )
    print(f"saved merged model to {out}")


def _serve(args: argparse.Namespace) -> None:
    from peft_gpt2.serving.app import serve  # FastAPI stays an optional dependency

    adapters = named_adapters(args.adapter)
    _quiet_loading_bars()
    serve(
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


def _pipeline(args: argparse.Namespace) -> None:
    from peft_gpt2.cli.pipeline import load_pipeline, run_pipeline

    load_pipeline(args.pipeline)  # every stage checked (recipes, library values) before any runs
    _quiet_loading_bars()
    run_pipeline(args.pipeline, rerun=args.rerun)


def _add_scoring_commands(commands) -> None:
    p = commands.add_parser("eval", help="score one model (+ adapter) on a QA or instruction file")
    p.add_argument("--model", help="base model (default: the adapter's recorded base)")
    p.add_argument("--adapter", help="adapter folder, or a full fine-tune's model folder")
    p.add_argument("--data", required=True, help="JSON/JSONL of QA, Alpaca, chat or multiple-choice records")
    tasks = ["qa", "instructions", "chat", "multiple_choice"]
    p.add_argument("--task", choices=tasks, help="detected from the records if omitted")
    p.add_argument("--limit", type=int, help="first N records only")
    p.add_argument("--template", help="prompt template (default: the adapter's, else alpaca)")
    p.add_argument("--out", default="reports", help="folder for the answers file")
    _add_trust_args(p)
    _add_generation_args(p)
    p.set_defaults(run=_eval)

    p = commands.add_parser("compare", help="base vs full vs LoRA runs: a table, Markdown/JSON/CSV, a chart")
    p.add_argument("runs", nargs="+", help="adapter or full-model folders from peft-gpt2 train")
    p.add_argument("--data", action="append", help="evaluation file (repeatable); 'test' = the runs' test split")
    p.add_argument("--base", help="base model (default: the one the runs record)")
    p.add_argument("--task", choices=tasks)
    p.add_argument("--limit", type=int, help="first N records of each data set")
    p.add_argument("--name", default="compare", help="report file name (reports/<name>.md, .json, .csv, .png)")
    p.add_argument("--out", default="reports")
    p.add_argument(
        "--reference", help="row every other row is tested against: a run's name or 'base' (default: the first run)"
    )
    _add_generation_args(p)
    p.set_defaults(run=_compare)


def _add_serving_commands(commands) -> None:
    p = commands.add_parser("chat", help="talk to a base model and its adapters; /adapter NAME switches")
    p.add_argument("--model", help="base model (default: the first adapter's recorded base)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="adapter to load (repeatable)")
    p.add_argument("--template", help="prompt template (default: each adapter's own)")
    _add_trust_args(p)
    _add_generation_args(p)
    p.set_defaults(run=_chat)

    p = commands.add_parser("merge", help="merge an adapter into its base: a standalone model folder")
    p.add_argument("--adapter", required=True, help="adapter folder")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--model", help="base model (default: the adapter's recorded base)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_trust_args(p)
    p.set_defaults(run=_merge)

    p = commands.add_parser("serve", help="OpenAI-compatible server: one base, adapters picked per request")
    p.add_argument("--model", help="base model (default: the first adapter's recorded base)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="adapter to serve (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--template", help="template for requests with template: true (default: each adapter's own)")
    p.add_argument(
        "--mode",
        choices=["step", "batch", "lock"],
        default="step",
        help="step: token by token, rows joining and leaving the batch between steps (streams, logprobs); "
        "batch: whole mixed-adapter generate calls; lock: one request at a time",
    )
    p.add_argument("--max-batch", type=int, default=16, help="rows decoded together")
    p.add_argument(
        "--adapter-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="allow /v1/load_lora_adapter to load adapters from inside DIR (repeatable; default: off)",
    )
    p.add_argument("--max-loras", type=int, default=8, help="adapters loaded at run time kept loaded (LRU)")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before answering 429")
    _add_trust_args(p)
    p.set_defaults(run=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-gpt2", description="Fine-tune, compare and serve GPT-2 adapters.")
    parser.add_argument("--verbose", action="store_true", help="show the library warnings peft-gpt2 hides")
    commands = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    p = commands.add_parser("train", help="train a full fine-tune or LoRA adapter from a YAML recipe")
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/quickstart.yaml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set train.max_steps=20 (repeatable)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint (train.save_steps)")
    p.set_defaults(run=_train)

    _add_scoring_commands(commands)
    _add_serving_commands(commands)
    p = commands.add_parser("pipeline", help="run train/merge/compare stages from a YAML; finished ones skip")
    p.add_argument("pipeline", help="pipeline YAML, e.g. recipes/pipelines/e2e_smollm2.yaml")
    p.add_argument("--rerun", action="append", default=[], metavar="STAGE", help="run a finished stage again ('all')")
    p.set_defaults(run=_pipeline)
    p = commands.add_parser("sweep", help="train variants of one recipe, compare them in one report")
    p.add_argument("pipeline", metavar="sweep", help="sweep YAML, e.g. recipes/sweeps/e2e_methods.yaml")
    p.add_argument("--rerun", action="append", default=[], metavar="VARIANT", help="train a variant again ('all')")
    p.set_defaults(run=_pipeline)
    add_push_command(commands)
    p = commands.add_parser("freeze", help="the package versions that made a run, as pip requirements")
    p.add_argument("folder", metavar="RUN", help="a run folder, e.g. adapters/quickstart")
    p.set_defaults(run=_freeze)
    for sub in commands.choices.values():  # --verbose after the command too; SUPPRESS keeps one given before it
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if problem := unknown_command(argv, list(commands)):
        parser.print_usage(sys.stderr)
        print(f"peft-gpt2: error: {problem}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    quiet_libraries(verbose=args.verbose)  # before any library imports: some speak at import time
    try:
        args.run(args)
    except PeftGpt2Error as err:
        print(f"peft-gpt2: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the system refused a file: unreadable, a folder, disk full; the file and the reason
        print(f"peft-gpt2: error: {os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peft-gpt2: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
