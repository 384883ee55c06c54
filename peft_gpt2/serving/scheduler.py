"""The serving engine: admission, the queue, and one worker thread that decides between steps who runs.

Admission bounds what waits (``max_queue``; more is refused at once with 429) and gives a request's slot back as
soon as it is answered or abandoned. The worker moves queued jobs to its waiting line, refuses those whose adapter
is being unloaded (404), asks its policy (``policies``) who runs next, and hands them to the runners:
``StepRunner`` decodes rows token by token over one key/value cache, rows joining and leaving between steps (the
default, ``mode="step"``); ``WholeRunner`` answers a group with one ``AdapterSet.generate`` call (batch and lock
modes, and step mode's prompt-learning adapters). Every job's future is settled, after a failure or at shutdown
too (503), and a failure fails only the jobs that shared its forward pass: the worker lives on.

Unloading an adapter (``retire``) refuses its queued requests with 404 at once, lets its running rows finish, and
frees its weights when none is left, so no request ever sees a vanished or half-loaded adapter.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from peft_gpt2.serving.api_errors import ApiError, busy, shutting_down
from peft_gpt2.serving.metrics import NO_METRICS
from peft_gpt2.serving.policies import POLICIES
from peft_gpt2.serving.step_runner import StepRunner
from peft_gpt2.serving.whole_runner import WholeRunner

if TYPE_CHECKING:
    from peft_gpt2.adapters.adapter_set import AdapterSet
    from peft_gpt2.serving.jobs import Job
    from peft_gpt2.serving.metrics import ServerMetrics
    from peft_gpt2.serving.policies import Policy

_WAKE = object()  # put in the queue to wake an idle worker


class Scheduler:
    """Admits jobs and runs them on ``adapter_set`` as ``policy`` chooses; bounded by ``max_queue``."""

    def __init__(
        self,
        adapter_set: AdapterSet,
        policy: Policy,
        *,
        wait_s: float,
        max_queue: int,
        metrics: ServerMetrics = NO_METRICS,
    ) -> None:
        self.set, self.policy, self.wait_s, self.max_queue = adapter_set, policy, wait_s, max_queue
        self.slots = threading.BoundedSemaphore(max_queue)  # taken on admission, given back once answered
        self.queue: queue.Queue[Job | object | None] = queue.Queue(max_queue)
        self.waiting: deque[Job] = deque()  # taken from the queue by the worker, not running yet
        self.closed = False
        self.running = 0  # rows decoding now (whole-generate runs count none)
        self.retiring: set[str] = set()  # adapters being unloaded: no new rows for them
        self.steps, self.whole = StepRunner(adapter_set, metrics), WholeRunner(adapter_set)
        threading.Thread(target=self._loop, name=f"peft-gpt2-{policy.mode}", daemon=True).start()

    @property
    def mode(self) -> str:
        return self.policy.mode

    @property
    def queued(self) -> int:
        """Requests admitted and not yet running (roughly: the worker may be taking one)."""
        return self.queue.qsize() + len(self.waiting)

    def submit(self, job: Job) -> None:
        """Admit ``job`` or refuse it at once: what waits never grows past ``max_queue`` requests."""
        if self.closed:
            raise shutting_down()
        if not self.slots.acquire(blocking=False):
            raise busy(self.max_queue)
        # Freed before the handler hears the answer (or at once if the request is abandoned), so a client that
        # got its answer may send the next request at once.
        job.future.add_done_callback(lambda _: self.slots.release())
        try:
            self.queue.put_nowait(job)
        except queue.Full:  # only abandoned requests still queued can fill it
            job.future.cancel()
            raise busy(self.max_queue) from None

    def retire(self, name: str) -> None:
        """Unload adapter ``name`` as soon as no running row uses it; its queued requests get 404."""
        self.retiring.add(name)
        self._wake(_WAKE)

    def close(self) -> None:
        """Stop after the current step; whoever is left is answered 503."""
        self.closed = True
        self._wake(None)

    def _wake(self, token: object) -> None:
        with contextlib.suppress(queue.Full):  # if full, the worker is busy and sees the change after its step
            self.queue.put_nowait(token)

    def _loop(self) -> None:
        """Between steps: collect, refuse the unloaded, admit, run; until closed, then answer whoever is left."""
        while not self.closed:
            self._collect(block=not self.steps.rows)
            self._refuse_unloaded()
            admitted = self.policy.admit(self.waiting, self.steps.rows)
            for group in admitted.whole:
                self.whole.run(group)
            with self.set.lock:
                self._step([j for j in admitted.join if j.future.set_running_or_notify_cancel()])
                self._free_retired()
            self.running = len(self.steps.rows)
        self._collect(block=False)
        self._fail(self.steps.drop(), shutting_down())
        self._fail([j for j in self.waiting if j.future.set_running_or_notify_cancel()], shutting_down())

    def _collect(self, block: bool) -> None:
        """Move queued jobs to ``waiting``; when idle (``block``), wait for one, then up to ``wait_s`` for more
        unless the policy has enough."""
        deadline = None
        block = block and not self.policy.full(self.waiting)
        while True:
            try:
                if not block:
                    job = self.queue.get_nowait()
                elif not self.waiting:
                    job = self.queue.get()
                else:
                    deadline = deadline or time.monotonic() + self.wait_s
                    job = self.queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                return
            if job is None:
                self.closed = True
            if job is None or job is _WAKE:
                return
            self.waiting.append(job)
            block = block and not self.policy.full(self.waiting)

    def _refuse_unloaded(self) -> None:
        """Answer 404 to waiting jobs whose adapter is being unloaded or gone: never another adapter's answer."""
        if not self.waiting:
            return
        served = (set(self.set.names) - self.retiring) | {None}
        for job in [j for j in self.waiting if j.request.adapter.name not in served]:
            self.waiting.remove(job)
            if job.future.set_running_or_notify_cancel():
                name = job.request.adapter.name
                job.future.set_exception(ApiError(404, f"adapter {name!r} was unloaded", "model"))

    def _step(self, joining: list[Job]) -> None:
        """Prefill the joining jobs and run one step; a failure fails the jobs in it, and the worker lives on."""
        try:
            self.steps.join(joining)
            if self.steps.rows:
                self.steps.step()
        except BaseException as err:
            self._fail(self.steps.drop() + joining, err)

    def _fail(self, jobs: list[Job], err: BaseException) -> None:
        err = err if isinstance(err, Exception) else RuntimeError(f"{type(err).__name__}: {err}")
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(err)

    def _free_retired(self) -> None:
        """Unload each retiring adapter no running row uses any more."""
        for name in self.retiring - {r.job.request.adapter.name for r in self.steps.rows}:
            if name in self.set.names:
                self.set.unload(name)
            self.retiring.discard(name)


def make_engine(
    adapter_set: AdapterSet,
    mode: str = "step",
    *,
    max_batch: int,
    wait_s: float,
    max_queue: int,
    metrics: ServerMetrics = NO_METRICS,
) -> Scheduler:
    """The engine for ``mode``: ``"step"`` (the default), or the ``"batch"`` and ``"lock"`` baselines."""
    return Scheduler(adapter_set, POLICIES[mode](max_batch), wait_s=wait_s, max_queue=max_queue, metrics=metrics)
