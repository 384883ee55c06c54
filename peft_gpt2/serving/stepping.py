"""The server's default engine: step-wise decoding with the key/value cache, rows joining and leaving between steps.

A whole-``generate`` batch (``batching.Engine``, ``mode="batch"``) answers nobody until its longest row ends, and
admits no one meanwhile: one 500-token answer holds every short one hostage. Here each step feeds one token per
running row; a row leaves the batch the step it stops (its answer is sent at once) and queued requests join between
steps (their prompts prefilled, their caches joined to the batch's, ``kv_cache.Batch``). Rows of different adapters
share a step through PEFT's per-row routing where the method allows it (LoRA); rows of another method (IA3, VeRA,
DoRA) run in batches of their own adapter, and prompt-learning adapters (prefix, prompt tuning), whose virtual tokens
``generate`` manages, are generated whole, one request at a time. Only this engine streams token by token and returns
log-probabilities.

Unloading an adapter (``retire``) refuses its queued requests with 404 at once, lets its running rows finish, and
frees its weights when none is left, so no request ever sees a vanished or half-loaded adapter.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections import deque
from typing import TYPE_CHECKING

from peft_gpt2.inference.generation import TokenLogprob, end_ids
from peft_gpt2.serving.batching import ApiError, Engine, shutting_down
from peft_gpt2.serving.decode_rows import Row
from peft_gpt2.serving.jobs import Job
from peft_gpt2.serving.kv_cache import Batch
from peft_gpt2.serving.metrics import NO_METRICS
from peft_gpt2.serving.sampling import logits_processors

if TYPE_CHECKING:
    import torch

    from peft_gpt2.adapters.adapter_set import AdapterSet
    from peft_gpt2.serving.metrics import ServerMetrics


class StepEngine(Engine):
    """``Engine``'s admission and queue, with a loop that decodes one token per running row per step."""

    def __init__(
        self,
        adapter_set: AdapterSet,
        max_batch: int,
        wait_s: float,
        max_queue: int,
        metrics: ServerMetrics = NO_METRICS,
    ) -> None:
        self.waiting: deque[Job] = deque()  # taken from the queue, not yet admitted to the batch
        super().__init__(adapter_set, "step", max_batch, wait_s, max_queue, metrics)

    def retire(self, name: str) -> None:
        """Unload adapter ``name`` as soon as no running row uses it; its queued requests get 404."""
        self.retiring.add(name)
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(_WAKE)

    @property
    def queued(self) -> int:
        """Requests admitted and not yet running."""
        return self.queue.qsize() + len(self.waiting)

    def _loop(self) -> None:
        waiting = self.waiting
        rows: list[Row] = []
        batch: Batch | None = None
        while not self.closed:
            self._collect(waiting, block=not rows)
            new = self._admit(waiting, rows)
            with self.set.lock:
                try:
                    joined = self._prefill(new)
                    rows, batch = self._join(rows, batch, joined)
                    if rows:
                        rows, batch = self._step(rows, batch)
                except BaseException as err:  # a failed step fails the jobs in it; the worker lives on
                    self._fail([r.job for r in rows] + new, err)
                    rows, batch = [], None
                self._free_retired(rows)
            self.running = len(rows)
        self._collect(waiting, block=False)
        self._fail([r.job for r in rows], shutting_down())
        self._fail([j for j in waiting if j.future.set_running_or_notify_cancel()], shutting_down())

    def _collect(self, waiting: deque[Job], block: bool) -> None:
        """Move queued jobs to ``waiting``; when idle (``block``), wait for one, then up to ``wait_s`` for more."""
        deadline = None
        while True:
            try:
                if not block:
                    job = self.queue.get_nowait()
                elif not waiting:
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
            waiting.append(job)
            block = block and sum(j.rows for j in waiting) < self.max_batch

    def _admit(self, waiting: deque[Job], rows: list[Row]) -> list[Job]:
        """Take waiting jobs in arrival order while they share the running rows' group and fit in ``max_batch``.

        A job that does not is left at the head of the line, so the batch drains until it fits: nobody starves.
        """
        group = rows[0].job.request.adapter.group if rows else None
        free, taken = self.max_batch - len(rows), []
        while waiting:
            job, ref = waiting[0], waiting[0].request.adapter
            if ref.name is not None and (ref.name in self.retiring or ref.name not in self.set.names):
                waiting.popleft()
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(ApiError(404, f"adapter {ref.name!r} was unloaded", "model"))
                continue
            busy = bool(rows or taken)
            if busy and (ref.group != group or job.rows > free or ref.whole):
                break
            waiting.popleft()
            if ref.whole:
                with self.set.lock:
                    self.run([job])  # ``Engine.run``: one generate call, as in batch mode
                continue
            if job.future.set_running_or_notify_cancel():  # else abandoned while it waited
                group, free = ref.group, free - job.rows
                taken.append(job)
        return taken

    def _prefill(self, jobs: list[Job]) -> list[tuple[list[Row], Batch]]:
        """Tokenize and prefill ``jobs``: together, or each alone if that fails (so a bad one fails alone). Echo
        jobs need every position's logits, so they go alone."""
        ready = [j for j in jobs if self._fits(j)]
        plain = [j for j in ready if not j.request.echo]
        out = []
        for group in ([plain] if plain else []) + [[j] for j in ready if j.request.echo]:
            try:
                out.append(self._prefill_group(group))
            except Exception as err:
                if len(group) == 1:
                    group[0].future.set_exception(err)
                    continue
                for job in group:
                    try:
                        out.append(self._prefill_group([job]))
                    except Exception as alone:
                        job.future.set_exception(alone)
        return out

    def _prefill_group(self, jobs: list[Job]) -> tuple[list[Row], Batch]:
        """One left-padded forward over the jobs' prompts; each row's first token chosen from its last logits."""
        import torch

        rows = [row for job in jobs for row in self._rows(job)]
        width = max(len(r.ids) for r in rows)
        pad = self.set.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r.ids)) + r.ids for r in rows])
        mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        echo = jobs[0].request.echo
        logits, cache = self._forward(rows, ids, mask, positions, None, keep=0 if echo else 1)
        batch = Batch(cache, mask.to(logits.device), mask.sum(-1).to(logits.device))
        for k, row in enumerate(rows):
            row.prompt_logprobs = _prompt_logprobs(row.ids, logits[k], row.job.request.logprobs) if echo else []
            if row.job.request.score_only:
                row.done = True
            else:
                self._accept(row, logits[k, -1])
        return rows, batch

    def _rows(self, job: Job) -> list[Row]:
        """``job``'s rows, each with its prompt ids, the job's logits processors and, if seeded, its own generator."""
        settings = job.request.settings
        eos = end_ids(self.set.model, self.set.tokenizer, settings)
        pad = self.set.tokenizer.pad_token_id
        processors = logits_processors(settings, eos, eos[0] if pad is None else pad)
        seed = settings.seed if settings.do_sample else None
        rows = [Row(job, i, list(ids), set(eos), processors) for i, ids in enumerate(job.ids)]
        for row in rows if seed is not None else []:
            row.generator = _generator(seed + row.index, self.set.model.device)
        return rows

    def _forward(self, rows: list[Row], ids, mask, positions, cache, keep: int) -> tuple[torch.Tensor, object]:
        import torch

        device = self.set.model.device
        with torch.inference_mode(), self.set.routed([r.job.request.adapter.name for r in rows]) as extra:
            out = self.set.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=keep,
                **extra,
            )
        return out.logits, out.past_key_values

    def _accept(self, row: Row, logits: torch.Tensor) -> None:
        """Choose and record ``row``'s next token; stream its new text; settle its job when every row is done."""
        token = row.choose(logits)
        top = row.job.request.logprobs
        logprob = _token_logprob(logits, token, top) if top is not None else None
        row.accept(token, logprob, self.set.tokenizer)
        if row.job.first_token_at is None:
            row.job.first_token_at = time.monotonic()
            self.metrics.first_token(row.job.request.model, row.job.first_token_at - row.job.created)
        if row.job.cancelled.is_set():
            row.done = True
        if row.job.on_text is not None and not row.done:
            text = row.new_text(self.set.tokenizer)
            if text:
                row.job.on_text(row.index, text)

    def _join(self, rows: list[Row], batch: Batch | None, joined: list[tuple[list[Row], Batch]]):
        """Finish rows done at prefill; join the others' caches to the running batch."""
        for new, part in joined:
            keep = [k for k, r in enumerate(new) if not r.done]
            self._settle([r for r in new if r.done])
            if not keep:
                continue
            if len(keep) < len(new):
                part.keep(keep)
            if batch is None:
                batch = part
            else:
                batch.join(part)
            rows = rows + [new[k] for k in keep]
        return rows, batch

    def _step(self, rows: list[Row], batch: Batch) -> tuple[list[Row], Batch | None]:
        """Feed each row its newest token; choose the next; let finished rows leave."""
        import torch

        ids = torch.tensor([[r.pending] for r in rows])
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(rows), 1)], dim=1)
        logits, batch.cache = self._forward(rows, ids, mask, batch.positions[:, None], batch.cache, keep=1)
        batch.advance()
        self.metrics.step(len(rows))
        for k, row in enumerate(rows):
            self._accept(row, logits[k, -1])
        keep = [k for k, r in enumerate(rows) if not r.done]
        self._settle([r for r in rows if r.done])
        if not keep:
            return [], None
        if len(keep) < len(rows):
            batch.keep(keep)
        return [rows[k] for k in keep], batch

    def _settle(self, rows: list[Row]) -> None:
        """Record finished rows; answer a job once all of its rows are done."""
        for row in rows:
            job = row.job
            job.results = job.results or [None] * job.rows
            job.results[row.index] = row.completion(self.set.tokenizer)
            if all(r is not None for r in job.results) and not job.future.done():
                job.future.set_result(job.results)

    def _fail(self, jobs: list[Job], err: BaseException) -> None:
        err = err if isinstance(err, Exception) else RuntimeError(f"{type(err).__name__}: {err}")
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(err)

    def _free_retired(self, rows: list[Row]) -> None:
        busy = {r.job.request.adapter.name for r in rows}
        for name in [n for n in self.retiring if n not in busy]:
            if name in self.set.names:
                self.set.unload(name)
            self.retiring.discard(name)


_WAKE = object()  # put in the queue to wake an idle loop


def _generator(seed: int, device) -> torch.Generator:
    """A row's own random numbers, on the device its scores are on."""
    import torch

    return torch.Generator(device=device).manual_seed(seed)


def _token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """``token``'s log-probability under the raw logits (before temperature), and the ``top`` most likely."""
    lp = logits.float().log_softmax(-1)
    values, ids = lp.topk(top) if top else (lp[:0], lp[:0].long())
    return token, float(lp[token]), tuple(zip(ids.tolist(), values.tolist(), strict=True))


def _prompt_logprobs(ids: list[int], logits: torch.Tensor, top: int | None) -> list[TokenLogprob]:
    """Each prompt token's log-probability given the ones before it (the first has none); ``logits`` unpadded."""
    logits = logits[-len(ids) :]
    return [(ids[0], None, ()), *(_token_logprob(logits[t - 1], ids[t], top or 0) for t in range(1, len(ids)))]
