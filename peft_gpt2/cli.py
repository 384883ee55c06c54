"""The ``peft-gpt2`` command.

    peft-gpt2 train recipes/quickstart.yaml --set train.max_steps=20

Heavy libraries load inside each command, so ``peft-gpt2 --help`` is instant. A mistake the user can
fix (a ``PeftGpt2Error``) prints one message and exits 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from peft_gpt2.errors import PeftGpt2Error


def _quiet_loading_bars() -> None:
    """Keep the training bar and the loss; drop the per-step bars of weight loading and dataset maps."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _train(args: argparse.Namespace) -> None:
    from peft_gpt2.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)  # fails fast, before the heavy imports
    _quiet_loading_bars()
    from peft_gpt2.train import train

    train(recipe, overwrite=args.overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-gpt2", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

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
    p.set_defaults(run=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except PeftGpt2Error as err:
        print(f"peft-gpt2: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peft-gpt2: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
