"""The recipe's pass-through sections: each key is a keyword argument of a library config, checked here.

A method's section (``lora``, ``ia3``, ``vera``, ``prefix_tuning``, ``prompt_tuning``) feeds that PEFT config
(``methods.CONFIGS``); ``train`` feeds TRL's ``SFTConfig``, except the keys in ``OUR_TYPES``, translated in
``sft.sft_config``. Unknown keys get the closest valid one, types are coerced from the library's own type hints,
keys we set are refused naming the key that decides them, and values the library owns are validated by the
library when the config is built, before any model or data loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.errors import check_key as check
from peft_gpt2.models.methods import config_class

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,  # rank of the update; higher = more capacity and memory
    "lora_alpha": 16,  # scaling numerator: the update is scaled by lora_alpha / r
    "lora_dropout": 0.05,  # dropout on the LoRA input
    "target_modules": None,  # None: PEFT's per-architecture default (GPT-2: c_attn)
    "bias": "none",  # none | lora_only | all
}
TRAIN_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,  # peak learning rate (AdamW)
    "lr_scheduler_type": "cosine",  # any transformers scheduler
    "warmup_steps": 0.03,  # an int counts steps, a float in [0, 1) is a fraction of all steps
    "num_train_epochs": 1.0,  # ignored when max_steps > 0
    "max_steps": -1,  # > 0 stops after this many optimizer steps
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "gradient_accumulation_steps": 1,  # effective batch = batch size x accumulation x processes
    "logging_steps": 10,  # print the loss every N steps
    "save_total_limit": 2,  # checkpoints kept on disk (oldest removed first)
    "report_to": "none",  # none | tensorboard (logs in the run folder's runs/) | wandb | mlflow | ... (pip install it)
    "seed": 42,  # also the data order's seed
    "activation_checkpointing": False,  # recompute activations in backward: less memory, ~30% slower
    "ddp_find_unused_parameters": False,  # every trainable parameter is used in every forward (DDP only)
    # Ours, translated in sft.sft_config (the one place recipe keys are not SFTConfig's):
    "precision": "auto",  # auto (bf16/fp16 on CUDA, bf16 autocast on a CPU that has it) | fp32 | bf16 | fp16
    "eval_steps": None,  # validation loss every N steps (None: at the start and end only)
    "save_steps": None,  # checkpoint every N steps for --resume (None: no checkpoints)
    "group_by_length": True,  # batch examples of similar length: less padding, same loss
    "padding_free": False,  # each batch as one row, no padding; refused if attention would mix examples
    "loraplus_lr_ratio": None,  # LoRA+: B matrices learn this many times faster than A (the paper suggests 16)
}
# SFTConfig fields the recipe may not set, and the recipe key that decides each instead.
TRAIN_SET_BY_US = {
    "output_dir": "name and output_dir",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "use_cpu": "train.precision",
    "max_length": "data.max_length",
    "completion_only_loss": "data.format",
    "eval_strategy": "train.eval_steps",
    "save_strategy": "train.save_steps",
    "train_sampling_strategy": "train.group_by_length",
    "data_seed": "train.seed",
    "logging_nan_inf_filter": "nothing (a nan/inf loss stops the run)",
}
# Adapter-config fields the recipe may not set: PEFT's task type, and how layers store their weights.
ADAPTER_SET_BY_US = {"task_type": "method", "fan_in_fan_out": "nothing (set from the target layers' type)"}
# Each method's section starts from these (ours where PEFT's would not train well or not at all).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": LORA_DEFAULTS,
    "ia3": {},  # PEFT's GPT-2 targets: c_attn and mlp.c_proj (feed-forward)
    "vera": {"r": 256},  # PEFT's default rank: VeRA's shared random matrices are cheap, its vectors tiny
    "prefix_tuning": {"num_virtual_tokens": 20},
    "prompt_tuning": {"num_virtual_tokens": 20},
}


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against a field's type; ints and ``1e-3``-style strings widen to floats, nothing else."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [t for t in typing.get_args(tp) if t is not type(None)]
        for option in inner[:-1]:  # the first type the value fits; the last one reports the error
            try:
                return coerce(value, option, key)
            except PeftGpt2Error:
                pass
        return coerce(value, inner[-1], key)
    if not isinstance(tp, type) or tp not in (int, float, bool, str, list):
        return value  # enums, dicts, Literal...: the library checks them
    if origin is list:
        check(isinstance(value, list), key, f"must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    check(ok, key, f"must be {type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def unknown(key: str, names: list[str], prefix: str) -> PeftGpt2Error:
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
    return PeftGpt2Error(f"unknown recipe key {prefix}{key}{hint}")


OUR_TYPES: dict[str, Any] = {
    "precision": str,
    "eval_steps": int | None,
    "save_steps": int | None,
    "group_by_length": bool,
    "padding_free": bool,
    "loraplus_lr_ratio": float | None,
}
OUR_TRAIN_KEYS = tuple(OUR_TYPES)  # train keys that are not SFTConfig's (or mean something else here)


def library_types(section: str) -> dict[str, Any]:
    """The keyword arguments (and their types) of the library config a section feeds."""
    if section == "train":
        from trl import SFTConfig as library
    else:
        library = config_class(section)
    hints = typing.get_type_hints(library)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(library) if f.init}


def section(section: str, data: Any) -> dict[str, Any]:
    """A method's section or ``train``: our defaults, then the recipe's keys, each a keyword of the method's PEFT
    config (``lora`` -> ``LoraConfig``, ``ia3`` -> ``IA3Config``...) or of ``SFTConfig``.

    Unknown keys get the closest valid one; types are checked here; values the library owns are validated by the
    library when the config is built (``training/trainer.py``), before any model or data loads.
    """
    train = section == "train"
    defaults, set_by_us = (TRAIN_DEFAULTS, TRAIN_SET_BY_US) if train else (METHOD_DEFAULTS[section], ADAPTER_SET_BY_US)
    check(isinstance(data, dict), section, f"must be a mapping, got {data!r}")
    types = {**library_types(section), **(OUR_TYPES if train else {})}
    out = dict(defaults)
    for key, value in data.items():
        if key in set_by_us:
            raise PeftGpt2Error(f"recipe key {section}.{key} is set by peft-gpt2 from {set_by_us[key]}")
        if key not in types:
            raise unknown(key, sorted(set(types) - set(set_by_us)), f"{section}.")
        out[key] = coerce(value, types[key], f"{section}.{key}")
    rules = SANITY.get(section, {})
    for key, (ok, rule) in rules.items():
        check(out.get(key) is None or ok(out[key]), f"{section}.{key}", f"must be {rule}, got {out.get(key)!r}")
    return out


SECTIONS = (*METHOD_DEFAULTS, "train")
# Values the libraries accept but that cannot train: caught here, with the key named.
SANITY: dict[str, dict[str, tuple[Any, str]]] = {
    "lora": {"r": (lambda v: v >= 1, ">= 1"), "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)")},
    "train": {
        "learning_rate": (lambda v: v > 0, "> 0"),
        "precision": (lambda v: v in PRECISIONS, f"one of {PRECISIONS}"),
        "per_device_train_batch_size": (lambda v: v >= 1, ">= 1"),
        "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
        "eval_steps": (lambda v: v >= 1, ">= 1 or null"),
        "save_steps": (lambda v: v >= 1, ">= 1 or null"),
        "loraplus_lr_ratio": (lambda v: v > 0, "> 0 or null"),
    },
}
