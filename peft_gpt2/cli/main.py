"""The ``peft-gpt2`` command.

    peft-gpt2 train recipes/quickstart.yaml --set train.max_steps=20

The parser and the entry point; what each command does is in ``commands.py``. Heavy libraries load inside each
command, after every check that needs none of them (``preflight``), so ``peft-gpt2 --help`` and a refusal are
instant. A mistake the user can fix (a ``PeftGpt2Error``), or a file the
system refuses (an ``OSError``: no permission, disk full, a folder where a file should be), prints one message and
exits 2, without a traceback. Library warnings that say nothing to our user are silenced (``quiet``;
``--verbose`` shows them).
"""

from __future__ import annotations

import argparse
import sys

from peft_gpt2.cli import commands as handlers
from peft_gpt2.cli.flags import _add_generation_args, _add_trust_args, unknown_command
from peft_gpt2.cli.quiet import quiet_libraries
from peft_gpt2.errors import PeftGpt2Error, os_error
from peft_gpt2.training.hub import add_push_command


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
    p.set_defaults(run=handlers.evaluate)

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
    p.set_defaults(run=handlers.compare)


def _add_serving_commands(commands) -> None:
    p = commands.add_parser("chat", help="talk to a base model and its adapters; /adapter NAME switches")
    p.add_argument("--model", help="base model (default: the first adapter's recorded base)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="adapter to load (repeatable)")
    p.add_argument("--template", help="prompt template (default: each adapter's own)")
    _add_trust_args(p)
    _add_generation_args(p)
    p.set_defaults(run=handlers.chat)

    p = commands.add_parser("merge", help="merge an adapter into its base: a standalone model folder")
    p.add_argument("--adapter", required=True, help="adapter folder")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--model", help="base model (default: the adapter's recorded base)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_trust_args(p)
    p.set_defaults(run=handlers.merge)

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
    p.set_defaults(run=handlers.serve)


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
    p.set_defaults(run=handlers.train)

    _add_scoring_commands(commands)
    _add_serving_commands(commands)
    p = commands.add_parser("pipeline", help="run train/merge/compare stages from a YAML; finished ones skip")
    p.add_argument("pipeline", help="pipeline YAML, e.g. recipes/pipelines/e2e_smollm2.yaml")
    p.add_argument("--rerun", action="append", default=[], metavar="STAGE", help="run a finished stage again ('all')")
    p.set_defaults(run=handlers.pipeline)
    p = commands.add_parser("sweep", help="train variants of one recipe, compare them in one report")
    p.add_argument("pipeline", metavar="sweep", help="sweep YAML, e.g. recipes/sweeps/e2e_methods.yaml")
    p.add_argument("--rerun", action="append", default=[], metavar="VARIANT", help="train a variant again ('all')")
    p.set_defaults(run=handlers.pipeline)
    add_push_command(commands)
    p = commands.add_parser("freeze", help="the package versions that made a run, as pip requirements")
    p.add_argument("folder", metavar="RUN", help="a run folder, e.g. adapters/quickstart")
    p.set_defaults(run=handlers.freeze)
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
