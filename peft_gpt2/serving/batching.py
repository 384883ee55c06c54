"""Request batching for the server: admission, a queue and one worker thread over an ``AdapterSet``.

Kept apart from the HTTP layer (``server``) because it is a concurrency engine, not request handling: it bounds
what waits (``max_queue``; more is refused at once with 429), groups queued jobs that share decoding settings into
one mixed-adapter ``AdapterSet.generate`` call (``mode="batch"``) or runs each alone in arrival order
(``mode="lock"``), and settles every job's future, so that one failing request never fails the others it was
batched with. It needs neither FastAPI nor the server: ``ApiError`` is plain data that ``server`` answers with.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from peft_gpt2.serving.jobs import Job
from peft_gpt2.serving.metrics import NO_METRICS

if TYPE_CHECKING:
    from peft_gpt2.adapters.adapter_set import AdapterSet
    from peft_gpt2.inference.settings import GenerationSettings
    from peft_gpt2.serving.metrics import ServerMetrics


@dataclass
class ApiError(Exception):
    """An error to answer in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    kind: str = "invalid_request_error"
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        """The JSON body; a lone surrogate quoted from a request is escaped, or the answer could not be encoded."""
        message = self.message.encode("utf-8", "backslashreplace").decode("utf-8")
        return {"error": {"message": message, "type": self.kind, "param": self.param, "code": self.code}}


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", kind="server_error")


class Engine:
    """Runs jobs on the adapter set: batched by one worker thread, or each alone; bounded by ``max_queue``."""

    def __init__(
        self,
        adapter_set: AdapterSet,
        mode: str,
        max_batch: int,
        wait_s: float,
        max_queue: int,
        metrics: ServerMetrics = NO_METRICS,
    ) -> None:
        self.set, self.mode, self.max_queue, self.metrics = adapter_set, mode, max_queue, metrics
        self.max_batch, self.wait_s = max_batch, wait_s
        self.slots = threading.BoundedSemaphore(max_queue)  # taken on admission, given back once answered
        self.queue: queue.Queue[Job | None] = queue.Queue(max_queue)
        self.closed = False
        self.running = 0  # rows decoding now (the step engine's; whole-generate modes report 0)
        self.retiring: set[str] = set()  # adapters being unloaded (the step engine's: no new rows for them)
        self.pool = concurrent.futures.ThreadPoolExecutor(1, "peft-gpt2-lock") if mode == "lock" else None
        if mode != "lock":
            threading.Thread(target=self._loop, name="peft-gpt2-batcher", daemon=True).start()

    @property
    def queued(self) -> int:
        """Requests admitted and not yet running (roughly: the worker may be taking one)."""
        return self.queue.qsize()

    def submit(self, job: Job) -> None:
        """Admit ``job`` or refuse it at once: what waits never grows past ``max_queue`` requests."""
        if self.closed:
            raise shutting_down()
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
        """Run batches until closed, then answer whoever is left with 503."""
        waiting: deque[Job] = deque()
        while not self.closed:
            if not waiting:
                job = self.queue.get()
                if job is None:
                    break
                waiting.append(job)
            group = self._next_group(waiting)
            waiting = deque(j for j in waiting if j not in group)
            self.run(group)
        with contextlib.suppress(queue.Empty):
            while True:
                waiting.append(self.queue.get_nowait())
        for job in (j for j in waiting if j is not None and j.future.set_running_or_notify_cancel()):
            job.future.set_exception(shutting_down())

    def _next_group(self, waiting: deque[Job]) -> list[Job]:
        """The oldest job and those with its key, up to ``max_batch`` rows, after waiting up to ``wait_s`` for more."""
        key, deadline = _key(waiting[0]), time.monotonic() + self.wait_s
        while sum(j.rows for j in waiting if _key(j) == key) < self.max_batch:
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
            if _key(other) == key and (not group or rows + other.rows <= self.max_batch):
                group.append(other)
                rows += other.rows
        return group

    def run(self, jobs: list[Job]) -> None:
        """Check prompt lengths, generate, and settle each job's future. Never raises."""
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # skip abandoned requests
        try:
            with self.set.lock:  # the tokenizer is not safe to share across threads either
                self._generate([j for j in live if self._fits(j)])
        except BaseException as err:  # keep the worker alive and no request waiting (a Rust panic, pyo3's
            # PanicException, is no Exception; it would end the worker and leave every later request waiting)
            err = err if isinstance(err, Exception) else RuntimeError(f"{type(err).__name__}: {err}")
            for job in (j for j in live if not j.future.done()):
                job.future.set_exception(err)

    def _fits(self, job: Job) -> bool:
        """Whether ``job``'s prompts (token ids as sent, or tokenized here) fit its limit; sets ``job.ids``. If not,
        or if the tokenizer refuses them, the job fails alone: its batch-mates still run."""
        request = job.request
        try:
            ids = self.set.tokenizer(list(request.prompts))["input_ids"] if request.text else request.prompts
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

    def _generate(self, jobs: list[Job]) -> None:
        """One generate call for all ``jobs``; if it fails, each again alone, so one bad request fails alone."""
        if not jobs:
            return
        prompts = [p for j in jobs for p in j.request.prompts]
        rows = [j.request.adapter.name for j in jobs for _ in j.request.prompts]
        try:
            settings = replace(jobs[0].request.settings, batch_size=len(prompts))
            done = self.set.generate(prompts, adapters=rows, settings=settings, raw=True)
        except Exception as err:
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
            else:
                for job in jobs:
                    self._generate([job])
            return
        for job in jobs:
            job.future.set_result(done[: job.rows])
            done = done[job.rows :]


def _key(job: Job) -> GenerationSettings | Job:
    """Jobs with equal keys may share a ``generate`` call: equal settings, whatever the batch size; a seeded job
    is its own key, since ``generate`` seeds once per call and a seeded sample must not depend on its batch-mates."""
    settings = job.request.settings
    return job if settings.seed is not None else replace(settings, batch_size=1)
