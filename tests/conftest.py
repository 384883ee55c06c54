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
