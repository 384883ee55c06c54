"""Data-parallel training with no code change: torchrun, 2 CPU processes (gloo), one adapter written once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from peft_gpt2.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_write_one_adapter(tmp_path, tiny_path):
    records = [{"instruction": "Double it.", "input": str(a), "output": str(2 * a)} for a in range(64)]
    (tmp_path / "data.json").write_text(json.dumps(records))
    recipe = {
        "name": "ddp",
        "method": "lora",
        "output_dir": str(tmp_path / "adapters"),
        "model": {"name": tiny_path},
        "data": {"path": str(tmp_path / "data.json"), "template": "short", "max_length": 48},
        "lora": {"r": 4},
        "train": {"max_steps": 4, "precision": "fp32", "per_device_train_batch_size": 4, "logging_steps": 1},
    }
    (tmp_path / "ddp.yaml").write_text(json.dumps(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "peft_gpt2",
        "train",
        str(tmp_path / "ddp.yaml"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "adapters" / "ddp"
    provenance = json.loads((out / "peft_gpt2.json").read_text())
    assert provenance["processes"] == 2 and provenance["train_steps"] == 4
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["ddp"]  # one folder, no leftovers

    assert main(["train", str(tmp_path / "ddp.yaml"), "--set", "name=single"]) == 0
    ddp, single = (
        load_file(out / "adapter_model.safetensors"),
        load_file(tmp_path / "adapters" / "single" / "adapter_model.safetensors"),
    )
    assert {k: v.shape for k, v in ddp.items()} == {k: v.shape for k, v in single.items()}
