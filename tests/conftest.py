"""Shared fixtures: a tiny GPT-2 with the real GPT-2 tokenizer, built offline once per test session."""

from __future__ import annotations

import os
import tempfile

# Set before anything imports transformers/evaluate/datasets: they read these once, at import time.
_CACHE = tempfile.mkdtemp(prefix="peft-gpt2-tests-")
for _key, _value in {
    "HF_HOME": os.path.join(_CACHE, "hf"),
    "PEFT_GPT2_CACHE": os.path.join(_CACHE, "models"),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_key] = _value

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_path() -> str:
    """Folder of the ``tiny-gpt2`` preset: GPT-2 architecture (Conv1D, tied head), random weights."""
    from peft_gpt2.models import resolve_model

    return resolve_model("tiny-gpt2")


@pytest.fixture()
def tiny(tiny_path):
    """A fresh ``(model, tokenizer)`` pair of the tiny GPT-2, in eval mode."""
    from peft_gpt2.models import load_base

    model, tokenizer = load_base(tiny_path)
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def gpt2_tokenizer(tiny_path):
    """The real 50257-token GPT-2 tokenizer, pad = eos."""
    from peft_gpt2.models import load_tokenizer

    return load_tokenizer(tiny_path)


TOY_DATA = {
    "A": [{"instruction": "Double it.", "input": str(a), "output": str(2 * a)} for a in range(40)],
    "B": [{"instruction": "Shout it.", "input": f"cat{i}", "output": f"CAT{i}!"} for i in range(40)],
}


def train_toy_adapter(root, name: str, *, rank: int = 8, steps: int = 3, lr: float = 3e-2, records: int = 40):
    """Train a LoRA adapter of the tiny GPT-2 on toy task ``name`` ("A": doubling, "B": shouting); its folder."""
    import json

    from peft_gpt2.config import load_recipe
    from peft_gpt2.train import train

    (root / f"{name}.json").write_text(json.dumps(TOY_DATA[name][:records]))
    (root / f"{name}.yaml").write_text(
        f"name: toy-{name}\nmethod: lora\noutput_dir: {root / 'adapters'}\nmodel: {{name: tiny-gpt2}}\n"
        f"lora: {{r: {rank}}}\ndata: {{path: {root / f'{name}.json'}, template: short, max_length: 48}}\n"
        f"train: {{max_steps: {steps}, learning_rate: {lr}, precision: fp32, per_device_train_batch_size: 8}}\n"
    )
    return train(load_recipe(root / f"{name}.yaml")).path
