"""Who runs next: the scheduler's choice between steps, one policy per serving mode.

``StepPolicy`` (the default) lets waiting jobs join the running rows in arrival order while they may share a step
(``AdapterRef.group``) and fit in ``max_batch``; a job that does not is left at the head of the line, so the batch
drains until it fits and nobody starves. Prompt-learning adapters' jobs (``AdapterRef.whole``) run whole, alone,
when nothing else is running. The baselines are policies that only ever hand over whole groups:
``BatchPolicy`` groups jobs that share decoding settings into one mixed-adapter ``generate`` call, and
``LockPolicy`` runs each job alone, in arrival order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from peft_gpt2.serving.decode_rows import Row
    from peft_gpt2.serving.jobs import Job


@dataclass
class Admission:
    """What a policy took from the waiting line: groups to generate whole (first), then jobs to join the steps."""

    whole: list[list[Job]] = field(default_factory=list)
    join: list[Job] = field(default_factory=list)


class Policy(Protocol):
    """Chooses, between steps, which waiting jobs run: ``admit`` takes them from ``waiting`` (jobs for unloaded
    adapters were refused already), given the rows ``running``; ``full`` says whether an idle scheduler has enough
    to start without waiting ``wait_s`` for more."""

    mode: str

    def full(self, waiting: deque[Job]) -> bool: ...

    def admit(self, waiting: deque[Job], running: list[Row]) -> Admission: ...


class StepPolicy:
    """Rows join and leave a running batch between steps."""

    mode = "step"

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch

    def full(self, waiting: deque[Job]) -> bool:
        """Whether enough waits that an idle scheduler need not wait for more."""
        return sum(j.rows for j in waiting) >= self.max_batch

    def admit(self, waiting: deque[Job], running: list[Row]) -> Admission:
        """Take waiting jobs in arrival order while they share the running rows' group and fit in ``max_batch``."""
        group = running[0].job.request.adapter.group if running else None
        free, taken = self.max_batch - len(running), Admission()
        while waiting:
            job, ref = waiting[0], waiting[0].request.adapter
            if job.future.cancelled():  # abandoned while it waited
                waiting.popleft()
                continue
            if (running or taken.join) and (ref.group != group or job.rows > free or ref.whole):
                break
            waiting.popleft()
            if ref.whole:
                taken.whole.append([job])
                continue
            group, free = ref.group, free - job.rows
            taken.join.append(job)
        return taken


class BatchPolicy:
    """The oldest job and those sharing its decoding settings, up to ``max_batch`` rows, in one ``generate`` call."""

    mode = "batch"

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch

    def full(self, waiting: deque[Job]) -> bool:
        key = _key(waiting[0]) if waiting else None
        return bool(waiting) and sum(j.rows for j in waiting if _key(j) == key) >= self.max_batch

    def admit(self, waiting: deque[Job], running: list[Row]) -> Admission:
        if not waiting:
            return Admission()
        key, group, rows = _key(waiting[0]), [], 0
        for job in waiting:
            if _key(job) == key and (not group or rows + job.rows <= self.max_batch):
                group.append(job)
                rows += job.rows
        for job in group:
            waiting.remove(job)
        return Admission(whole=[group])


class LockPolicy:
    """Each job alone, in arrival order."""

    mode = "lock"

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch

    def full(self, waiting: deque[Job]) -> bool:
        return bool(waiting)

    def admit(self, waiting: deque[Job], running: list[Row]) -> Admission:
        return Admission(whole=[[waiting.popleft()]]) if waiting else Admission()


POLICIES = {p.mode: p for p in (StepPolicy, BatchPolicy, LockPolicy)}


def _key(job: Job) -> dict | Job:
    """Jobs with equal keys may share a ``generate`` call: equal settings, whatever the batch size; a seeded job
    is its own key, since ``generate`` seeds once per call and a seeded sample must not depend on its batch-mates."""
    settings = job.request.settings
    return job if settings.seed is not None else {**vars(settings), "batch_size": None}
