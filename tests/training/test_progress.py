"""Before step 1 a run says its steps, tokens per step and a memory estimate; after a few steps, how long it takes
(an hour or more: which settings fit); a killed run's leftovers are removed by the next run of its name."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from transformers import TrainerState

from peft_gpt2.training.progress import TimeEstimate, expected_longest, planned_steps


def run_callback(
    times: list[float], max_steps: int, start_step: int = 0, limit_s: float = 3600, full: bool = True
) -> list[str]:
    """Feed ``TimeEstimate`` a run whose clock reads ``times``: train begin, then the end of each step."""
    clock, said = iter(times), []
    say = lambda line, **kw: said.append(line)  # noqa: E731
    callback = TimeEstimate(say, limit_s=limit_s, clock=lambda: next(clock), full=full)
    state = TrainerState(max_steps=max_steps, global_step=start_step)
    callback.on_train_begin(None, state, None)
    for _ in times[1:]:
        state.global_step += 1
        callback.on_step_end(None, state, None)
    return said


def test_a_slow_run_says_its_duration_and_what_fits_in_an_hour():
    """Step 1 (warm-up) takes 70 s, the others 58 s: the rate leaves step 1 out; 1,000 steps take about 16 h."""
    times = [0.0, 70.0] + [70.0 + 58.0 * k for k in range(1, 999)]
    said = run_callback(times, max_steps=1000)
    assert said[0].startswith("time: step 1 took 70.0 s with warm-up") and "at most ~19.4 h" in said[0]
    first = said[1]  # after step 2: one 58 s step is past FIRST_REPORT_S
    assert first.startswith("time: 58.00 s/step over step 2: 1,000 steps take about 16.1 h")  # 70 + 999 x 58 s
    warning = said[2]
    assert warning.startswith("warning: at 58.0 s/step 1,000 steps take 16.1 h on this device")
    assert "--set train.max_steps=62 fits in about 60 min" in warning  # 3600 / 58 = 62.07
    assert "per_device_train_batch_size" in warning and "max_length" in warning and "LoRA" in warning
    refined = said[3:]  # at 10% and 50%, then silence; the warning is not repeated
    assert [line.split(" s/step over ")[1].split(":")[0] for line in refined] == ["steps 2-100", "steps 2-500"]
    assert len(said) == 5
    adapter = run_callback(times, max_steps=1000, full=False)[2]  # an adapter run is not told to use LoRA
    assert adapter.startswith("warning: at 58.0 s/step") and "LoRA" not in adapter


def test_a_short_run_is_timed_without_a_warning():
    times = [0.0, 5.0] + [5.0 + 0.5 * k for k in range(1, 20)]  # fast steps: the first estimate after 3 timed ones
    said = run_callback(times, max_steps=20)
    assert said[1] == "time: 0.50 s/step over steps 2-4: 20 steps take about 14 s, 8 s from now"
    assert not any(line.startswith("warning") for line in said)


def test_a_resumed_run_times_from_where_it_resumed():
    times = [0.0, 60.0, 120.0]  # resumed at step 200 of 300: step 201 warms up, step 202 takes 60 s
    said = run_callback(times, max_steps=300, start_step=200, limit_s=10 * 3600)
    assert said[1].startswith("time: 60.00 s/step over step 202: 300 steps take about 100 min, 98 min from now")


def test_expected_longest_by_hand():
    assert expected_longest([1, 2, 3], 2) == pytest.approx(8 / 3)  # pairs (1,2) (1,3) (2,3): longest 2, 3, 3
    assert expected_longest([1, 2, 3], 1) == pytest.approx(2)  # the mean
    assert expected_longest([4, 9], 5) == 9


def test_planned_steps_by_hand():
    args = SimpleNamespace(max_steps=-1, per_device_train_batch_size=4, world_size=1, dataloader_drop_last=False)
    args.gradient_accumulation_steps, args.num_train_epochs = 3, 2.0
    assert planned_steps(args, 34) == 6  # 9 batches -> 3 steps per epoch (the last of 3 batches) x 2 epochs
    args.max_steps = 7
    assert planned_steps(args, 34) == 7








def test_a_run_says_its_plan_before_step_1(tmp_path, capsys):
    """Epoch-based: the planned steps are the ones the Trainer takes; tokens per step from the tokenized rows."""
    from conftest import TOY_DATA, write_recipe

    from peft_gpt2.cli.main import main

    (tmp_path / "data.json").write_text(json.dumps(TOY_DATA["A"]))
    recipe = write_recipe(
        tmp_path / "plan.yaml",
        train={"max_steps": None, "num_train_epochs": 1, "gradient_accumulation_steps": 2, "group_by_length": False},
    )
    assert main(["train", str(recipe)]) == 0
    out = capsys.readouterr().out
    plan = next(line for line in out.splitlines() if line.startswith("plan: "))
    # 34 training rows in batches of 4: 9 batches, 5 steps of 2 (the last of one)
    assert plan.startswith("plan: 5 optimizer steps of 8 examples (4 per device x 2 accumulation x 1 process)")
    assert "tokens per step: 176 (rows of 22 tokens on average, 22 at most), about 176 with padding" in plan
    memory = next(line for line in out.splitlines() if line.startswith("memory: "))
    assert "an estimate" in memory and "logits 0.05" in memory and "GB RAM" in memory  # 4 x 22 x 50257 x 4 B x 3
    assert out.index("plan: ") < out.index("training\n") < out.index("time: step 1 took")
    measured = re.search(r"^time: 5 steps took .*; memory: peak ([0-9.]+) GB measured \(process RSS\)$", out, re.M)
    provenance = json.loads((tmp_path / "adapters" / "plan" / "peft_gpt2.json").read_text())
    assert measured and float(measured[1]) * 1e9 <= provenance["peak_memory_mb"] * 2**20 + 1e7  # that peak, or less
    log = json.loads((tmp_path / "adapters" / "plan" / "train_log.json").read_text())
    assert log[-1]["step"] == 5














