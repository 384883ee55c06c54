"""The recipe: sections, YAML load, ``key=value`` overrides, key and type checks.

    peft-gpt2 train recipes/quickstart.yaml --set train.max_steps=20 --set data.limit=200

Override order is fixed: defaults < recipe YAML < ``--set``. ``model`` and ``data`` are ours (dataclasses below);
``lora`` and ``train`` are passed through: each key is a keyword argument of PEFT's ``LoraConfig`` or TRL's
``SFTConfig`` (``lora.r`` -> ``LoraConfig(r=...)``, ``train.learning_rate`` -> ``SFTConfig(learning_rate=...)``),
except the few in ``TRAIN_DEFAULTS``' last block, translated in ``sft.sft_config``. Unknown keys fail with the
closest valid key; every check runs before a model or data set is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.generation import GenerationSettings
from peft_gpt2.sources import bounded, load_yaml, unreadable
from peft_gpt2.templates import DEFAULT_TEMPLATE, TEMPLATES

METHODS = ("full", "lora", "lora-8bit")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FORMATS = ("instructions", "data_to_text", "text")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise PeftGpt2Error(f"recipe key {key}: {message}")


@dataclass
class ModelConfig:
    name: str = "gpt2"  # hub id (gpt2, gpt2-medium), model folder, .gguf file, or preset tiny-gpt2 / smollm2-135m

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "model.name", "must not be empty")


@dataclass
class DataConfig:
    path: str = ""  # instructions: Alpaca JSON/JSONL, URL or HF data set; text: .txt file, folder or URL
    # instructions (loss on the answer) | data_to_text (E2E CSV or hub set: split by MR, one example per reference)
    # | text (a raw corpus, loss on every token)
    format: str = "instructions"
    template: str = DEFAULT_TEMPLATE  # prompt template (peft_gpt2.templates.TEMPLATES)
    limit: int | None = None  # keep this many records after cleaning (random, seeded)
    fraction: float | None = None  # or keep this fraction of them
    seed: int = 42  # drives subsampling and the train/validation/test split
    split: list[float] = field(default_factory=lambda: [0.85, 0.10, 0.05])  # train / validation / test
    max_length: int = 512  # tokens per example, prompt + completion + eos; for text, the block size
    overlong: str = "truncate"  # examples longer than max_length: truncate (keep the start) or drop

    def __post_init__(self) -> None:
        _check(bool(self.path.strip()), "data.path", "is required: a JSON/JSONL file, URL or dataset name")
        _check(self.format in FORMATS, "data.format", f"must be one of {FORMATS}")
        _check(self.template in TEMPLATES, "data.template", f"must be one of {sorted(TEMPLATES)}")
        _check(self.limit is None or self.limit >= 1, "data.limit", f"must be >= 1, got {self.limit}")
        _check(self.fraction is None or 0 < self.fraction <= 1, "data.fraction", "must be in (0, 1]")
        _check(self.limit is None or self.fraction is None, "data.limit", "set limit or fraction, not both")
        _check(len(self.split) == 3, "data.split", "must be three fractions: [train, validation, test]")
        _check(
            all(f >= 0 for f in self.split) and self.split[0] > 0,
            "data.split",
            f"fractions must be >= 0 with train > 0, got {self.split}",
        )
        _check(
            math.isclose(sum(self.split), 1.0, abs_tol=1e-6),
            "data.split",
            f"fractions must sum to 1, got {self.split} (sum {sum(self.split):g})",
        )
        _check(self.max_length >= 16, "data.max_length", f"must be >= 16, got {self.max_length}")
        _check(self.overlong in ("truncate", "drop"), "data.overlong", "must be 'truncate' or 'drop'")


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
    "seed": 42,  # also the data order's seed
    "activation_checkpointing": False,  # recompute activations in backward: less memory, ~30% slower
    # Ours, translated in sft.sft_config (the one place recipe keys are not SFTConfig's):
    "precision": "auto",  # auto (bf16/fp16 on CUDA, bf16 autocast on a CPU that has it) | fp32 | bf16 | fp16
    "eval_steps": None,  # validation loss every N steps (None: at the start and end only)
    "save_steps": None,  # checkpoint every N steps for --resume (None: no checkpoints)
    "group_by_length": True,  # batch examples of similar length: less padding, same loss
    "padding_free": False,  # each batch as one row, no padding; refused if attention would mix examples
}
# SFTConfig / LoraConfig fields the recipe may not set, and the recipe key that decides each instead.
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
    "report_to": "nothing (no trackers)",
    "logging_nan_inf_filter": "nothing (a nan/inf loss stops the run)",
}
LORA_SET_BY_US = {"task_type": "method", "fan_in_fan_out": "nothing (set from the target layers' type)"}
INSTRUCTION_KEYS = ("template", "limit", "fraction", "overlong")  # data keys that data.format: text does not use


@dataclass
class Recipe:
    name: str = ""  # adapter name: output goes to <output_dir>/<name>/ (default: the recipe file's name)
    method: str = "lora"  # full | lora | lora-8bit
    output_dir: str = "adapters"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: dict[str, Any] = field(default_factory=lambda: dict(LORA_DEFAULTS))  # LoraConfig keyword arguments
    train: dict[str, Any] = field(default_factory=lambda: dict(TRAIN_DEFAULTS))  # SFTConfig keyword arguments
    # How eval/compare decode this run's answers unless the command line says otherwise (GenerationSettings keys)
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", f"must be one of {METHODS}, got {self.method!r}")
        _check(
            bool(self.name) and "/" not in self.name and not self.name.startswith("."),
            "name",
            f"must be a plain folder name, got {self.name!r}",
        )

    @property
    def out_path(self) -> Path:
        return Path(self.output_dir) / self.name


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against a field's type; ints and ``1e-3``-style strings widen to floats, nothing else."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [t for t in typing.get_args(tp) if t is not type(None)]
        for option in inner[:-1]:  # the first type the value fits; the last one reports the error
            try:
                return _coerce(value, option, key)
            except PeftGpt2Error:
                pass
        return _coerce(value, inner[-1], key)
    if not isinstance(tp, type) or tp not in (int, float, bool, str, list):
        return value  # enums, dicts, Literal...: the library checks them
    if origin is list:
        _check(isinstance(value, list), key, f"must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    _check(ok, key, f"must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _unknown(key: str, names: list[str], prefix: str) -> PeftGpt2Error:
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
    return PeftGpt2Error(f"unknown recipe key {prefix}{key}{hint}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    _check(isinstance(data, dict), prefix.rstrip(".") or "recipe", f"must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(key, names, prefix)
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, f"{prefix}{key}.")
        elif key in SECTIONS:
            kwargs[key] = _section(key, value)
        else:
            kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


OUR_TYPES: dict[str, Any] = {
    "precision": str,
    "eval_steps": int | None,
    "save_steps": int | None,
    "group_by_length": bool,
    "padding_free": bool,
}
OUR_TRAIN_KEYS = tuple(OUR_TYPES)  # train keys that are not SFTConfig's (or mean something else here)


def _library_types(section: str) -> dict[str, Any]:
    """The keyword arguments (and their types) of the library config a section feeds."""
    if section == "lora":
        from peft import LoraConfig as library
    else:
        from trl import SFTConfig as library
    hints = typing.get_type_hints(library)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(library) if f.init}


def _section(section: str, data: Any) -> dict[str, Any]:
    """``lora`` / ``train``: our defaults, then the recipe's keys, each a keyword of ``LoraConfig`` / ``SFTConfig``.

    Unknown keys get the closest valid one; types are checked here; values the library owns are validated by the
    library when the config is built (``sft.py``), before any model or data loads.
    """
    defaults, set_by_us = (LORA_DEFAULTS, LORA_SET_BY_US) if section == "lora" else (TRAIN_DEFAULTS, TRAIN_SET_BY_US)
    _check(isinstance(data, dict), section, f"must be a mapping, got {data!r}")
    types = {**_library_types(section), **(OUR_TYPES if section == "train" else {})}
    out = dict(defaults)
    for key, value in data.items():
        if key in set_by_us:
            raise PeftGpt2Error(f"recipe key {section}.{key} is set by peft-gpt2 from {set_by_us[key]}")
        if key not in types:
            raise _unknown(key, sorted(set(types) - set(set_by_us)), f"{section}.")
        out[key] = _coerce(value, types[key], f"{section}.{key}")
    rules = SANITY.get(section, {})
    for key, (ok, rule) in rules.items():
        _check(out.get(key) is None or ok(out[key]), f"{section}.{key}", f"must be {rule}, got {out.get(key)!r}")
    return out


SECTIONS = ("lora", "train")
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
    },
}


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``section.key=value`` to the raw recipe mapping; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise PeftGpt2Error(f"--set expects key=value (e.g. train.max_steps=20), got {assignment!r}")
    try:
        value = bounded(yaml.safe_load(raw), f"--set {key}") if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError) as err:
        why = err if isinstance(err, yaml.YAMLError) else unreadable(err)
        raise PeftGpt2Error(f"--set {key}: value {raw[:80]!r} is not valid YAML ({why})") from None
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PeftGpt2Error(f"--set {key}: {part} is not a section")
    node[leaf] = value


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides, and validate every key.

    Args:
        path (`str` or `Path`): the recipe file.
        overrides (`list[str]`, *optional*): ``section.key=value`` strings, applied in order.
    """
    path = Path(path)
    data = load_yaml(path, "recipe") or {}
    if not isinstance(data, dict):
        raise PeftGpt2Error(f"recipe {path} must be a mapping of keys, got {type(data).__name__}")
    for assignment in overrides:
        apply_override(data, assignment)
    data.setdefault("name", path.stem)
    try:
        raw_data = data.get("data")
        if isinstance(raw_data, dict) and raw_data.get("format") == "text":
            unused = [k for k in INSTRUCTION_KEYS if k in raw_data]
            _check(not unused, f"data.{unused[0] if unused else ''}", "does not apply to data.format: text")
        return _build(Recipe, data, "")
    except PeftGpt2Error as err:
        raise PeftGpt2Error(f"{path}: {err}") from None


def recipe_dict(recipe: Recipe) -> dict:
    """The fully resolved recipe, as saved next to every output (and loadable again)."""
    out = dataclasses.asdict(recipe)
    if recipe.data.format == "text":
        out["data"] = {k: v for k, v in out["data"].items() if k not in INSTRUCTION_KEYS}
    return out


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_dict(recipe), sort_keys=False)
