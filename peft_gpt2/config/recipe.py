"""The recipe: sections, YAML load, ``key=value`` overrides, key and type checks.

    peft-gpt2 train recipes/quickstart.yaml --set train.max_steps=20 --set data.limit=200

Override order is fixed: defaults < recipe YAML < ``--set``. ``model`` and ``data`` are ours (dataclasses below);
the method's section and ``train`` are passed through (``sections``): each key is a keyword argument of the method's
PEFT config or TRL's ``SFTConfig`` (``lora.r`` -> ``LoraConfig(r=...)``, ``ia3.target_modules`` ->
``IA3Config(target_modules=...)``, ``train.learning_rate`` -> ``SFTConfig(learning_rate=...)``). Only the chosen
method's section is used (a sweep may switch methods over one recipe) and saved. Unknown keys fail with the
closest valid key; every check runs before a model or data set is loaded.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peft_gpt2.config.sections import METHOD_DEFAULTS, SECTIONS, TRAIN_DEFAULTS, coerce, section, unknown
from peft_gpt2.data.config import INSTRUCTION_KEYS, DataConfig
from peft_gpt2.data.sources import bounded, load_yaml, unreadable
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.errors import check_key as _check
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.models.loading import QUANTIZATIONS
from peft_gpt2.models.methods import CONFIGS

METHODS = ("full", *CONFIGS)  # and "lora-8bit", read as method lora with model.quantization 8bit


@dataclass
class ModelConfig:
    name: str = "gpt2"  # hub id (gpt2, gpt2-medium), model folder, .gguf file, or preset tiny-gpt2 / smollm2-135m
    quantization: str | None = None  # 8bit (LLM.int8) | 4bit (QLoRA's NF4): the base, under any adapter method

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "model.name", "must not be empty")
        _check(self.quantization in (None, *QUANTIZATIONS), "model.quantization", f"must be one of {QUANTIZATIONS}")




def _defaults(method: str):
    return field(default_factory=lambda: dict(METHOD_DEFAULTS[method]))


@dataclass
class Recipe:
    name: str = ""  # adapter name: output goes to <output_dir>/<name>/ (default: the recipe file's name)
    method: str = "lora"  # full | lora | ia3 | vera | prefix_tuning | prompt_tuning (lora-8bit: lora, 8-bit base)
    output_dir: str = "adapters"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: dict[str, Any] = _defaults("lora")  # LoraConfig keyword arguments (use_dora, use_rslora, ...)
    ia3: dict[str, Any] = _defaults("ia3")  # IA3Config keyword arguments
    vera: dict[str, Any] = _defaults("vera")  # VeraConfig keyword arguments
    prefix_tuning: dict[str, Any] = _defaults("prefix_tuning")  # PrefixTuningConfig keyword arguments
    prompt_tuning: dict[str, Any] = _defaults("prompt_tuning")  # PromptTuningConfig keyword arguments
    train: dict[str, Any] = field(default_factory=lambda: dict(TRAIN_DEFAULTS))  # SFTConfig keyword arguments
    # How eval/compare decode this run's answers unless the command line says otherwise (GenerationSettings keys)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    show_examples: int = 0  # after training, print this many test records answered by the base and the trained model

    def __post_init__(self) -> None:
        if self.method == "lora-8bit":  # the method name before quantization was a property of the base
            _check(self.model.quantization in (None, "8bit"), "method", "lora-8bit means model.quantization 8bit")
            self.method, self.model.quantization = "lora", "8bit"
        _check(self.method in METHODS, "method", f"must be one of {METHODS} (or lora-8bit), got {self.method!r}")
        _check(
            bool(self.name) and "/" not in self.name and not self.name.startswith("."),
            "name",
            f"must be a plain folder name, got {self.name!r}",
        )
        _check(self.show_examples >= 0, "show_examples", f"must be >= 0, got {self.show_examples}")
        shown = self.show_examples == 0 or self.data.format in ("instructions", "data_to_text")
        _check(shown, "show_examples", f"needs instruction or data-to-text records, not data.format {self.data.format}")
        quantized = self.method != "full" or self.model.quantization is None
        _check(quantized, "model.quantization", "needs an adapter method: a quantized base cannot be trained itself")
        lora_plus = self.method == "lora" or self.train.get("loraplus_lr_ratio") is None
        _check(lora_plus, "train.loraplus_lr_ratio", f"is LoRA+, for method lora only (this recipe: {self.method})")

    @property
    def adapter(self) -> dict[str, Any]:
        """The method's section: its PEFT config's keyword arguments (empty for a full fine-tune)."""
        return {} if self.method == "full" else getattr(self, self.method)

    @property
    def out_path(self) -> Path:
        return Path(self.output_dir) / self.name


def _build(cls: type, data: Any, prefix: str) -> Any:
    _check(isinstance(data, dict), prefix.rstrip(".") or "recipe", f"must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise unknown(key, names, prefix)
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, f"{prefix}{key}.")
        elif key in SECTIONS:
            kwargs[key] = section(key, value)
        else:
            kwargs[key] = coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


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


def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, library_sections: bool = True
) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides, and validate every key.

    Args:
        path (`str` or `Path`): the recipe file.
        overrides (`list[str]`, *optional*): ``section.key=value`` strings, applied in order.
        library_sections (`bool`, *optional*, defaults to `True`): `False` leaves out (at their defaults) the
            sections checked against TRL's and PEFT's classes, which import them (``preflight``).
    """
    path = Path(path)
    data = load_yaml(path, "recipe") or {}
    if not isinstance(data, dict):
        raise PeftGpt2Error(f"recipe {path} must be a mapping of keys, got {type(data).__name__}")
    for assignment in overrides:
        apply_override(data, assignment)
    data.setdefault("name", path.stem)
    if not library_sections:
        data = {k: v for k, v in data.items() if k not in SECTIONS}
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
    for method in set(CONFIGS) - {recipe.method}:  # unused sections: a sweep may switch methods over one recipe
        del out[method]
    if recipe.data.format == "text":
        out["data"] = {k: v for k, v in out["data"].items() if k not in INSTRUCTION_KEYS}
    return out


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_dict(recipe), sort_keys=False)
