"""The command itself: refusals before any library imports, help and typos, paths it names, quiet libraries.

    python -m pytest tests/cli/test_cli.py -q
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import REPO, TOY_DATA, write_recipe

from peft_gpt2.cli.main import build_parser, main
from peft_gpt2.cli.quiet import DropMessages, quiet_libraries
from peft_gpt2.config.preflight import check_data_path

HEAVY = ("torch", "transformers", "trl", "peft", "datasets")
# main() in a fresh interpreter; prints which heavy libraries had been imported when it returned
PROBE = f"""
import json, sys
from peft_gpt2.cli.main import main
rc = main(sys.argv[1:])
print(json.dumps({{"rc": rc, "imported": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def run_cli(args: list[str], *code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", code[0], *args] if code else [sys.executable, "-m", "peft_gpt2", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


@pytest.fixture()
def toy(tmp_path) -> Path:
    (tmp_path / "data.json").write_text(json.dumps(TOY_DATA["A"][:16]))
    return write_recipe(tmp_path / "toy.yaml", train={"max_steps": 1})


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (None, "already exists; choose another name (--set name=...) or pass --overwrite"),
        ("data.path=nope/missing.json", "data file nope/missing.json does not exist"),
        ("model.nam=gpt2", "unknown recipe key model.nam; did you mean model.name?"),
    ],
)
def test_a_refusal_comes_before_the_heavy_imports(toy, setting, message):
    """Before: each of these waited for torch, transformers and TRL to import (9-11 s under nice on a 2-core CPU
    at load 3), for a mistake that needs none of them."""
    (toy.parent / "adapters" / "toy").mkdir(parents=True)
    args = ["train", str(toy), *(["--set", setting] if setting else []), *(["--overwrite"] if setting else [])]
    done = run_cli(args, PROBE)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"rc": 2, "imported": []}, done.stderr
    assert done.stderr.strip().endswith(message)


@pytest.mark.parametrize(
    ("source", "data_format", "message"),
    [
        ("nope.jsonl", "instructions", "data file nope.jsonl does not exist"),
        ("e2e/nope.csv", "data_to_text", "data file e2e/nope.csv does not exist"),
        ("books/", "text", "corpus file or folder books/ does not exist"),
        ("./local-folder", "instructions", "data file ./local-folder does not exist"),
    ],
)
def test_a_missing_data_path_is_refused_in_the_loaders_words(tmp_path, monkeypatch, source, data_format, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match=re.escape(message)):
        check_data_path(source, data_format)


@pytest.mark.parametrize("source", ["tatsu-lab/alpaca", "e2e_nlg", "https://example.com/data.json"])
def test_hub_names_and_urls_are_left_to_the_loaders(tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    check_data_path(source, "instructions")
    check_data_path(source, "data_to_text")


def test_a_mistyped_command_suggests_the_closest(capsys):
    assert main(["trian", "recipes/quickstart.yaml"]) == 2
    assert "unknown command 'trian'; did you mean 'train'?" in capsys.readouterr().err
    assert main(["--verbose", "zzz"]) == 2
    assert "the commands are train, eval" in capsys.readouterr().err


def test_help_lists_each_command_on_one_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps help to the terminal width
    text = build_parser().format_help()
    listing = text.split("commands:")[1].splitlines()[2:]  # after the title and the COMMAND line
    names = [line.split()[0] for line in listing if line.strip()]
    commands = next(a.choices for a in build_parser()._actions if a.dest == "command")
    assert names == list(commands), text


def shipped_paths(text: str) -> set[str]:
    return set(re.findall(r"recipes/[\w./-]*\w", text))


def test_every_recipe_path_the_help_and_readme_name_exists():
    parser = build_parser()
    commands = next(a.choices for a in parser._actions if a.dest == "command")
    texts = [parser.format_help(), *(p.format_help() for p in commands.values())]
    named = shipped_paths("\n".join(texts)) | shipped_paths((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(named) >= 5, named  # the pattern finds what is there
    assert sorted(p for p in named if not (REPO / p).exists()) == []


def test_quiet_drops_exactly_the_listed_messages(caplog):
    logger = logging.getLogger("transformers.modeling_utils")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_libraries()
            warnings.warn("`is_gradient_checkpointing` is deprecated, use ...", FutureWarning, stacklevel=1)
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
            warnings.warn("`is_gradient_checkpointing` is deprecated", UserWarning, stacklevel=1)
        with caplog.at_level(logging.WARNING):
            logger.warning("`loss_type=None` was set in the config but it is unrecognized. Using the default")
            logger.warning("We strongly recommend passing in an `attention_mask` since your input_ids may be padded.")
            logger.warning("a message about your model")
    finally:
        for f in [f for f in logger.filters if isinstance(f, DropMessages)]:
            logger.removeFilter(f)
    kept = ["something else is deprecated", "`is_gradient_checkpointing` is deprecated"]  # the other category
    assert [str(w.message) for w in caught] == kept
    assert [r.getMessage() for r in caplog.records] == ["a message about your model"]


MESSAGES = (
    "is_gradient_checkpointing",
    "loss_type=None",
    "strongly recommend passing in an `attention_mask`",
    "gemm_4bit_forward",
    "find_unused_parameters",
)


def test_commands_are_quiet_and_verbose_is_not(toy):
    """Before: every command printed the bitsandbytes and FutureWarning lines, training also the loss_type and
    (padding-free) attention_mask notices."""
    settings = ["--set", "train.padding_free=true", "--set", "train.group_by_length=false"]
    done = run_cli(["train", str(toy), *settings])
    assert done.returncode == 0, done.stderr
    assert [m for m in MESSAGES if m in done.stderr] == [], done.stderr
    adapter, merged = toy.parent / "adapters" / "toy", toy.parent / "merged"
    done = run_cli(["--verbose", "merge", "--adapter", str(adapter), "--out", str(merged)])
    assert done.returncode == 0, done.stderr
    assert "is_gradient_checkpointing" in done.stderr
