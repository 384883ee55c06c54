"""Adapter and model folders on disk: what kind a folder is, whether it is safe to load, and attaching it.

    python -c "from peft_gpt2.adapter_folder import folder_kind, base_of; print(folder_kind('adapters/quickstart'), \
base_of('adapters/quickstart'))"

An adapter folder is a standard PEFT folder plus ``peft_gpt2.json`` (``run_folder``). Loading checks that the
folder is an adapter, that its weights are safetensors (pickle ``.bin`` files run code when loaded), and that the
base model matches the one it was trained on (config fingerprint), before any weights are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models import config_fingerprint
from peft_gpt2.run_folder import Provenance

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def folder_kind(path: str | Path, *, allow_pickle: bool = False) -> str:
    """``"adapter"`` (PEFT folder) or ``"model"`` (a full model folder, e.g. a full fine-tune)."""
    path = Path(path)
    if not path.is_dir():
        raise PeftGpt2Error(f"{path} is not a folder")
    if (path / "adapter_config.json").exists():
        weights = "adapter_model"
    elif (path / "config.json").exists():
        weights = "model"
    else:
        raise PeftGpt2Error(f"{path} is neither a PEFT adapter (adapter_config.json) nor a model folder (config.json)")
    has_safetensors = any(path.glob(f"{weights}*.safetensors"))
    if not has_safetensors:
        if any(path.glob(f"{weights}*.bin")) and not allow_pickle:
            raise PeftGpt2Error(
                f"{path} holds only pickle weights ({weights}.bin), which can run code when loaded; "
                "convert them to safetensors, or pass --allow-pickle if you trust the source"
            )
        if not any(path.glob(f"{weights}*.bin")):
            raise PeftGpt2Error(f"{path} has no {weights}.safetensors weights")
    return "adapter" if weights == "adapter_model" else "model"


def base_of(path: str | Path) -> str:
    """The base model an adapter was trained on: provenance first, then PEFT's own record."""
    recorded = Provenance.read(path).base_model
    if recorded:
        return recorded
    config = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    if not config.get("base_model_name_or_path"):
        raise PeftGpt2Error(f"{path}: no base model recorded; pass --model")
    return config["base_model_name_or_path"]


def check_base(path: str | Path, base: PreTrainedModel, *, force: bool = False) -> None:
    """Refuse an adapter whose recorded base config differs from the loaded base (``force`` skips it)."""
    record = Provenance.read(path)
    expected, actual = record.base_config_fingerprint, config_fingerprint(base.config)
    if expected and expected != actual and not force:
        raise PeftGpt2Error(
            f"{path} was trained on base {record.base_model!r} (config {expected}), "
            f"but the loaded base has config {actual}; load the right base, or pass --force to try anyway"
        )


def attach(
    model: PreTrainedModel | PeftModel,
    path: str | Path,
    name: str,
    *,
    force: bool = False,
    allow_pickle: bool = False,
) -> PeftModel:
    """Add the adapter at ``path`` under ``name`` (inference mode); the first call wraps the base.

    Args:
        model (`PreTrainedModel` or `PeftModel`): the base, or a PeftModel that already holds adapters.
        path (`str` or `Path`): the adapter folder.
        name (`str`): the adapter's name inside the model.
        force (`bool`, *optional*, defaults to `False`): skip the base-model fingerprint check.
        allow_pickle (`bool`, *optional*, defaults to `False`): accept ``adapter_model.bin``.
    """
    from peft import PeftModel

    if folder_kind(path, allow_pickle=allow_pickle) != "adapter":
        raise PeftGpt2Error(f"{path} is a full model folder, not an adapter; load it as a model (--model {path})")
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    check_base(path, base, force=force)
    check_readable(path)
    if isinstance(model, PeftModel):
        if name in model.peft_config:
            raise PeftGpt2Error(f"an adapter named {name!r} is already loaded")
        model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        return model
    return PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)


def check_readable(path: str | Path) -> None:
    """Refuse a folder whose safetensors weights are not a readable safetensors file, naming the file."""
    from safetensors import safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                weights.keys()
        except Exception as err:  # safetensors raises its own error type for a bad header
            raise PeftGpt2Error(f"{file}: not a readable safetensors file ({err})") from None


def disk_size_mb(path: str | Path) -> float:
    """Size of the weights in a folder (safetensors and bin), in MiB."""
    files = [f for f in Path(path).iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / 2**20
