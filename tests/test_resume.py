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

from peft_gpt2.cli import main

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
