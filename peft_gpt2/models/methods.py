"""The PEFT methods a recipe can train, and what each can and cannot do: targets, batches, merging.

A method's recipe section holds its PEFT config's keyword arguments (``lora:`` -> ``LoraConfig``, ``ia3:`` ->
``IA3Config``...); ``adapter_config`` adds what depends on the model: PEFT's default targets for the architecture,
``fan_in_fan_out`` for GPT-2's Conv1D layers, and refusals of options PEFT cannot apply to them.

Measured on GPT-2 with peft 0.21 (``tests/models/test_methods.py``): PEFT routes each row of a batch to its own adapter
(``forward(adapter_names=...)``) for LoRA only. DoRA refuses it; IA3, VeRA and prompt learning (prefix, prompt,
p-tuning) ignore it and run every row through the active adapter, silently. One model holds adapters of one
method. Prompt-learning adapters add virtual tokens instead of changing weights, so there is nothing to merge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error

if TYPE_CHECKING:
    from peft import PeftConfig
    from torch import nn
    from transformers import PreTrainedModel

# recipe method -> PEFT config class; the recipe section of the same name holds its keyword arguments
CONFIGS = {
    "lora": "LoraConfig",  # also DoRA (use_dora), rsLoRA (use_rslora), PiSSA and other initialisations
    "ia3": "IA3Config",
    "vera": "VeraConfig",
    "prefix_tuning": "PrefixTuningConfig",
    "prompt_tuning": "PromptTuningConfig",
}
LAYER_METHODS = ("lora", "ia3", "vera")  # these wrap chosen layers; the others add virtual tokens
# LoRA initialisations PEFT cannot apply here (measured on GPT-2, peft 0.21), and why.
INITS_REFUSED = {
    "olora": "fails on GPT-2's Conv1D layers (a shape error inside PEFT)",
    "eva": "needs a pass over the training data (peft.initialize_lora_eva_weights), which recipes do not run",
    "corda": "needs a pass over the training data (peft.preprocess_corda), which recipes do not run",
    "loftq": "needs a loftq_config and scipy; quantize the base with model.quantization instead",
}


def config_class(method: str) -> type[PeftConfig]:
    import peft

    return getattr(peft, CONFIGS[method])


def default_targets(method: str, model_type: str) -> list[str] | None:
    """PEFT's per-architecture targets for ``method`` (GPT-2 LoRA: ``c_attn``; Llama: ``q_proj``, ``v_proj``)."""
    from peft.utils import constants

    table = getattr(constants, f"TRANSFORMERS_MODELS_TO_{method.upper()}_TARGET_MODULES_MAPPING")
    return list(table[model_type]) if model_type in table else None


def layer_names(model: nn.Module) -> list[str]:
    """The distinct last names of the layers ``all-linear`` would adapt (Linear and Conv1D, not the LM head)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and m is not head]
    return list(dict.fromkeys(names))


def _fix(method: str, model: nn.Module) -> str:
    model_type = model.config.model_type
    default = default_targets(method, model_type)
    null = f"null (PEFT's default for {model_type}: {', '.join(default)}), " if default else ""
    return f"use all-linear, {null}or names such as {', '.join(layer_names(model)[:8])}"


def _absent(targets: list[str], names: list[str]) -> list[str]:
    """The targets no module name matches, by PEFT's rule for a list: the full name, or ending with "." + target."""
    return [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]


def module_options(method: str, options: dict, model: nn.Module) -> dict:
    """``options`` with the layers to wrap made explicit for ``model`` (loaded, or built on the meta device by
    ``architectures.check_targets`` before anything loads): PEFT's default targets for a null ``target_modules``,
    ``fan_in_fan_out`` from the layers' type (GPT-2's Conv1D), IA3's feed-forward layers among the targets. A
    name that matches no layer fails with the spellings that would."""
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists
    from transformers.pytorch_utils import Conv1D

    options, model_type = dict(options), model.config.model_type
    targets = options.get("target_modules")
    if targets is None and (targets := default_targets(method, model_type)) is None:
        raise PeftGpt2Error(f"{method}.target_modules: PEFT has no default for {model_type}; {_fix(method, model)}")
    targets = targets if isinstance(targets, str) else list(targets)  # a string: all-linear, or PEFT's regex
    probe = {**options, "target_modules": targets} | ({"feedforward_modules": None} if method == "ia3" else {})
    config = _maybe_include_all_linear_layers(library_config(method, probe), model)  # Linear, Conv1D; not the head
    matched = {n: m for n, m in model.named_modules() if n and check_target_module_exists(config, n)}
    missing = _absent(targets, list(matched)) if isinstance(targets, list) else [] if matched else [targets]
    if missing:
        raise PeftGpt2Error(f"{method}.target_modules {missing} match no module of {model_type}; {_fix(method, model)}")
    conv1d = {isinstance(m, Conv1D) for m in matched.values()}
    if len(conv1d) > 1:
        raise PeftGpt2Error(f"{method}.target_modules {targets} mix Conv1D and Linear layers; target one kind")
    options.update(target_modules=targets, fan_in_fan_out=conv1d.pop())
    if method == "ia3":
        options["feedforward_modules"] = feedforward(options.get("feedforward_modules"), targets, matched, model)
    return options


def feedforward(names: list[str] | str | None, targets: list[str] | str, matched: dict, model: nn.Module):
    """IA3's feed-forward layers: PEFT's for the architecture among the targets when null, else checked to exist."""
    if names is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD

        table = FEEDFORWARD.get(model.config.model_type, [])
        if isinstance(targets, list):  # PeftConfig wants them a subset of the listed targets
            return [t for t in table if t in targets]
        return [t for t in table if not _absent([t], list(matched))]
    if isinstance(names, list) and (missing := _absent(names, [n for n, _ in model.named_modules()])):
        raise PeftGpt2Error(f"ia3.feedforward_modules {missing} match no module of {model.config.model_type}")
    return names


def adapter_config(method: str, options: dict, model: PreTrainedModel) -> PeftConfig:
    """``CONFIGS[method](**options)`` for ``model``: default targets, Conv1D handling, refusals that name the key."""
    if method in LAYER_METHODS:
        options = module_options(method, options, model)
    return library_config(method, options)


def library_config(method: str, options: dict) -> PeftConfig:
    """PEFT's config for a recipe section as given, its refusals naming the section: needs no model, so it runs
    before anything loads (``adapter_config`` adds what depends on the model)."""
    init = options.get("init_lora_weights")
    for name, why in INITS_REFUSED.items() if method == "lora" and isinstance(init, str) else ():
        if init.startswith(name):
            raise PeftGpt2Error(f"lora.init_lora_weights {init!r} is not supported: it {why}")
    try:
        return config_class(method)(**options, task_type="CAUSAL_LM")
    except (ValueError, TypeError) as err:
        raise PeftGpt2Error(f"recipe section {method}: {CONFIGS[method]} refused a value: {err}") from None


def method_label(method: str, options: dict, quantization: str | None) -> str:
    """A run's method as reports name it: DoRA and rsLoRA by name, the base's quantization as a suffix
    (``lora-8bit``; QLoRA is ``lora-4bit``)."""
    if method == "lora":
        method = "dora" if options.get("use_dora") else "rslora" if options.get("use_rslora") else "lora"
    return f"{method}-{quantization}" if quantization else method


def peft_type(path: str | Path) -> str | None:
    """The PEFT method an adapter folder declares (``"LORA"``, ``"IA3"``...), read without loading anything;
    ``None`` if unreadable (``adapters.folder.attach`` then refuses the folder with the reason)."""
    try:
        return json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8")).get("peft_type")
    except (OSError, ValueError, AttributeError):
        return None


def check_one_method(folders: dict[str, str | Path]) -> None:
    """Refuse adapter folders ``{name: folder}`` of different PEFT methods for one model, before it loads."""
    kinds = {name: peft_type(path) for name, path in folders.items()}
    if len(set(kinds.values()) - {None}) > 1:
        raise PeftGpt2Error(
            f"PEFT holds adapters of one method per model, and these differ: {kinds}; load each method separately"
        )


def mixes_rows(config: PeftConfig) -> bool:
    """Whether PEFT honours per-row ``adapter_names`` for an adapter with this config: plain LoRA (rsLoRA too)."""
    return config.peft_type == "LORA" and not getattr(config, "use_dora", False)


def drop_routing_hooks(model: nn.Module) -> None:
    """Remove the per-row routing hooks PEFT leaves behind when a mixed-batch call raises.

    PEFT removes them only on a clean exit (huggingface/peft#3475, open): after one failed mixed batch every later
    call would be routed with the failed call's rows, or fail on their count. So after a failure, drop them.
    """
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if getattr(getattr(hook, "func", None), "__name__", "") == "_adapter_names_pre_forward_hook":
                del module._forward_pre_hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)


def check_mergeable(path: str | Path) -> None:
    """Refuse to merge a prompt-learning adapter, naming its method, before any model loads."""
    from peft import PeftConfig

    try:
        config = PeftConfig.from_pretrained(str(path))
    except Exception:  # a malformed config: ``adapters.folder.attach`` refuses it with the reason
        return
    if config.is_prompt_learning:
        raise PeftGpt2Error(
            f"{path} is a {config.peft_type.value} adapter: it adds virtual tokens instead of changing weights, so "
            "there is nothing to merge into the base; serve or evaluate it as an adapter"
        )
