"""Shared fixtures: a tiny GPT-2 with the real GPT-2 tokenizer, built offline once per test session."""

from __future__ import annotations

import json
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Set before anything imports transformers/evaluate/datasets: they read these once, at import time.
_CACHE = tempfile.mkdtemp(prefix="peft-gpt2-tests-")
# pytest-xdist's workers of one run share the models they build (tiny-gpt2, SmolLM2's de-quantized GGUF: 20 s);
# building is atomic (a folder renamed into place), so two workers building at once is safe.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
_MODELS = os.path.join(tempfile.gettempdir(), f"peft-gpt2-tests-{_RUN}") if _RUN else os.path.join(_CACHE, "models")
for _key, _value in {
    "HF_HOME": os.path.join(_CACHE, "hf"),
    "PEFT_GPT2_CACHE": _MODELS,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_key] = _value

import pytest  # noqa: E402
import torch  # noqa: E402

if _workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):  # the cores shared out, not each taking all
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))
import yaml  # noqa: E402
from peft import (  # noqa: E402
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    VeraConfig,
    get_peft_model,
)

from peft_gpt2.config.recipe import load_recipe  # noqa: E402
from peft_gpt2.models import loading as models  # noqa: E402

REPO = Path(__file__).resolve().parents[1]  # tests find shipped files from here, never from the working directory


@pytest.fixture(scope="session")
def tiny_path() -> str:
    """Folder of the ``tiny-gpt2`` preset: GPT-2 architecture (Conv1D, tied head), random weights."""
    from peft_gpt2.models.loading import resolve_model

    return resolve_model("tiny-gpt2")


@pytest.fixture()
def tiny(tiny_path):
    """A fresh ``(model, tokenizer)`` pair of the tiny GPT-2, in eval mode."""
    from peft_gpt2.models.loading import load_base

    model, tokenizer = load_base(tiny_path)
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def gpt2_tokenizer(tiny_path):
    """The real 50257-token GPT-2 tokenizer, pad = eos."""
    from peft_gpt2.models.loading import load_tokenizer

    return load_tokenizer(tiny_path)


TOY_DATA = {
    "A": [{"instruction": "Double it.", "input": str(a), "output": str(2 * a)} for a in range(40)],
    "B": [{"instruction": "Shout it.", "input": f"cat{i}", "output": f"CAT{i}!"} for i in range(40)],
}


def write_recipe(path: Path, **sections) -> Path:
    """Write a recipe YAML for the tiny GPT-2 to ``path``; return ``path``.

    Defaults: LoRA r=4 on ``tiny-gpt2``, 3 fp32 steps of batch 4, data from ``data.json`` beside ``path``
    (instructions: the ``short`` template), 48 tokens, output in ``adapters/`` beside ``path``; the name is the
    file's. A dict keyword updates that section (a ``None`` value drops the key, so the recipe's own default
    applies); any other value replaces it (``None`` drops it).
    """
    recipe: dict = {
        "method": "lora",
        "output_dir": str(path.parent / "adapters"),
        "model": {"name": "tiny-gpt2"},
        "data": {"path": str(path.parent / "data.json"), "max_length": 48},
        "lora": {"r": 4},
        "train": {"max_steps": 3, "precision": "fp32", "per_device_train_batch_size": 4},
    }
    if (sections.get("data") or {}).get("format") != "text":  # a text corpus takes no template
        recipe["data"]["template"] = "short"
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            value = {**recipe[key], **value}
            value = {k: v for k, v in value.items() if v is not None}
        recipe[key] = value
    recipe = {k: v for k, v in recipe.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def train_toy_adapter(root, name: str, *, rank: int = 8, steps: int = 3, lr: float = 3e-2, records: int = 40):
    """Train a LoRA adapter of the tiny GPT-2 on toy task ``name`` ("A": doubling, "B": shouting); its folder."""
    from peft_gpt2.config.recipe import load_recipe
    from peft_gpt2.training.train import train

    (root / f"{name}.json").write_text(json.dumps(TOY_DATA[name][:records]))
    recipe = write_recipe(
        root / f"{name}.yaml",
        name=f"toy-{name}",
        lora={"r": rank},
        data={"path": str(root / f"{name}.json")},
        train={"max_steps": steps, "learning_rate": lr, "per_device_train_batch_size": 8},
    )
    return train(load_recipe(recipe)).path


@contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yield its URL; stop it, bounded in time."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "server did not stop"


CONFIGS = {
    "lora": lambda: LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True),
    "dora": lambda: LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, use_dora=True),
    "ia3": lambda: IA3Config(),
    "vera": lambda: VeraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True),
    "prefix": lambda: PrefixTuningConfig(num_virtual_tokens=4),
    "prompt": lambda: PromptTuningConfig(num_virtual_tokens=4),
    "pissa": lambda: LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights="pissa"),
}


def make_adapter(root, method: str, seed: int) -> str:
    """A ``method`` adapter of the tiny GPT-2 whose trainable weights are moved off their initial values, so it
    changes the output (an untrained IA3 or LoRA adapter is the identity)."""
    model, _ = models.load_base("tiny-gpt2")
    config = CONFIGS[method]()
    config.task_type = "CAUSAL_LM"
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (p for p in peft_model.parameters() if p.requires_grad):
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    folder = root / f"{method}-{seed}"
    peft_model.save_pretrained(folder)
    return str(folder)


def addition_records(n: int, seed: int = 0) -> list[dict]:
    """A learnable toy task: short, regular completions."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        out.append({"instruction": "Add the two numbers.", "input": f"{a} and {b}", "output": str(a + b)})
    return out


TOY = {  # a toy run that learns addition in 30 steps
    "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["c_attn", "c_proj", "c_fc"]},
    "train": {
        "learning_rate": 1e-2,
        "max_steps": 30,
        "per_device_train_batch_size": 16,
        "logging_steps": 10,
        "warmup_steps": 0,
    },
}


def make_recipe(tmp_path: Path, *overrides: str, records: list[dict] | None = None, data: dict | None = None):
    """``toy.yaml`` (the toy run, on ``data.json``: ``records`` or 240 additions), loaded with ``--set`` overrides."""
    (tmp_path / "data.json").write_text(json.dumps(records if records is not None else addition_records(240)))
    path = write_recipe(tmp_path / "toy.yaml", data={"max_length": 64, **(data or {})}, **TOY)
    return load_recipe(path, list(overrides))


def alias_bomb(levels: int = 9) -> str:
    """YAML whose ``levels`` anchors each repeat the one before 9 times: 9**levels values from a few hundred bytes."""
    lines = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(lines) + "]"
