"""Answers in OpenAI's shapes: completion and chat bodies, their streamed chunks, and log-probabilities.

Kept apart from the routes so the wire format is read in one place. Log-probabilities are the model's raw
log-softmax (before temperature or top-p), as vLLM returns by default; a token is shown as its own decoded text,
so two tokens that each decode to part of one character both show U+FFFD.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from peft_gpt2.inference.generation import Completion, TokenLogprob


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def head(answer_id: str, kind: str, model: str, chunk: bool = False) -> dict:
    """The fields every body and chunk starts with."""
    objects = {"chat": "chat.completion", "text": "text_completion"}
    name = objects[kind] + (".chunk" if chunk and kind == "chat" else "")
    return {"id": answer_id, "object": name, "created": int(time.time()), "model": model}


def usage(prompt_tokens: int, done: list[Completion]) -> dict:
    tokens = sum(c.tokens for c in done)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}


def completion_logprobs(entries: tuple[TokenLogprob, ...], tokenizer: PreTrainedTokenizerBase) -> dict:
    """``/v1/completions``' legacy shape: tokens, their log-probabilities, the top ones, character offsets."""
    tokens = [tokenizer.decode([t]) for t, _, _ in entries]
    offsets, at = [], 0
    for text in tokens:
        offsets.append(at)
        at += len(text)
    top = [None if lp is None else {tokenizer.decode([t]): v for t, v in best} for _, lp, best in entries]
    logprobs = [lp for _, lp, _ in entries]
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets}


def chat_logprobs(entries: tuple[TokenLogprob, ...], tokenizer: PreTrainedTokenizerBase) -> dict:
    """``/v1/chat/completions``' shape: one object per generated token, with its UTF-8 bytes."""

    def item(token: int, logprob: float) -> dict:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**item(t, lp), "top_logprobs": [item(i, v) for i, v in best]} for t, lp, best in entries]}


def completion_body(answer_id: str, model: str, done: list[Completion], prompt_tokens: int, extra: dict) -> dict:
    """``extra``: per choice, ``{"text": ..., "logprobs": ...}`` overrides (echoed prompts, log-probabilities)."""
    choices = [
        {"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason, **extra.get(i, {})}
        for i, c in enumerate(done)
    ]
    return {**head(answer_id, "text", model), "choices": choices, "usage": usage(prompt_tokens, done)}


def chat_body(answer_id: str, model: str, done: Completion, prompt_tokens: int, logprobs: dict | None) -> dict:
    message = {"role": "assistant", "content": done.text}
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": done.finish_reason}
    return {**head(answer_id, "chat", model), "choices": [choice], "usage": usage(prompt_tokens, [done])}


def chunk(answer_id: str, kind: str, model: str, index: int, text: str | None, finish: str | None = None) -> str:
    """One server-sent event carrying ``text`` for choice ``index`` (chat: ``None`` opens with the role)."""
    if kind == "chat":
        delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
    return event({**head(answer_id, kind, model, chunk=True), "choices": [choice]})


def usage_chunk(answer_id: str, kind: str, model: str, prompt_tokens: int, done: list[Completion]) -> str:
    """The last chunk when the client asked for ``stream_options.include_usage``: no choices, the usage."""
    return event({**head(answer_id, kind, model, chunk=True), "choices": [], "usage": usage(prompt_tokens, done)})


def event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"
