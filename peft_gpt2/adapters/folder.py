"""Adapter and model folders on disk: what kind a folder is, whether it is safe to load, and attaching it.

    python -c "from peft_gpt2.adapters.folder import folder_kind, base_of; print(folder_kind('adapters/quickstart'), \
base_of('adapters/quickstart'))"

An adapter folder is a standard PEFT folder plus ``peft_gpt2.json`` (``run_folder``). Loading checks that the
folder is an adapter, that its weights are safetensors (pickle ``.bin`` files run code when loaded), and that the
base model matches the one it was trained on (config fingerprint), before any weights are read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.loading import config_fingerprint
from peft_gpt2.run_folder import ADAPTER_CONFIG, MODEL_CONFIG, Provenance, kind_of

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
RESERVED = ("base", "__base__", "default")


def check_name(name: str) -> str:
    """An adapter name is a name, not a path. No ``.``, and not an attribute of torch's module dicts (``training``,
    ``forward``, ``keys``...): torch refuses those as module keys (a KeyError), after PEFT has already half-added the
    adapter. ``default`` is PEFT's own name (saved without a subfolder)."""
    import torch

    if not isinstance(name, str) or not NAME.match(name) or name in RESERVED:
        raise PeftGpt2Error(
            f"bad adapter name {name!r}: use 1-64 letters, digits, '_' or '-' (not starting with '_' or '-'), "
            f"not {', '.join(RESERVED)}"
        )
    if any(hasattr(container, name) for container in (torch.nn.ModuleDict(), torch.nn.ParameterDict())):
        raise PeftGpt2Error(f"bad adapter name {name!r}: torch keeps an attribute of that name on every module")
    return name


def folder_kind(path: str | Path, *, allow_pickle: bool = False) -> str:
    """``"adapter"`` (PEFT folder) or ``"model"`` (a full model folder, e.g. a full fine-tune)."""
    path = Path(path)
    if not path.is_dir():
        raise PeftGpt2Error(f"{path} is not a folder")
    kind = kind_of(path)
    if kind is None:
        raise PeftGpt2Error(f"{path} is neither a PEFT adapter ({ADAPTER_CONFIG}) nor a model folder ({MODEL_CONFIG})")
    weights = "adapter_model" if kind == "adapter" else "model"
    has_safetensors = any(path.glob(f"{weights}*.safetensors"))
    if not has_safetensors:
        if any(path.glob(f"{weights}*.bin")) and not allow_pickle:
            raise PeftGpt2Error(
                f"{path} holds only pickle weights ({weights}.bin), which can run code when loaded; "
                "convert them to safetensors, or pass --allow-pickle if you trust the source"
            )
        if not any(path.glob(f"{weights}*.bin")):
            raise PeftGpt2Error(f"{path} has no {weights}.safetensors weights")
    return kind


def base_of(path: str | Path) -> str:
    """The base model an adapter was trained on: provenance first, then PEFT's own record."""
    recorded = Provenance.read(path).base_model
    if recorded:
        return recorded
    file = Path(path) / ADAPTER_CONFIG
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # malformed, not UTF-8, nested past the stack, 4300+ digits
        raise PeftGpt2Error(f"{file}: not valid JSON ({type(err).__name__}); pass --model to name the base") from None
    if not isinstance(config, dict) or not isinstance(config.get("base_model_name_or_path"), str):
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
    check_weights(path, base)
    if isinstance(model, PeftModel):
        if name in model.peft_config:
            raise PeftGpt2Error(f"an adapter named {name!r} is already loaded")
        model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        return model
    return PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)


def adapter_tensors(path: str | Path) -> dict:
    """The adapter's saved tensors by key (safetensors; a pickle ``.bin`` only after ``folder_kind`` allowed it)."""
    import torch
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("adapter_model*.safetensors")) or sorted(Path(path).glob("adapter_model*.bin"))
    tensors = {}
    for file in files:
        try:
            loaded = load_file(file) if file.suffix == ".safetensors" else torch.load(file, weights_only=True)
        except Exception as err:  # safetensors and torch raise their own types for a damaged file
            raise PeftGpt2Error(f"{file}: not a readable weights file ({load_failure(err)})") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise PeftGpt2Error(f"{file}: not a weights file: it holds a {type(loaded).__name__}, not named tensors")
        tensors.update(loaded)
    return tensors


def load_failure(err: Exception) -> str:
    """One line on why a weights file did not load; for a pickle torch's safe loader refused, the refusal itself.

    torch's message around it advises ``weights_only=False`` or allowlisting, i.e. running the file's code: not
    repeated here.
    """
    text = str(err)
    if text.startswith("Weights only load failed"):
        _, marker, after = text.partition("WeightsUnpickler error:")
        rest = after if marker else text.partition("\n\n")[2]
        lines = [line.strip() for line in rest.splitlines() if line.strip()]
        cause = lines[0].split(". Please")[0] if lines and "documentation" not in lines[0] else "not plain tensors"
        return f"the safe pickle loader refused it: {cause}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "no reason given")
    return f"{type(err).__name__}: {first}"


def check_weights(path: str | Path, base: PreTrainedModel) -> None:
    """Refuse an adapter whose weights are not exactly the adapter its config declares for this base.

    An extra key could name a base weight (PEFT would load it into the base every adapter shares), a missing one
    leaves a declared module at its initial value (a silent no-op), a wrong shape or dtype or a nan corrupts
    outputs. The expected keys, shapes and dtypes are PEFT's own: the config applied to a weightless (meta)
    copy of the base, exactly what ``save_pretrained`` writes.
    """
    import copy

    import torch
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    try:
        config = PeftConfig.from_pretrained(str(path))
    except Exception as err:  # a malformed adapter_config.json: PEFT raises several types
        raise PeftGpt2Error(f"{path}/adapter_config.json: not a PEFT config ({type(err).__name__}: {err})") from None
    init = str(getattr(config, "init_lora_weights", ""))
    if init.startswith(("pissa", "olora", "corda")):
        raise PeftGpt2Error(
            f"{path}: saved straight from a {init!r} initialisation, so loading it rewrites the base weights (PEFT "
            "subtracts the initial components from them) for every adapter that shares the base; save it as plain "
            "LoRA (PEFT: save_pretrained(..., path_initial_model_for_weight_conversion=...), as peft-gpt2 train does)"
        )
    skeleton_config = copy.deepcopy(base.config)
    if hasattr(skeleton_config, "quantization_config"):
        del skeleton_config.quantization_config  # the skeleton only needs shapes
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(skeleton_config)
    try:
        expected = get_peft_model_state_dict(get_peft_model(skeleton, config))
    except (ValueError, TypeError, KeyError) as err:  # e.g. target modules this base does not have
        raise PeftGpt2Error(f"{path}: its adapter_config.json does not fit this base ({err})") from None
    found = adapter_tensors(path)
    extra, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
    if extra:
        raise PeftGpt2Error(f"{path}: weight {extra[0]!r} is not part of the adapter its config declares; refused")
    if missing:
        raise PeftGpt2Error(f"{path}: weight {missing[0]!r} is missing, so that module would keep its initial value")
    for key, tensor in found.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise PeftGpt2Error(
                f"{path}: weight {key!r} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
            )
        if not tensor.is_floating_point():
            raise PeftGpt2Error(f"{path}: weight {key!r} has dtype {tensor.dtype}, expected a floating-point type")
        if not torch.isfinite(tensor).all():
            raise PeftGpt2Error(f"{path}: weight {key!r} holds nan or inf values")


def disk_size_mb(path: str | Path) -> float:
    """Size of the weights in a folder (safetensors and bin), in MiB."""
    files = [f for f in Path(path).iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / 2**20
