"""Adapters loaded and unloaded while the server runs: vLLM's ``/v1/load_lora_adapter`` and ``/unload_lora_adapter``.

Off unless the server names the folders adapters may be loaded from (``adapter_dirs``): a client names a path on the
server's disk, so a path is resolved (symlinks followed) and must lie inside one of them. A loaded adapter passes the
same checks as one named at start-up (``AdapterSet.add``: adapter kind, safetensors only, base fingerprint). At most
``max_loras`` adapters loaded at run time stay loaded: loading one more unloads the least recently used first, as
vLLM's ``max_loras`` and LoRAX's active-adapter limit do (adapters named at start-up are pinned). Unloading goes
through the engine (``Scheduler.retire``): queued requests for the adapter get 404, running ones finish, and its
weights are freed when its last row ends, so no request sees a vanished or half-loaded adapter.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.adapters.folder import check_name
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.serving.adapter_ref import AdapterRef
from peft_gpt2.serving.api_errors import ApiError
from peft_gpt2.serving.metrics import NO_METRICS

if TYPE_CHECKING:
    from peft_gpt2.adapters.adapter_set import AdapterSet
    from peft_gpt2.serving.metrics import ServerMetrics
    from peft_gpt2.serving.scheduler import Scheduler


class RuntimeAdapters:
    """Loads and unloads adapters for the server; remembers which were loaded at run time, least recently used first."""

    def __init__(
        self,
        adapter_set: AdapterSet,
        engine: Scheduler,
        roots: list[Path],
        max_loras: int,
        base_name: str,
        metrics: ServerMetrics = NO_METRICS,
    ) -> None:
        self.set, self.engine, self.max_loras, self.base_name = adapter_set, engine, max_loras, base_name
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.metrics = metrics
        self._busy = asyncio.Lock()  # one load or unload at a time

    @property
    def enabled(self) -> bool:
        return bool(self.roots)

    @property
    def names(self) -> list[str]:
        """The models served: the base's name, then each adapter's (not those being unloaded)."""
        return [self.base_name, *(n for n in self.set.names if n not in self.engine.retiring)]

    def resolve(self, model: str) -> AdapterRef:
        """The adapter a request's ``model`` names, once per request; 404 for a name not served (a name, never a
        path). Notes the use: the least recently used adapter is unloaded first."""
        if model not in self.names:
            message = f"model {model!r} not found; available: {', '.join(self.names)}"
            raise ApiError(404, message, "model", "model_not_found")
        if model in self.loaded:
            self.loaded.move_to_end(model)
        return AdapterRef.of(self.set, None if model == self.base_name else model)

    def allowed(self, path: str) -> Path:
        """``path`` resolved, if inside an allowed folder; else a 400 that does not say what exists on disk."""
        try:
            resolved = Path(path).expanduser().resolve()
        except (ValueError, OSError, RuntimeError):  # a NUL byte, a name too long, a symlink loop
            resolved = None
        if resolved is None or not any(resolved.is_relative_to(root) for root in self.roots):
            message = f"lora_path {path!r} is outside the folders this server loads adapters from"
            raise ApiError(400, message, "lora_path", "path_not_allowed")
        return resolved

    async def load(self, name: str, path: str) -> None:
        self._check_enabled()
        try:
            check_name(name)
        except PeftGpt2Error as err:
            raise ApiError(400, str(err), "lora_name") from None
        resolved = self.allowed(path)
        async with self._busy:
            if name in self.engine.retiring:
                raise ApiError(409, f"adapter {name!r} is still being unloaded; retry shortly", "lora_name")
            if name in self.set.names or name == self.base_name:
                raise ApiError(400, f"an adapter named {name!r} is already loaded", "lora_name")
            while len(self.loaded) >= self.max_loras:
                evicted, _ = self.loaded.popitem(last=False)
                self.engine.retire(evicted)
                self.metrics.adapter_event("evict")
            try:  # in a thread: reading weights must not stall the event loop; the engine pauses between steps
                await asyncio.to_thread(self.set.add, name, resolved)
            except PeftGpt2Error as err:
                raise ApiError(400, f"cannot load {path!r}: {err}", "lora_path") from None
            self.loaded[name] = None
            self.metrics.adapter_event("load")

    async def unload(self, name: str) -> None:
        self._check_enabled()
        async with self._busy:
            if name not in self.set.names or name in self.engine.retiring:
                raise ApiError(404, f"no adapter named {name!r} is loaded", "lora_name", "model_not_found")
            self.loaded.pop(name, None)
            self.engine.retire(name)
            self.metrics.adapter_event("unload")

    def _check_enabled(self) -> None:
        if not self.enabled:
            message = "loading adapters at run time is off; start the server with --adapter-dir DIR to allow it"
            raise ApiError(404, message, code="not_found")
