"""Recipe schema: dataclasses, YAML load, ``key=value`` overrides, validation.

    peft-gpt2 train recipes/quickstart.yaml --set train.max_steps=20 --set data.limit=200

Override order is fixed: dataclass defaults < recipe YAML < ``--set``. A recipe key is a dataclass field
is the keyword argument it feeds (``lora.r`` -> ``LoraConfig(r=...)``, ``train.learning_rate`` ->
``SFTConfig(learning_rate=...)``); the only translation is in ``train.py``. Unknown keys fail with the
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

METHODS = ("full", "lora", "lora-8bit")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")


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
    format: str = "instructions"  # instructions (loss on the answer) | text (a raw corpus, loss on every token)
    template: str = "alpaca"  # prompt template (peft_gpt2.prompts.TEMPLATES)
    limit: int | None = None  # keep this many records after cleaning (random, seeded)
    fraction: float | None = None  # or keep this fraction of them
    seed: int = 42  # drives subsampling and the train/validation/test split
    split: list[float] = field(default_factory=lambda: [0.85, 0.10, 0.05])  # train / validation / test
    max_length: int = 512  # tokens per example, prompt + completion + eos; for text, the block size
    overlong: str = "truncate"  # examples longer than max_length: truncate (keep the start) or drop

    def __post_init__(self) -> None:
        from peft_gpt2.prompts import TEMPLATES

        _check(bool(self.path.strip()), "data.path", "is required: a JSON/JSONL file, URL or dataset name")
        _check(self.format in ("instructions", "text"), "data.format", "must be 'instructions' or 'text'")
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


@dataclass
class LoraSettings:
    r: int = 8  # rank of the update; higher = more capacity and memory
    lora_alpha: int = 16  # scaling numerator: the update is scaled by lora_alpha / r
    lora_dropout: float = 0.05  # dropout on the LoRA input
    target_modules: list[str] | None = None  # None: per-architecture default (GPT-2: c_attn)
    bias: str = "none"  # none | lora_only | all

    def __post_init__(self) -> None:
        _check(self.r >= 1, "lora.r", f"must be >= 1, got {self.r}")
        _check(self.lora_alpha > 0, "lora.lora_alpha", f"must be > 0, got {self.lora_alpha}")
        _check(0 <= self.lora_dropout < 1, "lora.lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        _check(
            self.target_modules is None or len(self.target_modules) > 0,
            "lora.target_modules",
            "must name at least one module, or be null for the architecture's default",
        )
        _check(self.bias in ("none", "lora_only", "all"), "lora.bias", "must be none, lora_only or all")


@dataclass
class TrainSettings:
    learning_rate: float = 2e-4  # peak learning rate (AdamW)
    lr_scheduler_type: str = "cosine"  # cosine | linear | constant | constant_with_warmup
    warmup_steps: float = 0.03  # an int counts steps, a float in [0, 1) is a fraction of all steps
    num_train_epochs: float = 1.0  # ignored when max_steps > 0
    max_steps: int = -1  # > 0 stops after this many optimizer steps
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1  # effective batch = batch size x accumulation x processes
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_steps: int | None = None  # evaluate on the validation split every N steps (None: at the end only)
    logging_steps: int = 10  # print the loss every N steps
    save_steps: int | None = None  # checkpoint every N steps for --resume (None: no checkpoints)
    save_total_limit: int = 2  # checkpoints kept on disk (oldest removed first)
    seed: int = 42
    precision: str = "auto"  # auto (bf16/fp16 on CUDA, bf16 autocast on a CPU that has it) | fp32 | bf16 | fp16
    activation_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    group_by_length: bool = True  # batch examples of similar length: less padding, same loss
    padding_free: bool = False  # each batch as one row, no padding; refused if attention would mix examples

    def __post_init__(self) -> None:
        _check(self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(self.lr_scheduler_type in SCHEDULERS, "train.lr_scheduler_type", f"must be one of {SCHEDULERS}")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(self.num_train_epochs > 0, "train.num_train_epochs", "must be > 0")
        _check(self.max_steps == -1 or self.max_steps >= 1, "train.max_steps", "must be -1 (off) or >= 1")
        for key in (
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
        ):
            _check(getattr(self, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check(self.eval_steps is None or self.eval_steps >= 1, "train.eval_steps", "must be >= 1 or null")
        _check(self.save_steps is None or self.save_steps >= 1, "train.save_steps", "must be >= 1 or null")
        _check(self.save_total_limit >= 1, "train.save_total_limit", "must be >= 1")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0")
        _check(self.precision in PRECISIONS, "train.precision", f"must be one of {PRECISIONS}")


@dataclass
class Recipe:
    name: str = ""  # adapter name: output goes to <output_dir>/<name>/ (default: the recipe file's name)
    method: str = "lora"  # full | lora | lora-8bit
    output_dir: str = "adapters"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

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
        return _coerce(value, inner[0], key)
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


def _build(cls: type, data: Any, prefix: str) -> Any:
    _check(isinstance(data, dict), prefix.rstrip(".") or "recipe", f"must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise PeftGpt2Error(f"unknown recipe key {prefix}{key}{hint}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``section.key=value`` to the raw recipe mapping; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise PeftGpt2Error(f"--set expects key=value (e.g. train.max_steps=20), got {assignment!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise PeftGpt2Error(f"--set {key}: value {raw!r} is not valid YAML ({err})") from None
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
    if not path.is_file():
        raise PeftGpt2Error(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise PeftGpt2Error(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise PeftGpt2Error(f"recipe {path} must be a mapping of keys, got {type(data).__name__}")
    for assignment in overrides:
        apply_override(data, assignment)
    data.setdefault("name", path.stem)
    try:
        return _build(Recipe, data, "")
    except PeftGpt2Error as err:
        raise PeftGpt2Error(f"{path}: {err}") from None


def recipe_dict(recipe: Recipe) -> dict:
    """The fully resolved recipe, as saved next to every output."""
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_dict(recipe), sort_keys=False)
