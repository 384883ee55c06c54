"""What a client asked (``Request``, immutable once the routes checked it) and the engine's state for it (``Job``).

Kept apart so that what the engine may change is one small class: a ``Request`` passes through routes, scheduler
and runners unchanged, and everything the engine learns on the way (the prompts' token ids, the first token's
time, each row's answer) lives on the ``Job`` that carries it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peft_gpt2.inference.generation import Completion
    from peft_gpt2.inference.settings import GenerationSettings
    from peft_gpt2.serving.adapter_ref import AdapterRef


@dataclass(frozen=True)
class Request:
    """One request as checked by the routes: its prompts (texts, or token ids: step mode only, as are ``logprobs``
    and ``echo``), the adapter it was resolved to, how to decode, and the limits it runs under."""

    prompts: tuple[str, ...] | tuple[tuple[int, ...], ...]
    adapter: AdapterRef  # resolved once, at admission
    settings: GenerationSettings
    limit: int  # prompt tokens allowed
    model: str = ""  # the name the client asked for, for metrics
    logprobs: int | None = None  # top log-probabilities per token
    echo: bool = False  # answer with the prompt (and its log-probabilities) first
    score_only: bool = False  # echo with max_tokens 0: the prompt's log-probabilities, nothing generated

    @property
    def text(self) -> bool:
        """Whether the prompts are texts (else token ids)."""
        return bool(self.prompts) and isinstance(self.prompts[0], str)


@dataclass(eq=False)
class Job:
    """The engine's state for one ``request``: the future its handler awaits (one ``Completion`` per prompt), and
    what the engine learns as it runs.

    A streaming handler passes ``on_text(index, text)``, called from the engine's thread with each row's new text
    (the rest, and the finish reason, come with the result), and sets ``cancelled`` when its client goes away.
    """

    request: Request
    on_text: Callable[[int, str], None] | None = None
    future: concurrent.futures.Future[list[Completion]] = field(default_factory=concurrent.futures.Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    prompt_tokens: int = 0
    ids: list[list[int]] = field(default_factory=list)  # the prompts' token ids, once checked
    results: list[Completion | None] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.request.prompts)
