"""Interrupted and failing runs: kill a real training process, resume it, and get the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_recipe

from peft_gpt2.cli.main import main
from peft_gpt2.config.recipe import load_recipe
from peft_gpt2.run_folder import STALE_AFTER_S
from peft_gpt2.training.checkpoints import checkpoint_dir, remove_leftovers

STEPS = 12


def run_recipe(folder: Path, **train: object) -> Path:
    """``run.yaml`` in ``folder``: 12 steps on a doubling task, a checkpoint every 4 steps."""
    records = [{"instruction": "Double it.", "input": str(a), "output": str(2 * a)} for a in range(80)]
    (folder / "data.json").write_text(json.dumps(records))
    settings = {"max_steps": STEPS, "learning_rate": 5e-3, "logging_steps": 1, "save_steps": 4, "warmup_steps": 0}
    return write_recipe(folder / "run.yaml", lora={"lora_dropout": 0.0}, train={**settings, **train})


def losses(folder: Path) -> dict[int, float]:
    log = json.loads((folder / "train_log.json").read_text())
    return {entry["step"]: entry["loss"] for entry in log if "loss" in entry}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    straight = tmp_path / "straight"
    straight.mkdir()
    assert main(["train", str(run_recipe(straight))]) == 0
    expected = losses(straight / "adapters" / "run")

    killed = tmp_path / "killed"
    killed.mkdir()
    recipe = run_recipe(killed)
    ckpt = killed / "adapters" / ".run.checkpoints"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "peft_gpt2", "train", str(recipe)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not (ckpt / "checkpoint-8" / "trainer_state.json").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapters" / "run").exists()  # nothing that looks like a finished adapter

    assert main(["train", str(recipe)]) == 2  # a fresh run refuses to discard the checkpoints
    assert main(["train", str(recipe), "--resume"]) == 0
    got = losses(killed / "adapters" / "run")
    assert set(got) >= set(range(9, STEPS + 1))
    for step in range(9, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step
    assert not ckpt.exists()  # cleaned up once the run finished


def test_resume_without_checkpoints_is_an_error(tmp_path, capsys):
    assert main(["train", str(run_recipe(tmp_path)), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_a_hint(tmp_path, capsys):
    recipe = run_recipe(tmp_path, learning_rate=1e12, max_grad_norm=0.0)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "became nan" in err or "became inf" in err
    assert "at step" in err and "lower train.learning_rate" in err
    assert not (tmp_path / "adapters" / "run").exists()


def make_leftovers(tmp_path, *, checkpoint: bool):
    recipe = load_recipe(write_recipe(tmp_path / "run.yaml"))
    adapters = tmp_path / "adapters"
    old, new = adapters / ".run.tmp-killed", adapters / ".run.tmp-live"
    (old / "out").mkdir(parents=True)
    (old / "out" / "adapter_model.safetensors").write_bytes(b"half")
    new.mkdir()
    long_ago = time.time() - STALE_AFTER_S - 60
    for path in (old / "out" / "adapter_model.safetensors", old / "out", old):
        os.utime(path, (long_ago, long_ago))
    ckpt = checkpoint_dir(recipe)
    ckpt.mkdir()
    (ckpt / "recipe.yaml").write_text("x")
    if checkpoint:
        (ckpt / "checkpoint-8").mkdir()
    (adapters / ".other.tmp-x").mkdir()  # another name's: not ours to touch
    os.utime(adapters / ".other.tmp-x", (long_ago, long_ago))
    return recipe, adapters


def test_leftovers_of_a_killed_run_are_removed_and_said(tmp_path):
    """A stale staging folder and a checkpoints folder without a checkpoint go; a recent staging folder (another
    run may be saving into it) stays, and so does another name's."""
    recipe, adapters = make_leftovers(tmp_path, checkpoint=False)
    said = []
    remove_leftovers(recipe, keep_checkpoints=False, say=lambda line, **kw: said.append(line))
    assert sorted(p.name for p in adapters.iterdir()) == [".other.tmp-x", ".run.tmp-live"]
    assert said[0] == "removed leftovers of a killed run: .run.tmp-killed, .run.checkpoints"
    assert said[1].startswith("kept .run.tmp-live: written in the last 10 minutes")


def test_checkpoints_stay_for_resume(tmp_path):
    recipe, adapters = make_leftovers(tmp_path, checkpoint=True)
    said = []
    remove_leftovers(recipe, keep_checkpoints=True, say=lambda line, **kw: said.append(line))
    assert (checkpoint_dir(recipe) / "checkpoint-8").is_dir() and (checkpoint_dir(recipe) / "recipe.yaml").exists()
    assert said[0] == "removed leftovers of a killed run: .run.tmp-killed"


def test_a_fresh_run_removes_leftovers_and_says_so(tmp_path, capsys):
    """Through the CLI: the line comes before the data is read; the run then trains and publishes as usual."""
    from conftest import TOY_DATA

    from peft_gpt2.cli.main import main

    (tmp_path / "data.json").write_text(json.dumps(TOY_DATA["A"]))
    recipe, adapters = make_leftovers(tmp_path, checkpoint=False)
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.index("removed leftovers of a killed run: .run.tmp-killed, .run.checkpoints") < out.index("data: ")
    assert sorted(p.name for p in adapters.iterdir()) == [".other.tmp-x", ".run.tmp-live", "run"]
