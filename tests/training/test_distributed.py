"""Data-parallel training gives the single-process result, on 2 CPU processes (gloo), with no code change.

* ``torchrun`` (DDP), LoRA: 2 processes x batch 4 against 1 process x batch 8.
* ``accelerate launch`` with the shipped FSDP2 config, full fine-tune: the same, with the weights sharded
  (accelerate itself never picks FSDP on a CPU; a shim lifts only that check, see ``FSDP_ON_CPU``).

Both compare every logged step loss, the validation loss after training and every saved weight with a
single-process run at the same effective batch. What makes the runs comparable, and why each tolerance:

* No randomness: a copy of tiny-gpt2 with GPT-2's dropout (attn/embd/resid_pdrop, 0.1) set to 0, and
  ``lora_dropout`` 0. With dropout on, the runs cannot agree: every rank seeds the same RNG, so rank 1 draws
  rank 0's masks while the single process draws fresh ones for examples 5-8 (measured: up to 0.2 apart in loss).
* Same examples per optimizer step: accelerate gives rank r the batches r, r + 2, ... of one seeded random
  order, so step k sees the single process's batch k of 8. ``train.group_by_length`` is off: transformers
  builds its length-grouped mega-batches from ``per_device_train_batch_size x gradient_accumulation_steps``,
  not x processes (``Trainer._get_train_sampler``, ``get_length_grouped_indices``), so with it on the
  2-process run groups other examples into each step (measured: losses 0.13 apart at step 1).
* Completions of 1-5 repeated numbers, so the two ranks see different token counts and different padding:
  the loss is the sum over all of the step's completion tokens / their count across both ranks (Trainer
  gathers ``num_items_in_batch`` with ``average_tokens_across_devices``, default on, and scales the loss by
  the process count, which the gradient all-reduce's mean undoes). Averaging each rank's own mean instead
  moves the losses by 2.9e-2 and the adapter by 2.4e-4 (measured), far outside the tolerances below.

Tolerances, from what was measured (2-core x86 CPU, torch 2.13, fp32, 1 thread a process; each run is
deterministic, the same every time):
* losses (4 step losses, validation loss after): ``rtol=1e-5``. Measured at most 9.5e-7 on step losses near
  10.7, one float32 ulp (a batch of 8 and two batches of 4 add the token losses in another order), and
  1.4e-6 (relative 1.3e-7) on the validation loss.
* weights: ``atol = learning rate / 20 = 1e-5``. AdamW moves every weight by about the learning rate per step
  whatever its gradient's size, so a real difference in the gradient (other examples in a step, other
  weighting) moves weights by a good part of a step: measured 7.9e-4 (group_by_length on) and 2.4e-4 (per-rank
  mean) on the adapter. Rounding shows where a gradient is itself near 0 and Adam's g / sqrt(v) magnifies it:
  measured at most 7.5e-9 on the adapter, and on the full model 1.05e-6 at a handful of the 3.4M weights
  (all others under 1e-7; with the single run on 2 threads instead of 1). The updates themselves are
  asserted to be over 10x the tolerance.
  One exception, full fine-tune only: the key third of each ``c_attn.bias``. Softmax is unchanged by adding
  the same number to every score of a row, so that bias's true gradient is 0; what backward gives is
  rounding noise, and AdamW scales noise up to steps of a fraction of the learning rate (measured 1e-5 to
  1.7e-5 apart). Those 64 values per layer are left out.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
FSDP_CONFIG = ROOT / "recipes" / "accelerate" / "fsdp_gpt2_medium.yaml"  # the README's command
STEPS = 4
LEARNING_RATE = 2e-4
LOSS_RTOL = 1e-5
WEIGHT_ATOL = LEARNING_RATE / 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def run_dir(tmp_path, tiny_path) -> Path:
    """``tmp_path`` with ``data.json`` (64 records, completions of 1-5 tokens + eos) and ``model/`` (tiny-gpt2,
    dropout off)."""
    records = [
        {"instruction": "Double it.", "input": str(a), "output": " ".join([str(2 * a)] * (1 + a % 5))}
        for a in range(64)
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    shutil.copytree(tiny_path, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config.update({key: 0.0 for key in config if key.endswith("pdrop")})
    (tmp_path / "model" / "config.json").write_text(json.dumps(config, indent=2))
    return tmp_path


def write_recipe(root: Path, name: str, method: str, **train) -> Path:
    """A recipe for the 2-process runs: batch 4 per process; the single-process run sets batch 8."""
    recipe = {
        "name": name,
        "method": method,
        "output_dir": str(root / "out"),
        "model": {"name": str(root / "model")},
        "data": {"path": str(root / "data.json"), "template": "short", "max_length": 48},
        "lora": {"r": 4, "lora_dropout": 0.0},
        "train": {
            "max_steps": STEPS,
            "learning_rate": LEARNING_RATE,
            "warmup_steps": 0,
            "precision": "fp32",
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "group_by_length": False,
            **train,
        },
    }
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def launch(command: list[str], **env: str) -> None:
    """Run ``command`` on the CPU, CUDA hidden (on a GPU machine too: these are the CPU runs), 1 thread a process."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def single_process(recipe: Path) -> Path:
    """The same recipe in one process at batch 8, the 2-process run's effective batch; its output folder."""
    launch(
        [sys.executable, "-m", "peft_gpt2", "train", str(recipe), "--set", "name=single"]
        + ["--set", "train.per_device_train_batch_size=8"]
    )
    return recipe.parent / "out" / "single"


def step_losses(folder: Path) -> list[float]:
    return [entry["loss"] for entry in json.loads((folder / "train_log.json").read_text()) if "loss" in entry]


def assert_same_run(parallel: Path, single: Path) -> None:
    """Per-step training losses and the validation loss after training agree to ``LOSS_RTOL``."""
    losses, expected = step_losses(parallel), step_losses(single)
    assert len(losses) == len(expected) == STEPS
    assert torch.allclose(torch.tensor(losses), torch.tensor(expected), rtol=LOSS_RTOL, atol=0), (losses, expected)
    after = [json.loads((f / "peft_gpt2.json").read_text())["validation_loss_after"] for f in (parallel, single)]
    assert torch.allclose(torch.tensor(after[0]), torch.tensor(after[1]), rtol=LOSS_RTOL, atol=0), after


def assert_close_weights(got: dict, expected: dict, skip: dict | None = None) -> None:
    """Every tensor of ``expected`` within ``WEIGHT_ATOL``; ``skip``: name -> boolean mask of the values left out."""
    for key, want in expected.items():
        keep = ~skip[key] if skip and key in skip else torch.ones_like(want, dtype=torch.bool)
        diff = (got[key] - want).abs()[keep].max().item()
        assert diff <= WEIGHT_ATOL, f"{key}: max difference {diff:.3g} > {WEIGHT_ATOL}"


@pytest.mark.slow
def test_torchrun_two_processes_train_the_single_process_adapter(run_dir):
    recipe = write_recipe(run_dir, "ddp", "lora")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    launch([*command, "-m", "peft_gpt2", "train", str(recipe)])

    out = run_dir / "out" / "ddp"
    provenance = json.loads((out / "peft_gpt2.json").read_text())
    assert provenance["processes"] == 2 and provenance["train_steps"] == STEPS
    assert [p.name for p in (run_dir / "out").iterdir()] == ["ddp"]  # one folder, no leftovers

    single = single_process(recipe)
    assert_same_run(out, single)
    ddp, expected = (load_file(f / "adapter_model.safetensors") for f in (out, single))
    assert ddp.keys() == expected.keys()
    assert_close_weights(ddp, expected)
    # lora_B starts at 0: what it holds is the training update, which must dwarf the tolerance.
    assert max(v.abs().max().item() for k, v in expected.items() if "lora_B" in k) > 10 * WEIGHT_ATOL


# accelerate enables FSDP only on accelerators: AcceleratorState.__init__ (accelerate 1.15, state.py) sets
# distributed_type = FSDP only inside `elif self.distributed_type in [MULTI_GPU, MULTI_MLU, MULTI_SDAA,
# MULTI_MUSA, MULTI_NPU, MULTI_XPU, MULTI_HPU, MULTI_NEURON]`. On a machine without a GPU every process is
# MULTI_CPU, so `accelerate launch` with the FSDP config silently trains plain DDP (gloo). torch's FSDP2
# (fully_shard, DTensor) itself runs on CPU with gloo. This shim, loaded by the launched processes only (as
# sitecustomize), reports the CPU state as MULTI_GPU so that branch is taken; everything after it is
# accelerate's and transformers' own FSDP2 code, on the CPU. It records the type each process ended with.
FSDP_ON_CPU = """
import os
if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and "LOCAL_RANK" in os.environ:
    from accelerate import state
    from accelerate.utils import DistributedType

    _partial_init, _accelerator_init = state.PartialState.__init__, state.AcceleratorState.__init__

    def _partial(self, *args, **kwargs):
        _partial_init(self, *args, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.MULTI_GPU

    def _accelerator(self, *args, **kwargs):
        _accelerator_init(self, *args, **kwargs)
        with open(os.path.join(os.environ["FSDP_PROBE"], "rank" + os.environ["RANK"]), "w") as f:
            f.write(str(self.distributed_type))

    state.PartialState.__init__, state.AcceleratorState.__init__ = _partial, _accelerator
"""


@pytest.mark.slow
def test_accelerate_launch_fsdp2_config_on_two_cpu_processes_trains_the_single_process_model(run_dir):
    # The shipped config with only what 2 CPU processes need changed: the process count. (Its use_cpu: false
    # is moot here: without CUDA, peft_gpt2 sets SFTConfig(use_cpu=True).)
    config = yaml.safe_load(FSDP_CONFIG.read_text())
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_version"] == 2
    config["num_processes"] = 2
    (run_dir / "fsdp_cpu.yaml").write_text(yaml.safe_dump(config))
    shim, probe = run_dir / "shim", run_dir / "probe"
    shim.mkdir()
    probe.mkdir()
    (shim / "sitecustomize.py").write_text(FSDP_ON_CPU)

    # As in recipes/alpaca_full_medium.yaml, which the README runs with this config: transformers' activation
    # checkpointing inside FSDP2 (the config leaves fsdp_activation_checkpointing off). Same numbers, recomputed.
    recipe = write_recipe(run_dir, "fsdp", "full", activation_checkpointing=True)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(run_dir / "fsdp_cpu.yaml")]
    command += ["--main_process_port", str(free_port()), "-m", "peft_gpt2", "train", str(recipe)]
    path = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
    launch(command, PYTHONPATH=path, FSDP_PROBE=str(probe))
    assert sorted(p.read_text() for p in probe.iterdir()) == ["DistributedType.FSDP"] * 2  # sharded, not DDP

    out = run_dir / "out" / "fsdp"
    provenance = json.loads((out / "peft_gpt2.json").read_text())
    assert provenance["processes"] == 2 and provenance["train_steps"] == STEPS
    assert [p.name for p in (run_dir / "out").iterdir()] == ["fsdp"]

    single = single_process(recipe)
    assert_same_run(out, single)
    fsdp, expected = (load_file(f / "model.safetensors") for f in (out, single))
    # FSDP's gathered full state dict holds lm_head.weight as its own tensor, so save_pretrained cannot see it
    # is tied to wte and writes it again; the config ties them on load. Any other extra or missing key fails.
    assert fsdp.keys() - expected.keys() <= {"lm_head.weight"} and expected.keys() <= fsdp.keys()
    if "lm_head.weight" in fsdp:
        assert torch.equal(fsdp["lm_head.weight"], fsdp["transformer.wte.weight"])
    n_embd = json.loads((run_dir / "model" / "config.json").read_text())["n_embd"]
    key_bias = torch.zeros(3 * n_embd, dtype=torch.bool)
    key_bias[n_embd : 2 * n_embd] = True  # c_attn's output is [query | key | value]
    assert_close_weights(fsdp, expected, skip={k: key_bias for k in expected if k.endswith("attn.c_attn.bias")})
    initial = load_file(run_dir / "model" / "model.safetensors")
    assert max((expected[k] - initial[k]).abs().max().item() for k in initial) > 10 * WEIGHT_ATOL
