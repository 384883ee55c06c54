"""A request's adapter, resolved once when the request is admitted (vLLM's ``LoRARequest``): its name and what the
engine needs to know about it, so the engine never looks the adapter up again.

Made by ``RuntimeAdapters.resolve`` from the ``model`` a client named, and carried by the request through the
engine. Looked up once, it cannot change under a request: an adapter unloaded meanwhile is refused by name
(``Scheduler``), never answered by another adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peft_gpt2.models.methods import mixes_rows

if TYPE_CHECKING:
    from peft_gpt2.adapters.adapter_set import AdapterSet


@dataclass(frozen=True)
class AdapterRef:
    """An adapter (``name``; ``None``: the bare base) and how its rows run.

    ``mixes_rows``: PEFT routes its rows per row (LoRA), so they share a step with other adapters' rows; else
    (IA3, VeRA, DoRA) they step in batches of this adapter alone. ``whole``: prompt learning (prefix, prompt
    tuning), whose virtual tokens ``generate`` manages: its requests are generated whole, one at a time.
    """

    name: str | None = None
    mixes_rows: bool = True
    whole: bool = False

    @property
    def group(self) -> str | None:
        """Rows that may share a step have equal groups: ``None`` for the base and per-row-routable adapters,
        else the adapter's own name."""
        return None if self.mixes_rows else self.name

    @classmethod
    def of(cls, adapter_set: AdapterSet, name: str | None) -> AdapterRef:
        """The reference to adapter ``name`` of ``adapter_set`` (``None``: the base), read from its PEFT config. A
        name unloaded meanwhile still gets one: the engine refuses its request by name."""
        config = getattr(adapter_set.model, "peft_config", {}).get(name) if name is not None else None
        if config is None:
            return cls(name)
        return cls(name, mixes_rows(config), bool(config.is_prompt_learning))
