"""``AdapterSet``: one base model in memory with many named adapters, chosen per call or per row.

    m = AdapterSet.from_paths(None, {"alpaca": "adapters/alpaca-lora", "sherlock": "adapters/sherlock-lm"})
    m.generate(["Name three primary colors."] * 3, adapters=["alpaca", "sherlock", None])  # None: the base
    with m.using("alpaca"):                                   # any call inside, direct model calls too
        logits = m.model(**m.tokenizer(["Hello"], return_tensors="pt")).logits

Folder checks (kind, safetensors, base fingerprint) are ``adapters.folder``'s; this module is the runtime.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.adapters.folder import attach, base_of, check_name, folder_kind
from peft_gpt2.adapters.merge import merge_adapter
from peft_gpt2.data.templates import TEMPLATES, Template, get_template
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.inference.generation import Completion, generate
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.models.methods import check_one_method, drop_routing_hooks, mixes_rows
from peft_gpt2.run_folder import Provenance

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class AdapterInfo:
    """Where a loaded adapter came from: its folder (``None`` for a ``combine`` result) and provenance."""

    path: Path | None
    provenance: Provenance


class AdapterSet:
    """One base model in memory with many named adapters, chosen per call.

    Switching is ``set_adapter`` (no reload), a mixed batch routes each row to its own adapter, and rows for the
    base run with adapters disabled, so no adapter leaks into another's output. Adapters load frozen, model in eval.

    Thread safety: ``generate``, ``using`` and every method that changes the set take ``lock`` (a re-entrant
    ``threading.RLock``), so a server may share one instance across threads. ``use`` changes the default for every
    caller; a server should pass ``adapters=`` per call instead.

    Args:
        model (`PreTrainedModel`): the base; adapters are injected into it in place.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer, with a pad token.
        adapters (`dict[str, str | Path]`, *optional*): ``{name: folder}``, loaded in order; the first is active.
        template (`str`, *optional*): prompt template for every row; default: each adapter's recorded one.
        base_name (`str`, *optional*): what ``models.loading.load_base`` loads for ``merge``; default: the
            adapter's record.
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
        if template is not None:
            get_template(template)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.template, self.base_name, self.force, self.allow_pickle = template, base_name, force, allow_pickle
        self.lock = threading.RLock()
        self._info: dict[str, AdapterInfo] = {}
        self._active: str | None = None
        self._scope: list[str | None] = []  # the adapter of each open ``using`` block, innermost last
        for name, path in (adapters or {}).items():
            self.add(name, path)
        self._active = next(iter(self._info), None)

    @classmethod
    def from_paths(cls, base_name: str | None, adapters: dict[str, str | Path], **kwargs) -> AdapterSet:
        """Check every folder, then load the base (default: the one the first adapter records) and the adapters.

        ``dtype``, ``quantization`` and ``load_in_8bit`` go to ``models.loading.load_base``; others to ``AdapterSet``.
        """
        from peft_gpt2.models.loading import load_base

        for name, path in adapters.items():  # fail before the (slow) base load
            check_name(name)
            if folder_kind(path, allow_pickle=kwargs.get("allow_pickle", False)) != "adapter":
                raise PeftGpt2Error(f"{path} is a full model folder, not an adapter; load it as the model instead")
        check_one_method(adapters)
        if base_name is None:
            if not adapters:
                raise PeftGpt2Error("no base model and no adapters: pass a model, an adapter, or both")
            base_name = base_of(next(iter(adapters.values())))
        load = {k: kwargs.pop(k) for k in ("dtype", "quantization", "load_in_8bit") if k in kwargs}
        model, tokenizer = load_base(base_name, **load)
        return cls(model, tokenizer, adapters, base_name=base_name, **kwargs)

    @property
    def names(self) -> list[str]:
        """Loaded adapter names, in load order."""
        return list(self._info)

    @property
    def active(self) -> str | None:
        """The adapter used when a call names none (inside ``using``: that block's); ``None``: the bare base."""
        return self._scope[-1] if self._scope else self._active

    @property
    def info(self) -> dict[str, AdapterInfo]:
        """``{name: AdapterInfo}`` (a copy), e.g. for a server's adapter listing."""
        return dict(self._info)

    def _known(self, name: str) -> str:
        if name not in self._info:
            raise PeftGpt2Error(f"no adapter named {name!r}; loaded: {', '.join(self._info) or 'none'}")
        return name

    def _changing(self) -> None:
        if self._scope:
            raise PeftGpt2Error("cannot change adapters inside using() or base_only()")

    def add(self, name: str, path: str | Path) -> None:
        """Load the adapter at ``path`` as ``name`` (checked by ``attach``: kind, safetensors, base); not activated."""
        with self.lock:
            self._changing()
            if check_name(name) in self._info:
                raise PeftGpt2Error(f"an adapter named {name!r} is already loaded")
            check_one_method({**{n: i.path for n, i in self._info.items() if i.path}, name: path})
            try:
                self.model = attach(self.model, path, name, force=self.force, allow_pickle=self.allow_pickle)
            except Exception:  # e.g. unreadable weights, found after PEFT added the adapter
                if self._info and name in self.model.peft_config:  # a half-loaded adapter must not linger
                    self.model.delete_adapter(name)
                    self._refreeze()
                raise
            self.model.eval()
            self._info[name] = AdapterInfo(Path(path), Provenance.read(path))

    def _mixable(self, rows: list[str | None]) -> bool:
        """Whether PEFT can run ``rows`` as one batch, each row through its own adapter (``methods.mixes_rows``)."""
        return all(mixes_rows(self.model.peft_config[r]) for r in rows if r is not None)

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
    def using(self, name: str | None) -> Iterator[None]:
        """Route every call inside the block through adapter ``name`` (``None``: the bare base), direct
        ``self.model(...)`` and ``self.model.generate(...)`` calls included; holds ``lock`` throughout."""
        with self.lock:
            if name is not None:
                self._known(name)
            with self.routed([name]):
                self._scope.append(name)
                try:
                    yield
                finally:
                    self._scope.pop()

    def base_only(self) -> contextlib.AbstractContextManager[None]:
        """``using(None)``: adapters disabled inside the block."""
        return self.using(None)

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
            provenance = self._info[next(iter(weights))].provenance.combination(name, weights, kind)
            self._info[name] = AdapterInfo(None, provenance)
            return kind

    def template_for(self, name: str | None) -> Template:
        """The prompt template rows for adapter ``name`` are rendered with (``None``: the base, which takes the
        first adapter's): the set's ``template`` if given, else the adapter's recorded one."""
        if self.template:
            return TEMPLATES[self.template]
        sources = [self._info[name]] if name else list(self._info.values())
        recorded = (i.provenance.template for i in sources)
        return get_template(next((t for t in recorded if t in TEMPLATES), Provenance().template))

    @contextmanager
    def routed(self, rows: list[str | None]) -> Iterator[dict]:
        """Set the model up for ``rows`` (one adapter name or ``None`` each); yield the extra forward kwargs."""
        if self._scope:
            if any(row != self._scope[-1] for row in rows):
                raise PeftGpt2Error(f"inside using({self._scope[-1]!r}) every row runs through that one")
            yield {}
        elif not self._info:
            yield {}
        elif len(set(rows)) > 1:  # PEFT's mixed batch: each row through its own adapter, "__base__" for none
            try:
                yield {"adapter_names": [row or "__base__" for row in rows]}
            except BaseException:
                drop_routing_hooks(self.model)
                raise
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
    ) -> list[Completion]:
        """Answer instructions, each rendered through its adapter's template.

        Args:
            prompts (`list[str | tuple[str, str]]`): instructions, or ``(instruction, input)`` pairs.
            adapters (`list[str | None]`, *optional*): one adapter per prompt (``None``: the base), run as one
                mixed batch where PEFT can route rows (LoRA), else one batch per adapter; default: ``active``.
            settings (`GenerationSettings`, *optional*): decoding; greedy by default.
            raw (`bool`, defaults to `False`): use ``prompts`` as-is, without the template.

        Returns:
            `list[Completion]`: per prompt, the answer's ``text``, its generated ``tokens`` and ``finish_reason``.
        """
        with self.lock:
            rows = self._rows(len(prompts), adapters)
            texts = [
                p if raw else self.template_for(r).prompt(*((p,) if isinstance(p, str) else p))
                for p, r in zip(prompts, rows, strict=True)
            ]
            together, order = self._mixable(rows) or self._scope, dict.fromkeys(rows)  # else a batch per adapter
            groups = [range(len(rows))] if together else [[i for i, r in enumerate(rows) if r == n] for n in order]
            done: list[Completion] = [None] * len(rows)  # type: ignore[list-item]
            for idx in groups:
                with self.routed([rows[i] for i in idx]) as extra:
                    answers = generate(self.model, self.tokenizer, [texts[i] for i in idx], settings, **extra)
                for i, answer in zip(idx, answers, strict=True):
                    done[i] = answer
            return done

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
        kwargs = dict(base=self.base_name or info.provenance.base_model, overwrite=overwrite, name=name)
        kwargs.update(force=self.force, allow_pickle=self.allow_pickle, template=self.template_for(name).name)
        if info.path is not None:
            return merge_adapter(info.path, out_dir, **kwargs)
        with tempfile.TemporaryDirectory() as tmp:  # a combine result lives only in memory: save it first
            with self.lock:
                self.model.save_pretrained(tmp, selected_adapters=[name])
            info.provenance.write(Path(tmp) / name)
            return merge_adapter(Path(tmp) / name, out_dir, source="AdapterSet.combine", **kwargs)
