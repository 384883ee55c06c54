"""The server's endpoints: OpenAI's completions and chat (whole or streamed), models, health, metrics, and vLLM's
runtime adapter loading. ``Served`` turns a checked body into a ``jobs.Request`` (what the client asked, its adapter
resolved once) and runs it as an engine ``Job``; ``protocol_responses`` shapes answers.

Streaming: the handler waits for the first text (or an error, answered as a plain 4xx/5xx, since no byte was
sent yet), then sends server-sent events; when the client goes away the job is cancelled and its row leaves the
batch at the next step. The streamed text always adds up to the non-streamed answer: the rest is sent with the
result, whatever the engine streamed before (batch and lock modes stream nothing before it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi import Request as HttpRequest
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.adapters.chat_prompts import chat_prompt, check_messages
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.inference.generation import Completion
from peft_gpt2.inference.settings import MIN_TEMPERATURE, GenerationSettings
from peft_gpt2.serving import protocol_responses as wire
from peft_gpt2.serving.adapter_ref import AdapterRef
from peft_gpt2.serving.api_errors import ApiError
from peft_gpt2.serving.jobs import Job, Request
from peft_gpt2.serving.metrics import ServerMetrics
from peft_gpt2.serving.protocol_requests import ChatRequest, CompletionRequest, Sampling, Text
from peft_gpt2.serving.runtime_adapters import RuntimeAdapters
from peft_gpt2.serving.scheduler import Scheduler


@dataclass
class Served:
    """What the routes need besides the body: the adapters, the engine and the server's limits."""

    adapter_set: AdapterSet
    engine: Scheduler
    runtime: RuntimeAdapters
    metrics: ServerMetrics
    base_name: str
    max_batch: int
    max_tokens: int  # largest max_tokens accepted
    max_prompt_tokens: int | None
    positions: int
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def names(self) -> list[str]:
        return self.runtime.names

    def request(
        self, body: Sampling, adapter: AdapterRef, prompts: list, max_tokens: int, stop: list[str], **kw
    ) -> Request:
        """What the client asked, checked; greedy below ``MIN_TEMPERATURE`` (sampling there overflows into NaN), as
        vLLM."""
        if max_tokens > self.max_tokens:
            raise ApiError(400, f"max_tokens={max_tokens} must be between 1 and {self.max_tokens}", "max_tokens")
        if not 1 <= len(prompts) <= self.max_batch:
            raise ApiError(400, f"send 1 to {self.max_batch} prompts per request, not {len(prompts)}", "prompt")
        sample = body.temperature >= MIN_TEMPERATURE
        sampling = dict(temperature=body.temperature, top_p=body.top_p, seed=body.seed) if sample else {}
        stop_ids = kw.pop("stop_token_ids", [])
        settings = GenerationSettings(
            max_new_tokens=max(max_tokens, 1), do_sample=sample, top_k=0, stop=stop, stop_token_ids=stop_ids, **sampling
        )
        limit = min(self.max_prompt_tokens or self.positions, self.positions - max(max_tokens, 1))
        prompts = tuple(p if isinstance(p, str) else tuple(p) for p in prompts)
        return Request(prompts, adapter, settings, limit, model=body.model, score_only=max_tokens == 0, **kw)

    def completion_request(self, body: CompletionRequest) -> Request:
        prompts, stop = body.prompt, body.stop
        fancy = body.echo or body.logprobs is not None or (prompts and not isinstance(prompts[0], str))
        if fancy and self.engine.mode != "step":
            raise ApiError(400, "echo, logprobs and token-id prompts need the server's default mode, step", "prompt")
        adapter = self.runtime.resolve(body.model)
        if fancy and adapter.whole:
            message = f"{body.model!r} is a prompt-learning adapter, generated whole: no echo, logprobs or token ids"
            raise ApiError(400, message, "model")
        if prompts and not isinstance(prompts[0], str):
            vocab = self.adapter_set.model.get_input_embeddings().num_embeddings
            if any(t >= vocab for ids in prompts for t in ids):
                raise ApiError(400, f"a token id is outside the model's vocabulary of {vocab}", "prompt")
        elif body.template:
            template = self.adapter_set.template_for(adapter.name)
            prompts, stop = [template.prompt(p) for p in prompts], stop or list(template.stop)
        return self.request(body, adapter, prompts, body.max_tokens, stop, echo=body.echo, logprobs=body.logprobs)

    def chat_request(self, body: ChatRequest) -> Request:
        adapter = self.runtime.resolve(body.model)
        try:
            rendered = chat_prompt(self.adapter_set, adapter.name, check_messages(body.messages))
        except PeftGpt2Error as err:
            raise ApiError(400, str(err), "messages") from None
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        if logprobs is not None and self.engine.mode != "step":
            raise ApiError(400, "logprobs need the server's default mode, step", "logprobs")
        stop = [*body.stop, *(s for s in rendered.stop if s not in body.stop)]
        ends = rendered.stop_token_ids
        return self.request(body, adapter, [rendered.text], body.tokens, stop, stop_token_ids=ends, logprobs=logprobs)

    async def run(self, job: Job) -> list[Completion]:
        """Submit ``job`` and wait for its answer; a request abandoned meanwhile cancels its job."""
        try:
            self.engine.submit(job)
            return await asyncio.wrap_future(job.future)
        except (ApiError, asyncio.CancelledError):
            raise
        except PeftGpt2Error as err:
            raise ApiError(400, str(err)) from None
        except Exception as err:
            raise ApiError(500, f"generation failed: {type(err).__name__}: {err}", kind="server_error") from err
        finally:
            if not job.future.done():
                job.cancelled.set()
            elif job.first_token_at is not None and not job.future.cancelled() and job.future.exception() is None:
                done = job.future.result()
                seconds = time.monotonic() - job.first_token_at
                self.metrics.finished(job.request.model, job.prompt_tokens, sum(c.tokens for c in done), seconds)


def served(request: HttpRequest) -> Served:
    request.state.model = "unknown"
    return request.app.state.served


Server = Annotated[Served, Depends(served)]
router = APIRouter()


@router.get("/health")
async def health(s: Server) -> dict:
    return {"status": "ok", "base": s.base_name, "adapters": s.names[1:], "mode": s.engine.mode}


@router.get("/v1/models")
async def models(s: Server) -> dict:
    cards = [{"id": n, "object": "model", "created": s.created, "owned_by": "peft-gpt2"} for n in s.names]
    return {"object": "list", "data": cards}


@router.get("/metrics")
async def metrics(s: Server) -> Response:
    body, content_type = s.metrics.render()
    return Response(body, media_type=content_type)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, s: Server, http: HttpRequest):
    http.state.model = body.model if body.model in s.names else "unknown"
    request = s.completion_request(body)
    if body.stream:
        return await _stream(s, request, "text", body)
    job = Job(request)
    done = await s.run(job)
    scored = body.echo or body.logprobs is not None
    extra = {i: _echoed(s, job, i, c, body) for i, c in enumerate(done)} if scored else {}
    return wire.completion_body(wire.new_id("text"), body.model, done, job.prompt_tokens, extra)


def _echoed(s: Served, job: Job, index: int, done: Completion, body: CompletionRequest) -> dict:
    tokenizer = s.adapter_set.tokenizer
    prompt = job.request.prompts[index] if job.request.text else tokenizer.decode(job.ids[index])
    entries = done.logprobs if body.echo else done.logprobs[len(job.ids[index]) :] if done.logprobs else ()
    out = {"text": prompt + done.text} if body.echo else {}
    return out | ({"logprobs": wire.completion_logprobs(entries, tokenizer)} if body.logprobs is not None else {})


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, s: Server, http: HttpRequest):
    http.state.model = body.model if body.model in s.names else "unknown"
    request = s.chat_request(body)
    if body.stream:
        return await _stream(s, request, "chat", body)
    job = Job(request)
    done = (await s.run(job))[0]
    logprobs = wire.chat_logprobs(done.logprobs, s.adapter_set.tokenizer) if body.logprobs else None
    return wire.chat_body(wire.new_id("chat"), body.model, done, job.prompt_tokens, logprobs)


async def _stream(s: Served, request: Request, kind: str, body: Sampling) -> StreamingResponse:
    """Wait for the first text or the answer (errors are raised from here, before any byte is sent); then stream."""
    texts: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    job = Job(request, on_text=lambda index, text: loop.call_soon_threadsafe(texts.put_nowait, (index, text)))
    answer = asyncio.ensure_future(s.run(job))
    first = asyncio.ensure_future(texts.get())
    await asyncio.wait([answer, first], return_when=asyncio.FIRST_COMPLETED)
    if answer.done() and answer.exception() is not None:
        first.cancel()
        raise answer.exception()
    return StreamingResponse(_events(s, job, kind, body, answer, first, texts), media_type="text/event-stream")


async def _events(s: Served, job: Job, kind: str, body: Sampling, answer, first, texts) -> AsyncIterator[str]:
    answer_id, model, sent = wire.new_id(kind), body.model, [""] * job.rows
    try:
        if kind == "chat":
            yield wire.chunk(answer_id, kind, model, 0, None)
        pending = first
        while True:
            await asyncio.wait([answer, pending], return_when=asyncio.FIRST_COMPLETED)
            if not pending.done():
                break
            index, text = pending.result()
            sent[index] += text
            yield wire.chunk(answer_id, kind, model, index, text)
            pending = asyncio.ensure_future(texts.get())
        pending.cancel()
        while not texts.empty():  # sent by the engine before it answered
            index, text = texts.get_nowait()
            sent[index] += text
            yield wire.chunk(answer_id, kind, model, index, text)
        try:
            done = answer.result()
        except ApiError as err:  # too late for a status code: the error goes in the stream, as vLLM does
            yield wire.event(err.body())
            yield wire.DONE
            return
        for index, c in enumerate(done):  # the rest of each answer, with its finish reason
            yield wire.chunk(answer_id, kind, model, index, c.text[len(sent[index]) :], c.finish_reason)
        if body.include_usage:
            yield wire.usage_chunk(answer_id, kind, model, job.prompt_tokens, done)
        yield wire.DONE
    finally:
        job.cancelled.set()  # the client went away, or the answer is complete: either way nothing is left to run
        answer.cancel()


class LoadAdapter(BaseModel):
    model_config = ConfigDict(strict=True)

    lora_name: Text
    lora_path: Text


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(strict=True)

    lora_name: Text
    lora_int_id: int | None = None  # vLLM's; ignored


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoadAdapter, s: Server) -> Response:
    await s.runtime.load(body.lora_name, body.lora_path)
    return Response(f"Success: LoRA adapter '{body.lora_name}' added successfully.", media_type="text/plain")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadAdapter, s: Server) -> Response:
    await s.runtime.unload(body.lora_name)
    return Response(f"Success: LoRA adapter '{body.lora_name}' removed successfully.", media_type="text/plain")
