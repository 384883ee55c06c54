"""Runs groups of jobs whole: one mixed-adapter ``AdapterSet.generate`` call per group, each job's future settled.

What batch and lock modes run every request with, and step mode its prompt-learning adapters' (prefix, prompt
tuning: ``generate`` manages their virtual tokens). A group's jobs share decoding settings (``policies``); if the
call fails, each job runs again alone, so one bad request fails alone.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from peft_gpt2.serving.jobs import Job, check_prompts

if TYPE_CHECKING:
    from peft_gpt2.adapters.adapter_set import AdapterSet


class WholeRunner:
    """Generates whole groups of jobs on ``adapter_set``, holding its lock."""

    def __init__(self, adapter_set: AdapterSet) -> None:
        self.set = adapter_set

    def run(self, jobs: list[Job]) -> None:
        """Check prompt lengths, generate, and settle each job's future. Never raises."""
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # skip abandoned requests
        try:
            with self.set.lock:  # the tokenizer is not safe to share across threads either
                self._generate([j for j in live if check_prompts(j, self.set.tokenizer)])
        except BaseException as err:  # keep the worker alive and no request waiting (a Rust panic, pyo3's
            # PanicException, is no Exception; it would end the worker and leave every later request waiting)
            err = err if isinstance(err, Exception) else RuntimeError(f"{type(err).__name__}: {err}")
            for job in (j for j in live if not j.future.done()):
                job.future.set_exception(err)

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
