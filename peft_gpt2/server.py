r"""An OpenAI-compatible HTTP server: one base model, many LoRA adapters, chosen per request by ``model``.

    pip install 'peft-gpt2[serve]'
    python -c "from peft_gpt2.server import serve; serve(None, {'alpaca': 'adapters/alpaca-lora'})"
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{"model": "alpaca",
      "prompt": "### Instruction:\nName a color.\n\n### Response:\n", "max_tokens": 8, "temperature": 0}'

``/v1/completions`` is raw text completion, as in OpenAI's API: the prompt is used as sent, so the client renders
the adapter's template (or sends ``"template": true``, an extension: the prompt is then an instruction, rendered
through the adapter's template, and generation stops at the template's next section). ``temperature`` defaults to
1 (sampling) as in OpenAI; send 0 for greedy. Unlike OpenAI: one choice per prompt, no streaming, echo or logprobs;
texts are stripped and cut before the first stop string, and ``finish_reason`` is "length" when the text fills
``max_tokens`` tokens (counted by re-tokenizing it, as ``completion_tokens`` is).

Requests are batched: a worker thread groups queued requests that share decoding settings, whatever their adapters,
into one mixed-adapter ``AdapterSet.generate`` call, where each row runs through its own adapter only.
``mode="lock"`` runs each request alone instead. At most ``max_queue`` requests wait or run at once; more get 429.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import queue
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Literal

from peft_gpt2.adapter_set import AdapterSet
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.generation import GenerationSettings

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException
except ImportError as err:  # the CLI prints this instead of a traceback
    raise PeftGpt2Error(f"serving needs FastAPI and uvicorn: pip install 'peft-gpt2[serve]' ({err})") from None

UNSUPPORTED = ("n", "best_of", "echo", "stream", "logprobs", "suffix", "presence_penalty", "frequency_penalty")
LOAD_KWARGS = ("template", "force", "allow_pickle", "dtype", "load_in_8bit")


class CompletionRequest(BaseModel):
    """OpenAI's ``/v1/completions`` body. Fields in ``UNSUPPORTED`` may only hold their defaults (else 400)."""

    model: str
    prompt: str | list[str]
    max_tokens: int | None = 16
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    template: bool = False
    n: int | None = 1
    best_of: int | None = 1
    echo: bool | None = False
    stream: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0


@dataclass
class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    kind: str = "invalid_request_error"
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return self.message

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


def _shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", kind="server_error")


@dataclass(eq=False)
class _Job:
    """One request: its rows, and the future its handler awaits (texts and completion token counts)."""

    prompts: list[str]
    adapter: str | None
    settings: GenerationSettings
    key: tuple  # requests with equal keys may share a generate call
    limit: int  # prompt tokens allowed
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    prompt_tokens: int = 0


class _Engine:
    """Runs jobs on the adapter set: batched by one worker thread, or each alone; bounded by ``max_queue``."""

    def __init__(self, adapter_set: AdapterSet, mode: str, max_batch: int, wait_s: float, max_queue: int) -> None:
        self.set, self.mode, self.max_queue = adapter_set, mode, max_queue
        self.max_batch, self.wait_s = max_batch, wait_s
        self.slots = threading.BoundedSemaphore(max_queue)  # taken on admission, given back once answered
        self.queue: queue.Queue[_Job | None] = queue.Queue(max_queue)
        self.closed = False
        self.pool = concurrent.futures.ThreadPoolExecutor(1, "peft-gpt2-lock") if mode == "lock" else None
        if mode == "batch":
            threading.Thread(target=self._loop, name="peft-gpt2-batcher", daemon=True).start()

    def submit(self, job: _Job) -> None:
        """Admit ``job`` or refuse it at once: what waits never grows past ``max_queue`` requests."""
        if self.closed:
            raise _shutting_down()
        if not self.slots.acquire(blocking=False):
            raise self._busy()
        # Freed before the handler hears the answer (or at once if the request is abandoned), so a client that
        # got its answer may send the next request at once.
        job.future.add_done_callback(lambda _: self.slots.release())
        if self.pool:
            self.pool.submit(self.run, [job])
            return
        try:
            self.queue.put_nowait(job)
        except queue.Full:  # only abandoned requests still queued can fill it
            job.future.cancel()
            raise self._busy() from None

    def _busy(self) -> ApiError:
        message = f"server busy: {self.max_queue} requests are already waiting or running; retry shortly"
        return ApiError(429, message, None, "rate_limit_exceeded", "rate_limit_error", {"Retry-After": "1"})

    def close(self) -> None:
        self.closed = True
        if self.pool:
            self.pool.shutdown(wait=False)  # what was admitted still runs
        with contextlib.suppress(queue.Full):  # if full, the worker is busy and sees ``closed`` after its batch
            self.queue.put_nowait(None)

    def _loop(self) -> None:
        """Take the oldest job, wait up to ``wait_s`` for more with its settings, run up to ``max_batch`` rows."""
        waiting: deque[_Job] = deque()
        while not self.closed:
            if not waiting:
                job = self.queue.get()
                if job is None:
                    break
                waiting.append(job)
            job, deadline = waiting[0], time.monotonic() + self.wait_s
            while sum(len(j.prompts) for j in waiting if j.key == job.key) < self.max_batch:
                try:  # a timeout of 0 still takes what is already queued
                    more = self.queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if more is None:
                    self.closed = True
                    break
                waiting.append(more)
            group, rows = [], 0
            for other in waiting:
                if other.key == job.key and (not group or rows + len(other.prompts) <= self.max_batch):
                    group.append(other)
                    rows += len(other.prompts)
            waiting = deque(j for j in waiting if j not in group)
            self.run(group)
        with contextlib.suppress(queue.Empty):
            while True:
                waiting.append(self.queue.get_nowait())
        for job in (j for j in waiting if j is not None and j.future.set_running_or_notify_cancel()):
            job.future.set_exception(_shutting_down())  # answer whoever is left

    def run(self, jobs: list[_Job]) -> None:
        """Check prompt lengths, generate, and settle each job's future. Never raises."""
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # skip abandoned requests
        try:
            with self.set.lock:  # the tokenizer is not safe to share across threads either
                self._generate([j for j in live if self._fits(j)])
        except Exception as err:  # keep the worker alive and no request waiting
            for job in (j for j in live if not j.future.done()):
                job.future.set_exception(err)

    def _fits(self, job: _Job) -> bool:
        lengths = [len(ids) for ids in self.set.tokenizer(job.prompts)["input_ids"]]
        job.prompt_tokens = sum(lengths)
        if min(lengths) == 0:
            job.future.set_exception(ApiError(400, "empty prompt", param="prompt"))
        elif max(lengths) > job.limit:
            message = f"a prompt of {max(lengths)} tokens is over this server's limit of {job.limit} prompt tokens"
            job.future.set_exception(ApiError(400, message, param="prompt", code="context_length_exceeded"))
        return 0 < min(lengths) <= max(lengths) <= job.limit

    def _generate(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        prompts = [p for j in jobs for p in j.prompts]
        rows = [j.adapter for j in jobs for _ in j.prompts]
        try:
            settings = replace(jobs[0].settings, batch_size=len(prompts))
            done = self.set.generate(prompts, adapters=rows, settings=settings, raw=True)
            texts, counts = [c.text for c in done], [c.tokens for c in done]
        except Exception as err:
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
            else:  # one bad request must not fail the others
                for job in jobs:
                    self._generate([job])
            return
        for job in jobs:
            k = len(job.prompts)
            job.future.set_result((texts[:k], counts[:k]))
            texts, counts = texts[k:], counts[k:]


def create_app(
    adapter_set: AdapterSet,
    *,
    base_name: str = "base",
    max_prompt_tokens: int | None = None,
    max_new_tokens_limit: int = 512,
    max_batch: int = 16,
    batch_wait_ms: float = 5,
    max_queue: int = 256,
    mode: Literal["batch", "lock"] = "batch",
    max_body_bytes: int = 1_000_000,
) -> FastAPI:
    """The FastAPI app serving ``adapter_set``: ``model`` = an adapter name, or ``base_name`` for the bare base.

    Args:
        max_prompt_tokens: longest prompt accepted; default (and at most): the model's positions minus max_tokens.
        max_new_tokens_limit: largest ``max_tokens`` accepted.
        max_batch: rows per generate call in ``"batch"`` mode, and prompts per request.
        batch_wait_ms: how long the batcher waits for more requests to join the oldest one.
        max_queue: requests waiting or running at once; more are refused with 429 and ``Retry-After``.
        mode: ``"batch"`` (mixed-adapter batches) or ``"lock"`` (each request alone, in arrival order).
        max_body_bytes: larger request bodies (by Content-Length) are refused with 413 before they are read.
    """
    if mode not in ("batch", "lock"):
        raise PeftGpt2Error(f"mode must be 'batch' or 'lock', not {mode!r}")
    if min(max_batch, max_queue, max_new_tokens_limit, 1 if max_prompt_tokens is None else max_prompt_tokens) < 1:
        raise PeftGpt2Error("max_batch, max_queue, max_new_tokens_limit and max_prompt_tokens must be >= 1")
    if base_name in adapter_set.names:
        raise PeftGpt2Error(f"base_name {base_name!r} is also an adapter's name; choose another")
    config = adapter_set.model.config
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2**31
    engine = _Engine(adapter_set, mode, max_batch, batch_wait_ms / 1000, max_queue)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()

    app = FastAPI(title="peft-gpt2", lifespan=lifespan)
    app.state.engine = engine

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        """Refuse an oversized body from its header, before reading (and holding) it in memory."""
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > max_body_bytes:
            return ApiError(413, f"request body over {max_body_bytes} bytes", code="request_too_large").response()
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:  # unknown routes, wrong methods
        return ApiError(err.status_code, str(err.detail)).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 (bad JSON, wrong types, missing fields), in OpenAI's error shape."""
        errors = [e for e in err.errors() if e.get("type") != "json_invalid"]  # its loc is a character offset
        where = [".".join(str(p) for p in e.get("loc", ()) if p != "body") or None for e in errors]
        message = "; ".join(f"{w or 'body'}: {e.get('msg')}" for w, e in zip(where, errors, strict=True))
        message = message or "; ".join(f"body: {e.get('msg')}" for e in err.errors()) or "invalid request"
        return ApiError(422, message, param=where[0] if where else None).response()

    def unknown(model: str) -> ApiError:
        available = ", ".join([base_name, *adapter_set.names])
        return ApiError(404, f"model {model!r} not found; available: {available}", "model", "model_not_found")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "base": base_name, "adapters": adapter_set.names, "mode": mode}

    @app.get("/v1/models")
    async def models() -> dict:
        names = [base_name, *adapter_set.names]
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "peft-gpt2"} for n in names],
        }

    def job_for(body: CompletionRequest) -> _Job:
        """Validate the request (400 naming the parameter at fault) and turn it into a job."""
        for param in UNSUPPORTED:
            value = getattr(body, param)
            if value is not None and value != CompletionRequest.model_fields[param].default:
                hint = " (one completion per prompt only)" if param in ("n", "best_of") else ""
                raise ApiError(400, f"{param}={value!r} is not supported{hint}", param=param)
        if body.model != base_name and body.model not in adapter_set.names:  # a name, looked up; never a path
            raise unknown(body.model)
        adapter = None if body.model == base_name else body.model
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not 1 <= len(prompts) <= max_batch:
            raise ApiError(400, f"send 1 to {max_batch} prompts per request, not {len(prompts)}", "prompt")
        max_tokens, limit = 16 if body.max_tokens is None else body.max_tokens, min(max_new_tokens_limit, positions - 1)
        if not 1 <= max_tokens <= limit:
            raise ApiError(400, f"max_tokens={max_tokens} must be between 1 and {limit}", "max_tokens")
        temperature = 1.0 if body.temperature is None else body.temperature
        if not 0 <= temperature <= 2:
            raise ApiError(400, f"temperature={temperature} must be between 0 and 2", "temperature")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if body.template:
            template = adapter_set.template_for(adapter)
            prompts, stop = [template.prompt(p) for p in prompts], stop or list(template.stop)
        sample = temperature > 0
        try:
            settings = GenerationSettings(
                max_new_tokens=max_tokens,
                do_sample=sample,
                temperature=temperature if sample else 1.0,
                top_k=0,
                stop=stop,
                top_p=body.top_p if sample and body.top_p is not None else 1.0,
                seed=body.seed if sample else None,
            )
        except PeftGpt2Error as err:
            raise ApiError(400, str(err)) from None
        key = (max_tokens, sample, settings.temperature, settings.top_p, tuple(stop), settings.seed)
        if settings.seed is not None:  # a seeded sample must not depend on which requests share its batch
            key += (object(),)
        return _Job(prompts, adapter, settings, key, min(max_prompt_tokens or positions, positions - max_tokens))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict:
        job = job_for(body)
        engine.submit(job)
        try:
            texts, counts = await asyncio.wrap_future(job.future)
        except (ApiError, PeftGpt2Error) as err:
            raise err if isinstance(err, ApiError) else ApiError(400, str(err)) from None
        except Exception as err:
            raise ApiError(500, f"generation failed: {type(err).__name__}: {err}", kind="server_error") from err
        choices = [
            {
                "text": t,
                "index": i,
                "logprobs": None,
                "finish_reason": "length" if c >= job.settings.max_new_tokens else "stop",
            }
            for i, (t, c) in enumerate(zip(texts, counts, strict=True))
        ]
        usage = {"prompt_tokens": job.prompt_tokens, "completion_tokens": sum(counts)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": choices,
            "usage": usage,
        }

    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    base: str | None,
    adapters: dict[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    **kwargs,
) -> None:
    """Load ``base`` (default: the first adapter's recorded base) and ``adapters`` ``{name: folder}``; serve them.

    Binds to loopback by default, since the server has no authentication. ``template``, ``force``, ``allow_pickle``,
    ``dtype`` and ``load_in_8bit`` go to ``AdapterSet.from_paths``, other keyword arguments to ``create_app``.
    """
    import uvicorn

    if not is_loopback(host):
        warnings.warn(
            f"serving on {host}: there is no authentication, so anyone who can reach port {port} can use "
            "the models; bind 127.0.0.1, or put an authenticating proxy in front",
            stacklevel=2,
        )
    load = {k: kwargs.pop(k) for k in LOAD_KWARGS if k in kwargs}
    app = create_app(AdapterSet.from_paths(base, adapters, **load), **kwargs)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
