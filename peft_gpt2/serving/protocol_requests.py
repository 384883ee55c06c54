"""The bodies of ``/v1/completions`` and ``/v1/chat/completions``, checked field by field before anything is queued.

Kept apart from the routes so the request's bounds are read in one place. Every value a client sends is bounded
here, or by ``routes.Served.request`` and ``jobs.check_prompts`` (the server's own limits: tokens, prompt length,
queue): a value that reached the model unchecked
(a seed past 64 bits, a lone surrogate, a long stop list) failed as a 500, or stalled every other request.
Types are strict, as in OpenAI's API: a boolean, a string or a fraction is not an integer, a boolean not a number.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from peft_gpt2.inference.settings import MAX_SEED, MIN_TEMPERATURE

MAX_STOP = 4  # stop strings per request, as OpenAI
MAX_STOP_CHARS = 64  # per stop string: generation decodes its UTF-8 bytes (+1) newest tokens of each row per step
MAX_LOGPROBS = 20  # top log-probabilities per token, as vLLM (OpenAI: 5 for completions, 20 for chat)
UNSUPPORTED = (
    "n", "best_of", "suffix", "presence_penalty", "frequency_penalty", "tools", "response_format", "logit_bias",
)
# Pydantic error types of a well-typed value out of range (ge=, le=, max_length=, not finite, not text) or refused
# by a validator below: answered 400, as OpenAI does. Other errors (not JSON, a missing field, a wrong type) are 422.
VALUE_ERRORS = {
    "greater_than_equal",
    "less_than_equal",
    "string_too_short",
    "string_too_long",
    "too_long",
    "finite_number",
    "string_unicode",
    "invalid_value",
}


def _shown(value: object, most: int = 60) -> str:
    """``repr(value)``, cut short: an error message never echoes a megabyte back."""
    text = repr(value)
    return text if len(text) <= most else f"{text[: most - 3]}..."


def _text(value: object) -> object:
    """Refuse a lone surrogate (JSON's ``"\\ud800"``, which Python's parser accepts): no tokenizer takes it."""
    if isinstance(value, str):
        at = next((i for i, c in enumerate(value) if "\ud800" <= c <= "\udfff"), None)
        if at is not None:
            context = {"at": at, "char": _shown(value[at])}
            raise PydanticCustomError("invalid_value", "not text: a lone surrogate {char} at character {at}", context)
    return value


Text = Annotated[str, BeforeValidator(_text)]
Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS), BeforeValidator(_text)]


TokenId = Annotated[int, Field(ge=0)]


def _prompt_kind(value: object) -> str:
    """Which shape a (listed) prompt has, so a bad one is refused for that shape alone, naming its field."""
    return "ids" if isinstance(value, list) and value and isinstance(value[0], list) else "text"


Prompt = Annotated[
    Annotated[list[Text], Tag("text")] | Annotated[list[list[TokenId]], Tag("ids")], Discriminator(_prompt_kind)
]


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


class Sampling(BaseModel):
    """What both endpoints share. Fields in ``UNSUPPORTED`` may only hold their defaults (or null); null elsewhere
    means the default. Limits set by the server (largest ``max_tokens``, prompts per request) are its own."""

    model_config = ConfigDict(strict=True)

    model: Text
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, ge=0, le=1, allow_inf_nan=False)
    stop: list[Stop] = Field([], max_length=MAX_STOP)  # or one string, or null
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict | None = None

    @field_validator("temperature", "top_p", "stream", "max_tokens", "echo", mode="before", check_fields=False)
    @classmethod
    def _null_means_default(cls, value, info: ValidationInfo):
        return cls.model_fields[info.field_name].default if value is None else value

    @field_validator(*UNSUPPORTED, check_fields=False)
    @classmethod
    def _default_only(cls, value, info: ValidationInfo):
        if value not in (None, {}, []) and value != cls.model_fields[info.field_name].default:
            hint = " (one completion per prompt only)" if info.field_name in ("n", "best_of") else ""
            context = {"value": _shown(value), "hint": hint}
            raise PydanticCustomError("invalid_value", "{value} is not supported{hint}", context)
        return value

    @field_validator("top_p")
    @classmethod
    def _top_p_samples(cls, value: float, info: ValidationInfo) -> float:
        if value == 0 and info.data.get("temperature", 0) >= MIN_TEMPERATURE:
            raise PydanticCustomError("invalid_value", f"must be > 0 when sampling (temperature >= {MIN_TEMPERATURE})")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _one_or_none(cls, value):
        return [value] if isinstance(value, str) else [] if value is None else value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(Sampling):
    """OpenAI's ``/v1/completions`` body: ``prompt`` is text or token ids, one or a list; ``echo`` with
    ``max_tokens: 0`` scores the prompt alone, as evaluation harnesses do."""

    prompt: Prompt  # or one string, or one list of token ids
    echo: bool = False
    max_tokens: int = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    template: bool = False
    best_of: int | None = 1
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        one = isinstance(value, str) or (isinstance(value, list) and bool(value) and isinstance(value[0], int))
        return [value] if one else value

    @field_validator("max_tokens")
    @classmethod
    def _tokens_to_generate(cls, value: int, info: ValidationInfo) -> int:
        if value == 0 and not info.data.get("echo"):
            raise PydanticCustomError("invalid_value", "0 only with echo (to score the prompt); send at least 1")
        return value


class ChatRequest(Sampling):
    """OpenAI's ``/v1/chat/completions`` body; ``messages`` are checked by ``chat_prompts.check_messages``."""

    messages: list[dict] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name; wins over max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list | None = None
    response_format: dict | None = None

    @property
    def tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 16
