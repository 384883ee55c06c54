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

from peft_gpt2.serving.api_errors import ApiError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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


def check_prompts(job: Job, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``job``'s prompts (token ids as sent, or tokenized here) fit its limit; sets ``job.ids`` and
    ``job.prompt_tokens``. If not, or if the tokenizer refuses them, the job fails alone (its future gets a 400):
    the jobs it was batched with still run."""
    request = job.request
    try:
        ids = tokenizer(list(request.prompts))["input_ids"] if request.text else request.prompts
    except Exception as err:  # its text, not the batch, is at fault
        message = f"the tokenizer cannot take this prompt: {type(err).__name__}: {err}"
        job.future.set_exception(ApiError(400, message, param="prompt"))
        return False
    lengths = [len(i) for i in ids]
    job.prompt_tokens, job.ids, limit = sum(lengths), [list(i) for i in ids], request.limit
    if min(lengths) == 0:
        job.future.set_exception(ApiError(400, "empty prompt", param="prompt"))
    elif max(lengths) > limit:
        message = f"a prompt of {max(lengths)} tokens is over this server's limit of {limit} prompt tokens"
        job.future.set_exception(ApiError(400, message, param="prompt", code="context_length_exceeded"))
    return 0 < min(lengths) <= max(lengths) <= limit
