r"""An OpenAI-compatible HTTP server: one base model, many LoRA adapters, chosen per request by ``model``.

    pip install 'peft-gpt2[serve]'
    python -c "from peft_gpt2.serving.app import serve; serve(None, {'alpaca': 'adapters/alpaca-lora'})"
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{"model": "alpaca",
      "prompt": "### Instruction:\nName a color.\n\n### Response:\n", "max_tokens": 8, "temperature": 0}'

``/v1/completions`` is raw text completion, as in OpenAI's API: the prompt is used as sent, so the client renders
the adapter's template (or sends ``"template": true``, an extension: the prompt is then an instruction, rendered
through the adapter's template, and generation stops at the template's next section); prompts may be token ids, and
``echo`` / ``logprobs`` return log-probabilities. ``/v1/chat/completions`` renders ``messages`` in the format the
adapter was trained with (``chat_prompts``). Both stream with ``stream: true`` (``routes``). ``temperature``
defaults to 1 (sampling) as in OpenAI; send 0 for greedy. Unlike OpenAI: one choice per prompt; texts are stripped
and cut before the first stop string. ``finish_reason`` is "length" when ``max_tokens`` ran out
before eos or a stop string, and ``completion_tokens`` counts the tokens generated (both from ``generation``).

Errors come in OpenAI's shape: 422 for a body that is not JSON, lacks a field or has one of the wrong type
(FastAPI's validation; types are strict: ``true`` or ``"3"`` is not a number, ``3.0`` not an integer), 400 for a
value out of range or unsupported (``n=2``, ``temperature=3``), as OpenAI answers. A 5xx means a bug, never the
client's input. Every dimension a client controls is bounded before it reaches the model:

- the body: ``max_body_bytes`` (413), chunked bodies too; requests waiting or running: ``max_queue`` (429);
- ``prompt``: 1 to ``max_batch`` strings or token-id lists (ids inside the vocabulary), each at most
  ``max_prompt_tokens`` tokens and not empty (400); ``logprobs`` 0 to 20;
- ``max_tokens``: 1 to ``max_new_tokens_limit`` (0 with ``echo``); ``temperature`` 0 to 2 and ``top_p`` 0 to 1,
  finite (NaN and Infinity, which Python's JSON parser accepts, are 400); a temperature under 1e-5 is greedy, as
  in vLLM (sampling there overflows into NaN); ``seed`` 0 to 2**64 - 1, torch's range (torch wraps a negative
  seed, so -1 would name the same seed as 2**64 - 1);
- ``stop``: at most 4 strings (as OpenAI) of 1 to 64 characters: generation decodes each row's newest tokens, as
  many as the longest string has UTF-8 bytes, per step (``generation.StopText``);
- text (``model``, ``prompt``, ``stop``) must be Unicode a tokenizer takes: a lone surrogate is 400; a prompt the
  tokenizer still refuses fails its own request (400), never the others batched with it.

Requests run on ``scheduler.Scheduler``: with ``mode="step"``, the default, token by token (``step_runner``), rows
joining and leaving between steps; as baselines, ``mode="batch"`` (whole mixed-adapter ``AdapterSet.generate``
calls, ``whole_runner``) and ``mode="lock"`` (each request alone), which are scheduling policies (``policies``).
Adapters load and unload at run time through ``runtime_adapters``; ``GET /metrics`` serves ``metrics``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.loading import max_positions

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from peft_gpt2.serving.api_errors import ApiError
    from peft_gpt2.serving.metrics import ServerMetrics
    from peft_gpt2.serving.protocol_requests import VALUE_ERRORS  # pydantic, which comes with FastAPI
    from peft_gpt2.serving.routes import Served, router
    from peft_gpt2.serving.runtime_adapters import RuntimeAdapters
    from peft_gpt2.serving.scheduler import make_engine  # its metrics need prometheus-client
except ImportError as err:  # the CLI prints this instead of a traceback
    raise PeftGpt2Error(
        f"serving needs FastAPI, uvicorn and prometheus-client: pip install 'peft-gpt2[serve]' ({err})"
    ) from None

ENDPOINTS = {
    "/v1/completions": "completions",
    "/v1/chat/completions": "chat_completions",
    "/v1/load_lora_adapter": "load_lora_adapter",
    "/v1/unload_lora_adapter": "unload_lora_adapter",
    "/v1/models": "models",
}

LOAD_KWARGS = ("template", "force", "allow_pickle", "dtype", "load_in_8bit")


async def _count(request: Request, call_next):
    """Record every answered request in the metrics: endpoint, model, status, and its time to the last byte."""
    start, metrics = time.monotonic(), request.app.state.served.metrics
    response = await call_next(request)
    endpoint = ENDPOINTS.get(request.url.path, "other")
    model = getattr(request.state, "model", "unknown") if endpoint != "models" else ""
    body = response.body_iterator

    async def counted() -> AsyncIterator[bytes]:
        try:
            async for piece in body:
                yield piece
        finally:
            metrics.request(endpoint, model, response.status_code, time.monotonic() - start)

    response.body_iterator = counted()
    return response


def _respond(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _limit_body(request: Request, call_next):
    """Refuse an oversized body: from its header before reading it, or, sent chunked without one, as soon as the
    bytes read pass the limit (never holding more than the limit in memory)."""
    limit = request.app.state.max_body_bytes
    too_large = _respond(ApiError(413, f"request body over {limit} bytes", code="request_too_large"))
    length = request.headers.get("content-length")
    if length is not None:
        return too_large if not length.isdigit() or int(length) > limit else await call_next(request)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    request._body = b"".join(chunks)  # Starlette replays a body read here to the route
    return await call_next(request)


async def _error(request: Request, err: Exception) -> JSONResponse:
    """An ``ApiError``, or Starlette's own (unknown routes, wrong methods), in OpenAI's shape."""
    return _respond(ApiError(err.status_code, str(err.detail)) if isinstance(err, HTTPException) else err)


async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors in OpenAI's shape: 400 if every one is a body value out of range, else 422."""
    errors = err.errors()
    located = [e for e in errors if e.get("type") != "json_invalid"]  # its loc is a character offset
    where = [".".join(str(p) for p in e.get("loc", ()) if p != "body") or None for e in located]
    message = "; ".join(f"{w or 'body'}: {e.get('msg')}" for w, e in zip(where, located, strict=True))
    message = message or "; ".join(f"body: {e.get('msg')}" for e in errors) or "invalid request"
    values = bool(errors) and all(e.get("type") in VALUE_ERRORS and e.get("loc", ())[:1] == ("body",) for e in errors)
    return _respond(ApiError(400 if values else 422, message, param=where[0] if where else None))


async def _bug(request: Request, err: Exception) -> JSONResponse:
    """Anything else is a bug, answered in OpenAI's shape all the same (Starlette still logs its traceback)."""
    return _respond(ApiError(500, f"internal error: {type(err).__name__}", kind="server_error"))


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.served.engine.close()


def _check_options(adapter_set: AdapterSet, base_name: str, mode: str, adapter_dirs, *sizes: int | None) -> None:
    """Refuse server options that cannot work, before anything starts."""
    if mode not in ("step", "batch", "lock"):
        raise PeftGpt2Error(f"mode must be 'step', 'batch' or 'lock', not {mode!r}")
    if min(size or 1 for size in sizes) < 1:  # max_prompt_tokens None: the model's positions
        raise PeftGpt2Error("max_batch, max_queue, max_new_tokens_limit, max_loras and max_prompt_tokens must be >= 1")
    if base_name in adapter_set.names:
        raise PeftGpt2Error(f"base_name {base_name!r} is also an adapter's name; choose another")
    if adapter_dirs and mode != "step":
        raise PeftGpt2Error("adapters loaded at run time (adapter_dirs) need mode 'step'")
    for folder in adapter_dirs or []:
        if not Path(folder).is_dir():
            raise PeftGpt2Error(f"adapter_dirs: {folder} is not a folder")


def create_app(
    adapter_set: AdapterSet,
    *,
    base_name: str = "base",
    max_prompt_tokens: int | None = None,
    max_new_tokens_limit: int = 512,
    max_batch: int = 16,
    batch_wait_ms: float = 5,
    max_queue: int = 256,
    mode: Literal["step", "batch", "lock"] = "step",
    max_body_bytes: int = 1_000_000,
    adapter_dirs: list[str | Path] | None = None,
    max_loras: int = 8,
) -> FastAPI:
    """The FastAPI app serving ``adapter_set``: ``model`` = an adapter name, or ``base_name`` for the bare base.

    Args:
        max_prompt_tokens: longest prompt accepted; default (and at most): the model's positions minus max_tokens.
        max_new_tokens_limit: largest ``max_tokens`` accepted (at most the model's positions minus one).
        max_batch: rows decoded together, and prompts per request.
        batch_wait_ms: how long an idle engine waits for more requests to join the first one.
        max_queue: requests waiting or running at once; more are refused with 429 and ``Retry-After``.
        mode: ``"step"`` (step-wise decoding, rows joining and leaving between steps; streams token by token and
            returns log-probabilities), ``"batch"`` (whole mixed-adapter ``generate`` calls) or ``"lock"`` (each
            request alone, in arrival order); the last two are kept as baselines for ``bench/serve_load.py``.
        max_body_bytes: larger request bodies (by Content-Length) are refused with 413 before they are read.
        adapter_dirs: folders adapters may be loaded from at run time (``/v1/load_lora_adapter``); none: off.
        max_loras: adapters loaded at run time that stay loaded; one more unloads the least recently used.
    """
    _check_options(adapter_set, base_name, mode, adapter_dirs, max_batch, max_queue, max_new_tokens_limit, max_loras,
                   max_prompt_tokens)
    positions = max_positions(adapter_set.model.config) or 2**31
    wait = batch_wait_ms / 1000
    # the gauges read the engine at scrape time, so the metrics come first and the engine gets them to record into
    metrics = ServerMetrics(lambda: engine.queued, lambda: engine.running, lambda: len(adapter_set.names))
    engine = make_engine(adapter_set, mode, max_batch=max_batch, wait_s=wait, max_queue=max_queue, metrics=metrics)
    dirs = [Path(d) for d in adapter_dirs or []]
    runtime = RuntimeAdapters(adapter_set, engine, dirs, max_loras, base_name, metrics)
    limit = min(max_new_tokens_limit, positions - 1)
    app = FastAPI(title="peft-gpt2", lifespan=_lifespan)
    app.state.max_body_bytes = max_body_bytes
    app.state.served = Served(
        adapter_set, engine, runtime, metrics, base_name, max_batch, limit, max_prompt_tokens, positions
    )
    app.middleware("http")(_limit_body)
    app.middleware("http")(_count)
    app.add_exception_handler(ApiError, _error)
    app.add_exception_handler(HTTPException, _error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _bug)
    app.include_router(router)
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
