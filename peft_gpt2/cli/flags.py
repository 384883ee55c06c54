"""Flags several ``peft-gpt2`` commands share, adapter names from the command line, and a mistyped command's
closest match.

    peft-gpt2 chat --adapter alpaca=adapters/alpaca --temperature 0.7
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing

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


def generation_flags() -> dict[str, tuple[type, str]]:
    """``GenerationSettings``' fields that are flags: ``{name: (type, help)}``, from the fields' own metadata."""
    from peft_gpt2.inference.settings import GenerationSettings

    hints = typing.get_type_hints(GenerationSettings)
    out = {}
    for f in dataclasses.fields(GenerationSettings):
        if "help" in f.metadata:
            kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
            shown = f.default is None or f.metadata.get("hide_default")
            out[f.name] = (kind, f.metadata["help"] + ("" if shown else f"; default {f.default}"))
    return out


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.description = "unset flags: the run's recorded generation section, else these defaults"
    for name, (kind, text) in generation_flags().items():
        g.add_argument(f"--{name.replace('_', '-')}", type=kind, help=text)


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
