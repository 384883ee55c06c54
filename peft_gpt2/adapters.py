"""Adapter folders: check them, read their provenance, and attach several to one base model.

    python -c "from peft_gpt2.adapters import read_provenance; print(read_provenance('adapters/quickstart'))"

An adapter folder is a standard PEFT folder plus ``peft_gpt2.json``. Loading checks that the folder
is an adapter, that its weights are safetensors (pickle ``.bin`` files run code when loaded), and that
the base model matches the one it was trained on (config fingerprint), before any weights are read.

``AdapterSet`` keeps one base in memory with many named adapters, chosen per call or per row::

    m = AdapterSet.from_paths(None, {"alpaca": "adapters/alpaca-lora", "sherlock": "adapters/sherlock-lm"})
    m.generate(["Name three primary colors."] * 3, adapters=["alpaca", "sherlock", None])  # None: the base
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.generation import GenerationSettings, generate
from peft_gpt2.prompts import TEMPLATES, Template

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PROVENANCE = "peft_gpt2.json"


def read_provenance(path: str | Path) -> dict:
    """The folder's ``peft_gpt2.json``, or ``{}`` for a folder trained elsewhere."""
    file = Path(path) / PROVENANCE
    if not file.exists():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PeftGpt2Error(f"{file}: not valid JSON ({err})") from None


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
    provenance = read_provenance(path)
    if provenance.get("base_model"):
        return provenance["base_model"]
    config = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    if not config.get("base_model_name_or_path"):
        raise PeftGpt2Error(f"{path}: no base model recorded; pass --model")
    return config["base_model_name_or_path"]


def check_base(path: str | Path, base: PreTrainedModel, *, force: bool = False) -> None:
    """Refuse an adapter whose recorded base config differs from the loaded base (``force`` skips it)."""
    from peft_gpt2.models import config_fingerprint

    expected = read_provenance(path).get("base_config_fingerprint")
    actual = config_fingerprint(base.config)
    if expected and expected != actual and not force:
        raise PeftGpt2Error(
            f"{path} was trained on base {read_provenance(path).get('base_model')!r} (config {expected}), "
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
    if isinstance(model, PeftModel):
        if name in model.peft_config:
            raise PeftGpt2Error(f"an adapter named {name!r} is already loaded")
        model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        return model
    return PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)


def disk_size_mb(path: str | Path) -> float:
    """Size of the weights in a folder (safetensors and bin), in MiB."""
    files = [f for f in Path(path).iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / 2**20


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
RESERVED = ("base", "__base__", "default")


def check_name(name: str) -> str:
    """An adapter name is a name, not a path. No ``.``: torch refuses it as a module key, after PEFT has already
    half-added the adapter. ``default`` is PEFT's own name (saved without a subfolder)."""
    if not isinstance(name, str) or not NAME.match(name) or name in RESERVED:
        raise PeftGpt2Error(
            f"bad adapter name {name!r}: use 1-64 letters, digits, '_' or '-' (not starting with '_' or '-'), "
            f"not {', '.join(RESERVED)}"
        )
    return name


@dataclass(frozen=True)
class AdapterInfo:
    """Where a loaded adapter came from: its folder (``None`` for a ``combine`` result) and provenance."""

    path: Path | None
    provenance: dict


class AdapterSet:
    """One base model in memory with many named adapters, chosen per call.

    Switching is ``set_adapter`` (no reload), a mixed batch routes each row to its own adapter, and rows for the
    base run with adapters disabled, so no adapter leaks into another's output. Adapters load frozen, model in eval.

    Thread safety: ``generate``, ``logits`` and every method that changes the set take ``lock`` (a re-entrant
    ``threading.RLock``), so a server may share one instance across threads. ``use`` changes the default for every
    caller; a server should pass ``adapters=`` per call instead.

    Args:
        model (`PreTrainedModel`): the base; adapters are injected into it in place.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer, with a pad token.
        adapters (`dict[str, str | Path]`, *optional*): ``{name: folder}``, loaded in order; the first is active.
        template (`str`, *optional*): prompt template for every row; default: each adapter's recorded one.
        base_name (`str`, *optional*): what ``models.load_base`` loads for ``merge``; default: the adapter's record.
        force (`bool`, defaults to `False`): skip the base-model fingerprint check.
        allow_pickle (`bool`, defaults to `False`): accept ``adapter_model.bin`` (pickle runs code when loaded).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        adapters: dict[str, str | Path] | None = None,
        *,
        template: str | None = None,
        base_name: str | None = None,
        force: bool = False,
        allow_pickle: bool = False,
    ) -> None:
        if template is not None and template not in TEMPLATES:
            raise PeftGpt2Error(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.template, self.base_name, self.force, self.allow_pickle = template, base_name, force, allow_pickle
        self.lock = threading.RLock()
        self._info: dict[str, AdapterInfo] = {}
        self._active: str | None = None
        self._disabled = False
        for name, path in (adapters or {}).items():
            self.add(name, path)
        self._active = next(iter(self._info), None)

    @classmethod
    def from_paths(cls, base_name: str | None, adapters: dict[str, str | Path], **kwargs) -> AdapterSet:
        """Check every folder, then load the base (default: the one the first adapter records) and the adapters.

        ``dtype`` and ``load_in_8bit`` go to ``models.load_base``; other keyword arguments to ``AdapterSet``.
        """
        from peft_gpt2.models import load_base

        for name, path in adapters.items():  # fail before the (slow) base load
            check_name(name)
            if folder_kind(path, allow_pickle=kwargs.get("allow_pickle", False)) != "adapter":
                raise PeftGpt2Error(f"{path} is a full model folder, not an adapter; load it as the model instead")
        if base_name is None:
            if not adapters:
                raise PeftGpt2Error("no base model and no adapters: pass a model, an adapter, or both")
            base_name = base_of(next(iter(adapters.values())))
        load = {k: kwargs.pop(k) for k in ("dtype", "load_in_8bit") if k in kwargs}
        model, tokenizer = load_base(base_name, **load)
        return cls(model, tokenizer, adapters, base_name=base_name, **kwargs)

    @property
    def names(self) -> list[str]:
        """Loaded adapter names, in load order."""
        return list(self._info)

    @property
    def active(self) -> str | None:
        """The adapter used when a call names none; ``None``: the bare base (also inside ``base_only``)."""
        return None if self._disabled else self._active

    @property
    def info(self) -> dict[str, AdapterInfo]:
        """``{name: AdapterInfo}`` (a copy), e.g. for a server's adapter listing."""
        return dict(self._info)

    def _known(self, name: str) -> str:
        if name not in self._info:
            raise PeftGpt2Error(f"no adapter named {name!r}; loaded: {', '.join(self._info) or 'none'}")
        return name

    def _changing(self) -> None:
        if self._disabled:
            raise PeftGpt2Error("cannot change adapters inside base_only()")

    def add(self, name: str, path: str | Path) -> None:
        """Load the adapter at ``path`` as ``name`` (checked by ``attach``: kind, safetensors, base); not activated."""
        with self.lock:
            self._changing()
            if check_name(name) in self._info:
                raise PeftGpt2Error(f"an adapter named {name!r} is already loaded")
            try:
                self.model = attach(self.model, path, name, force=self.force, allow_pickle=self.allow_pickle)
            except PeftGpt2Error:
                raise
            except Exception as err:  # e.g. unreadable weights, found after PEFT added the adapter
                if self._info and name in self.model.peft_config:  # a half-loaded adapter must not linger
                    self.model.delete_adapter(name)
                    self._refreeze()
                raise PeftGpt2Error(f"{path}: could not load the adapter ({type(err).__name__}: {err})") from err
            self.model.eval()
            self._info[name] = AdapterInfo(Path(path), read_provenance(path))

    def _refreeze(self) -> None:
        """PEFT's ``delete_adapter`` re-activates another adapter with ``requires_grad=True``; undo that."""
        self.model.set_requires_grad(list(self.model.peft_config), requires_grad=False)

    def use(self, name: str | None) -> None:
        """Make ``name`` the default adapter (``None``: the bare base). Nothing is reloaded."""
        with self.lock:
            self._changing()
            self._active = None if name is None else self._known(name)

    def unload(self, name: str) -> None:
        """Free an adapter's weights; if it was active, the bare base becomes the default."""
        with self.lock:
            self._changing()
            self._known(name)
            if len(self._info) == 1:  # PEFT leaves a model with no adapters that fails on forward: unwrap it
                self.model = self.model.unload().eval()
            else:
                with warnings.catch_warnings():  # "... Setting active adapter to B": we choose the base instead
                    warnings.filterwarnings("ignore", message=f"Adapter {name} was active which is now deleted")
                    self.model.delete_adapter(name)
                self._refreeze()
            del self._info[name]
            self._active = None if self._active == name else self._active

    @contextmanager
    def base_only(self) -> Iterator[None]:
        """Adapters disabled inside the block (also for direct ``self.model`` calls); holds ``lock`` throughout."""
        with self.lock:
            if not self._info:
                yield
                return
            self._disabled = True
            try:
                with self.model.disable_adapter():
                    yield
            finally:
                self._disabled = False

    def combine(self, name: str, weights: dict[str, float], *, combination_type: str = "cat") -> str:
        """Add ``name`` = weighted sum of loaded adapters (PEFT ``add_weighted_adapter``), without activating it.

        Args:
            name (`str`): the new adapter's name; an existing name is an error (PEFT would silently do nothing).
            weights (`dict[str, float]`): ``{adapter: weight}``.
            combination_type (`str`, defaults to ``"cat"``): any PEFT type. ``"cat"`` is exactly
                ``sum(w * delta_W)`` (rank = sum of ranks), whatever the ranks. ``"linear"`` (equal ranks only) sums
                the A's and the B's separately, so with several adapters it adds cross terms (two copies of one
                adapter at 0.5 each give twice its update, not once).

        Returns:
            `str`: the combination type used.
        """
        with self.lock:
            self._changing()
            if check_name(name) in self._info:
                raise PeftGpt2Error(f"an adapter named {name!r} is already loaded")
            if not weights:
                raise PeftGpt2Error("combine needs at least one adapter weight")
            for adapter in weights:
                self._known(adapter)  # unknown names fail here, listing the loaded ones
            kind = combination_type
            try:
                self.model.add_weighted_adapter(list(weights), list(weights.values()), name, combination_type=kind)
            except ValueError as err:
                raise PeftGpt2Error(f"cannot combine {list(weights)} with {kind!r}: {err}") from None
            self._refreeze()
            self.model.eval()  # PEFT injects the new adapter's dropout modules in training mode
            first = self._info[next(iter(weights))].provenance
            keep = ("base_model", "base_model_path", "base_config_fingerprint", "model_type", "template")
            provenance = {k: first[k] for k in keep if k in first}
            provenance.update(name=name, method="lora-combined", combined_from=dict(weights), combination_type=kind)
            self._info[name] = AdapterInfo(None, provenance)
            return kind

    def _template(self, name: str | None) -> Template:
        if self.template:
            return TEMPLATES[self.template]
        sources = [self._info[name]] if name else list(self._info.values())
        recorded = (i.provenance.get("template") for i in sources)
        return TEMPLATES[next((t for t in recorded if t in TEMPLATES), "alpaca")]

    @contextmanager
    def _routed(self, rows: list[str | None]) -> Iterator[dict]:
        """Set the model up for ``rows`` (one adapter name or ``None`` each); yield the extra forward kwargs."""
        if self._disabled and any(rows):
            raise PeftGpt2Error("adapters are disabled inside base_only(); name adapters outside it")
        if not self._info or self._disabled:
            yield {}
        elif len(set(rows)) > 1:  # PEFT's mixed batch: each row through its own adapter, "__base__" for none
            yield {"adapter_names": [row or "__base__" for row in rows]}
        elif rows[0] is None:
            with self.model.disable_adapter():
                yield {}
        else:
            self.model.set_adapter(rows[0], inference_mode=True)
            yield {}

    def _rows(self, n: int, adapters: list[str | None] | None) -> list[str | None]:
        if adapters is None:
            return [self.active] * n
        if len(adapters) != n:
            raise PeftGpt2Error(f"got {len(adapters)} adapters for {n} prompts")
        return [None if a is None else self._known(a) for a in adapters]

    def generate(
        self,
        prompts: list[str | tuple[str, str]],
        *,
        adapters: list[str | None] | None = None,
        settings: GenerationSettings | None = None,
        raw: bool = False,
    ) -> list[str]:
        """Answer instructions, each rendered through its adapter's template.

        Args:
            prompts (`list[str | tuple[str, str]]`): instructions, or ``(instruction, input)`` pairs.
            adapters (`list[str | None]`, *optional*): one adapter per prompt (``None``: the base), run as one
                mixed batch; default: ``active`` for all.
            settings (`GenerationSettings`, *optional*): decoding; greedy by default.
            raw (`bool`, defaults to `False`): use ``prompts`` as-is, without the template.
        """
        with self.lock:
            rows = self._rows(len(prompts), adapters)
            texts = [
                p if raw else self._template(r).prompt(*((p,) if isinstance(p, str) else p))
                for p, r in zip(prompts, rows, strict=True)
            ]
            with self._routed(rows) as extra:
                return generate(self.model, self.tokenizer, texts, settings, **extra)

    def logits(self, texts: str | list[str], *, adapters: list[str | None] | None = None) -> torch.Tensor:
        """Next-token logits ``[batch, length, vocab]`` of raw texts (left-padded), for tests and debugging."""
        import torch

        texts = [texts] if isinstance(texts, str) else texts
        with self.lock, self._routed(self._rows(len(texts), adapters)) as extra, torch.inference_mode():
            batch = self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
            return self.model(**batch.to(self.model.device), **extra).logits

    def merge(self, name: str, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``name`` merged into a freshly loaded base, as a plain model folder (see ``merge_adapter``).

        The base is reloaded rather than merged in place, so this set stays usable and an 8-bit or half-precision
        base in memory does not degrade the merged weights.

        Args:
            name (`str`): a loaded adapter (a ``combine`` result too).
            out_dir (`str` or `Path`): the model folder to create.
            overwrite (`bool`, defaults to `False`): replace an existing ``out_dir``.
        """
        with self.lock:
            info = self._info[self._known(name)]
        kwargs = dict(base=self.base_name or info.provenance.get("base_model"), overwrite=overwrite, name=name)
        kwargs.update(force=self.force, allow_pickle=self.allow_pickle, template=self._template(name).name)
        from peft_gpt2.merge import merge_adapter

        if info.path is not None:
            return merge_adapter(info.path, out_dir, **kwargs)
        with tempfile.TemporaryDirectory() as tmp:  # a combine result lives only in memory: save it first
            with self.lock:
                self.model.save_pretrained(tmp, selected_adapters=[name])
            (Path(tmp) / name / PROVENANCE).write_text(json.dumps(info.provenance), encoding="utf-8")
            return merge_adapter(Path(tmp) / name, out_dir, source="AdapterSet.combine", **kwargs)
