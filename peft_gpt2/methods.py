"""What each PEFT method can and cannot do once trained: share a batch with other adapters, be merged.

Measured on GPT-2 with peft 0.21 (``tests/test_methods.py``): PEFT routes each row of a batch to its own adapter
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


def peft_type(path: str | Path) -> str | None:
    """The PEFT method an adapter folder declares (``"LORA"``, ``"IA3"``...), read without loading anything;
    ``None`` if unreadable (``adapter_folder.attach`` then refuses the folder with the reason)."""
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
    except Exception:  # a malformed config: ``adapter_folder.attach`` refuses it with the reason
        return
    if config.is_prompt_learning:
        raise PeftGpt2Error(
            f"{path} is a {config.peft_type.value} adapter: it adds virtual tokens instead of changing weights, so "
            "there is nothing to merge into the base; serve or evaluate it as an adapter"
        )
