"""Flags several ``peft-gpt2`` commands share, adapter names from the command line, and a mistyped command's
closest match.

    peft-gpt2 chat --adapter alpaca=adapters/alpaca --temperature 0.7
"""

from __future__ import annotations

import argparse
import difflib

from peft_gpt2.errors import PeftGpt2Error


def named_adapters(specs: list[str]) -> dict[str, str]:
    """``--adapter NAME=DIR`` (or just ``DIR``, named after the folder) -> ``{name: dir}``."""
    from pathlib import Path

    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name.replace(".", "-"), spec
        if name in adapters:
            raise PeftGpt2Error(f"adapter name {name!r} given twice")
        adapters[name] = path
    return adapters


def _add_trust_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="skip the adapter/base fingerprint check")
    p.add_argument("--allow-pickle", action="store_true", help="accept .bin (pickle) weights you trust")


GENERATION_FLAGS = (
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "num_beams",
    "length_penalty",
    "no_repeat_ngram_size",
    "batch_size",
    "seed",
)


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.description = "unset flags: the run's recorded generation section, else these defaults"
    g.add_argument("--max-new-tokens", type=int, help="default 128")
    g.add_argument("--temperature", type=float, help="0 = greedy (default); > 0 samples")
    g.add_argument("--top-k", type=int, help="default 50")
    g.add_argument("--top-p", type=float, help="default 1.0")
    g.add_argument("--repetition-penalty", type=float, help="default 1.0")
    g.add_argument("--num-beams", type=int, help="> 1: beam search (the LoRA paper's E2E: 10); default 1")
    g.add_argument("--length-penalty", type=float, help="beam score / length**this (paper: 0.8); default 1.0")
    g.add_argument("--no-repeat-ngram-size", type=int, help="forbid repeated n-grams (paper: 4); default 0")
    g.add_argument("--batch-size", type=int, help="prompts per generate call; default 64")
    g.add_argument("--seed", type=int, help="seed for sampling")


def unknown_command(argv: list[str], commands: list[str]) -> str | None:
    """Why ``argv`` names no command (with the closest one, ``trian`` -> ``train``), or ``None`` when it does.

    The first word not starting with ``-`` is the command (``peft-gpt2 --verbose trian``); none at all is
    argparse's to report (``peft-gpt2 --help``, or no arguments).
    """
    word = next((a for a in argv if not a.startswith("-")), None)
    if word is None or word in commands:
        return None
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"the commands are {', '.join(commands)}"
    return f"unknown command {word!r}; {hint} (peft-gpt2 --help says what each does)"
