r"""An OpenAI-compatible HTTP server: one base model, many LoRA adapters, chosen per request by ``model``.

    pip install 'peft-gpt2[serve]'
    python -c "from peft_gpt2.server import serve; serve(None, {'alpaca': 'adapters/alpaca-lora'})"
    curl localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{"model": "alpaca",
      "prompt": "### Instruction:\nName a color.\n\n### Response:\n", "max_tokens": 8, "temperature": 0}'

``/v1/completions`` is raw text completion, as in OpenAI's API: the prompt is used as sent, so the client renders
the adapter's template (or sends ``"template": true``, an extension: the prompt is then an instruction, rendered
through the adapter's template, and generation stops at the template's next section). ``temperature`` defaults to
1 (sampling) as in OpenAI; send 0 for greedy. Unlike OpenAI: one choice per prompt, no streaming, echo or logprobs;
texts are stripped and cut before the first stop string. ``finish_reason`` is "length" when ``max_tokens`` ran out
before eos or a stop string, and ``completion_tokens`` counts the tokens generated (both from ``generation``).

Errors come in OpenAI's shape: 422 for a body that is not JSON, lacks a field or has one of the wrong type
(FastAPI's validation; types are strict: ``true`` or ``"3"`` is not a number, ``3.0`` not an integer), 400 for a
value out of range or unsupported (``n=2``, ``temperature=3``), as OpenAI answers. A 5xx means a bug, never the
client's input. Every dimension a client controls is bounded before it reaches the model:

- the body: ``max_body_bytes`` (413), chunked bodies too; requests waiting or running: ``max_queue`` (429);
- ``prompt``: 1 to ``max_batch`` strings, each at most ``max_prompt_tokens`` tokens and not empty (400);
- ``max_tokens``: 1 to ``max_new_tokens_limit``; ``temperature`` 0 to 2 and ``top_p`` 0 to 1, finite (NaN and
  Infinity, which Python's JSON parser accepts, are 400); a temperature under 1e-5 is greedy, as in vLLM (sampling
  there overflows into NaN); ``seed`` 0 to 2**64 - 1, torch's range (torch wraps a negative seed, so -1 would name
  the same seed as 2**64 - 1);
- ``stop``: at most 4 strings (as OpenAI) of 1 to 64 characters: generation decodes each row's newest tokens, as
  many as the longest string has UTF-8 bytes, per step (``generation.StopText``);
- text (``model``, ``prompt``, ``stop``) must be Unicode a tokenizer takes: a lone surrogate is 400; a prompt the
  tokenizer still refuses fails its own request (400), never the others batched with it.

Requests are batched by ``batching.Engine``, in ``mode="batch"`` into mixed-adapter ``AdapterSet.generate`` calls;
``mode="lock"`` runs each alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Literal

from peft_gpt2.adapter_set import AdapterSet
from peft_gpt2.batching import ApiError, Engine, Job
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.generation import MIN_TEMPERATURE, Completion, GenerationSettings
from peft_gpt2.models import max_positions

try:
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from peft_gpt2.api_requests import VALUE_ERRORS, CompletionRequest  # pydantic, which comes with FastAPI
except ImportError as err:  # the CLI prints this instead of a traceback
    raise PeftGpt2Error(f"serving needs FastAPI and uvicorn: pip install 'peft-gpt2[serve]' ({err})") from None

LOAD_KWARGS = ("template", "force", "allow_pickle", "dtype", "load_in_8bit")


@dataclass
class Completions:
    """What ``/v1/completions`` needs besides the body: the adapters, the engine and the server's limits."""

    adapter_set: AdapterSet
    engine: Engine
    base_name: str
    max_batch: int
    max_tokens: int  # largest max_tokens accepted
    max_prompt_tokens: int | None
    positions: int
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def names(self) -> list[str]:
        return [self.base_name, *self.adapter_set.names]

    def check_limits(self, body: CompletionRequest) -> None:
        """The checks that depend on this server's settings (the rest is ``CompletionRequest``'s): 404 or 400."""
        if body.model not in self.names:  # a name, looked up; never a path
            message = f"model {body.model!r} not found; available: {', '.join(self.names)}"
            raise ApiError(404, message, "model", "model_not_found")
        if not 1 <= len(body.prompt) <= self.max_batch:
            message = f"send 1 to {self.max_batch} prompts per request, not {len(body.prompt)}"
            raise ApiError(400, message, "prompt")
        if body.max_tokens > self.max_tokens:
            raise ApiError(400, f"max_tokens={body.max_tokens} must be between 1 and {self.max_tokens}", "max_tokens")

    def job_for(self, body: CompletionRequest) -> Job:
        self.check_limits(body)
        adapter = None if body.model == self.base_name else body.model
        prompts, stop = body.prompt, body.stop
        if body.template:
            template = self.adapter_set.template_for(adapter)
            prompts, stop = [template.prompt(p) for p in prompts], stop or list(template.stop)
        # else greedy (below MIN_TEMPERATURE too, as vLLM does: sampling could overflow into NaN, a 500), and the
        # sampling fields keep GenerationSettings' defaults
        sample = body.temperature >= MIN_TEMPERATURE
        sampling = dict(temperature=body.temperature, top_p=body.top_p, seed=body.seed) if sample else {}
        settings = GenerationSettings(max_new_tokens=body.max_tokens, do_sample=sample, top_k=0, stop=stop, **sampling)
        key = (settings.max_new_tokens, sample, settings.temperature, settings.top_p, tuple(stop), settings.seed)
        if settings.seed is not None:  # a seeded sample must not depend on which requests share its batch
            key += (object(),)
        limit = min(self.max_prompt_tokens or self.positions, self.positions - body.max_tokens)
        return Job(prompts, adapter, settings, key, limit)

    async def answer(self, body: CompletionRequest) -> dict:
        try:
            job = self.job_for(body)
            self.engine.submit(job)
            done: list[Completion] = await asyncio.wrap_future(job.future)
        except ApiError:
            raise
        except PeftGpt2Error as err:
            raise ApiError(400, str(err)) from None
        except Exception as err:
            raise ApiError(500, f"generation failed: {type(err).__name__}: {err}", kind="server_error") from err
        choices = [
            {"text": c.text, "index": i, "logprobs": None, "finish_reason": c.finish_reason} for i, c in enumerate(done)
        ]
        tokens = sum(c.tokens for c in done)
        usage = dict(prompt_tokens=job.prompt_tokens, completion_tokens=tokens, total_tokens=job.prompt_tokens + tokens)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        return {**head, "model": body.model, "choices": choices, "usage": usage}


def _completions(request: Request) -> Completions:
    return request.app.state.completions


Served = Annotated[Completions, Depends(_completions)]
router = APIRouter()


@router.get("/health")
async def health(served: Served) -> dict:
    return {"status": "ok", "base": served.base_name, "adapters": served.adapter_set.names, "mode": served.engine.mode}


@router.get("/v1/models")
async def models(served: Served) -> dict:
    cards = [{"id": n, "object": "model", "created": served.created, "owned_by": "peft-gpt2"} for n in served.names]
    return {"object": "list", "data": cards}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, served: Served) -> dict:
    return await served.answer(body)


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
    app.state.engine.close()


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
        max_new_tokens_limit: largest ``max_tokens`` accepted (at most the model's positions minus one).
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
    positions = max_positions(adapter_set.model.config) or 2**31
    engine = Engine(adapter_set, mode, max_batch, batch_wait_ms / 1000, max_queue)
    limit = min(max_new_tokens_limit, positions - 1)
    app = FastAPI(title="peft-gpt2", lifespan=_lifespan)
    app.state.engine, app.state.max_body_bytes = engine, max_body_bytes
    app.state.completions = Completions(adapter_set, engine, base_name, max_batch, limit, max_prompt_tokens, positions)
    app.middleware("http")(_limit_body)
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
