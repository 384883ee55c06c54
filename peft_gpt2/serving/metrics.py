"""Prometheus metrics for the OpenAI-compatible server, kept behind one small class so the server never touches
prometheus_client: it calls one method per event and serves ``render()`` at ``GET /metrics``.

    curl -s localhost:8000/metrics | grep peft_gpt2_

Each instance owns its registry (tests build many apps in one process). Throughput is a PromQL ``rate()`` of the token
counters, e.g. ``rate(peft_gpt2_generation_tokens_total[1m])`` is generated tokens per second by model. The engine and
the adapter loader get their metrics in their constructors: ``NO_METRICS`` where none are wanted (tests, benchmarks),
so no use site checks for ``None``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

ENDPOINTS = ("completions", "chat_completions", "load_lora_adapter", "unload_lora_adapter", "models", "other")
ADAPTER_EVENTS = ("load", "unload", "evict")
MAX_MODELS = 256  # distinct `model` label values; later new names are recorded as OTHER_MODEL
OTHER_MODEL = "other"

# Seconds; close to vLLM's choices. Latency starts low because /v1/models and adapter calls are fast.
FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                       20.0, 40.0, 80.0, 160.0, 640.0)
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                     5.0, 10.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    """The server's metrics on their own registry; gauges read the callables at scrape time, so they are never stale.

    Args:
        queue_depth (`Callable[[], int]`): requests waiting for a decode slot.
        running_rows (`Callable[[], int]`): rows in the running decode batch.
        loaded_adapters (`Callable[[], int]`): adapters loaded over the base.

    A `model` label is only ever a served name, or "unknown" for a name the server did not recognise (its 404s):
    the server passes "unknown", never the client's string (an adapter name a load/unload call refused included),
    and "" where a request names no model (`/v1/models`). As a second guard, after `MAX_MODELS` distinct values
    any new name is recorded as "other", so a client sending random names cannot grow memory without bound.
    """

    def __init__(
        self, queue_depth: Callable[[], int], running_rows: Callable[[], int], loaded_adapters: Callable[[], int]
    ) -> None:
        self.registry = CollectorRegistry()
        self._models: set[str] = set()
        self._lock = threading.Lock()  # events come from the event loop and the decode thread
        reg = self.registry
        self._requests = Counter("peft_gpt2_requests", "Answered HTTP requests, errors included, by HTTP status.",
                                 ["endpoint", "model", "status"], registry=reg)
        self._latency = Histogram("peft_gpt2_request_duration_seconds", "Time from receiving a request to answering.",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self._first_token = Histogram("peft_gpt2_time_to_first_token_seconds", "From a request to its first token.",
                                      ["model"], buckets=FIRST_TOKEN_BUCKETS, registry=reg)
        self._per_token = Histogram("peft_gpt2_time_per_output_token_seconds",
                                    "Decode time per generated token after the first.",
                                    ["model"], buckets=PER_TOKEN_BUCKETS, registry=reg)
        self._prompt_tokens = Counter("peft_gpt2_prompt_tokens", "Prompt tokens of finished requests.", ["model"],
                                      registry=reg)
        self._generation_tokens = Counter("peft_gpt2_generation_tokens", "Generated tokens of finished requests.",
                                          ["model"], registry=reg)
        self._rows = Histogram("peft_gpt2_decode_batch_rows", "Rows (sequences) decoded together in one step.",
                               buckets=ROW_BUCKETS, registry=reg)
        self._adapter_events = Counter("peft_gpt2_adapter_events", "Adapter loads, unloads and evictions.", ["event"],
                                       registry=reg)
        for event in ADAPTER_EVENTS:
            self._adapter_events.labels(event=event)  # present at 0 before the first event
        for name, doc, read in (
            ("peft_gpt2_queued_requests", "Requests waiting for a decode slot.", queue_depth),
            ("peft_gpt2_running_rows", "Rows in the running decode batch.", running_rows),
            ("peft_gpt2_loaded_adapters", "Adapters loaded over the base.", loaded_adapters),
        ):
            Gauge(name, doc, registry=reg).set_function(read)

    def _model(self, model: str) -> str:
        """`model` itself while fewer than MAX_MODELS names were seen (or it was seen), else "other"."""
        with self._lock:
            if model in self._models:
                return model
            if len(self._models) < MAX_MODELS:
                self._models.add(model)
                return model
        return OTHER_MODEL

    def request(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        """Record one answered request (errors too); `endpoint` is one of ENDPOINTS, `seconds` its whole latency."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint {endpoint!r} is not one of {ENDPOINTS}")
        self._requests.labels(endpoint=endpoint, model=self._model(model), status=str(status)).inc()
        self._latency.labels(endpoint=endpoint).observe(seconds)

    def first_token(self, model: str, seconds: float) -> None:
        """Record the time from receiving a generation request to its first generated token."""
        self._first_token.labels(model=self._model(model)).observe(seconds)

    def finished(self, model: str, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        """Record a finished generation. `seconds` is the decode time from its first token to its last, so the time
        per output token is ``seconds / (completion_tokens - 1)`` (vLLM's definition), observed when there are two
        or more tokens."""
        label = self._model(model)
        self._prompt_tokens.labels(model=label).inc(prompt_tokens)
        self._generation_tokens.labels(model=label).inc(completion_tokens)
        if completion_tokens > 1:
            self._per_token.labels(model=label).observe(seconds / (completion_tokens - 1))

    def step(self, rows: int) -> None:
        """Record the number of rows decoded together in one decode step."""
        self._rows.observe(rows)

    def adapter_event(self, event: str) -> None:
        """Count one adapter "load", "unload" or "evict" (evicted to make room, not asked for)."""
        if event not in ADAPTER_EVENTS:
            raise ValueError(f"adapter event {event!r} is not one of {ADAPTER_EVENTS}")
        self._adapter_events.labels(event=event).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and the content type to serve it with."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class NoMetrics:
    """``ServerMetrics``' events, recording nothing: for an engine or adapter loader that serves no ``/metrics``."""

    def request(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        pass

    def first_token(self, model: str, seconds: float) -> None:
        pass

    def finished(self, model: str, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
        pass

    def step(self, rows: int) -> None:
        pass

    def adapter_event(self, event: str) -> None:
        pass


NO_METRICS = NoMetrics()
