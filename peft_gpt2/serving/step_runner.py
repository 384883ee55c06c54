"""Decodes the running rows step by step over one key/value cache: what the scheduler's step mode runs.

A whole-``generate`` batch answers nobody until its longest row ends, and admits no one meanwhile: one 500-token
answer holds every short one hostage. Here each step feeds one token per running row; a row leaves the batch the
step it stops (its answer is sent at once) and jobs the scheduler admits join between steps (their prompts
prefilled, their caches joined to the batch's, ``kv_cache.Batch``). Rows of different adapters share a step through
PEFT's per-row routing; which rows may (``AdapterRef.group``) is the scheduler's choice (``policies``), as is who
runs when. Only this runner streams token by token and returns log-probabilities.

The runner holds no lock and no thread: the scheduler calls it from its worker, holding the adapter set's lock.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from peft_gpt2.inference.generation import TokenLogprob, end_ids
from peft_gpt2.serving.decode_rows import Row
from peft_gpt2.serving.jobs import Job, check_prompts
from peft_gpt2.serving.kv_cache import Batch
from peft_gpt2.serving.metrics import NO_METRICS
from peft_gpt2.serving.sampling import logits_processors

if TYPE_CHECKING:
    import torch

    from peft_gpt2.adapters.adapter_set import AdapterSet
    from peft_gpt2.serving.metrics import ServerMetrics


class StepRunner:
    """The running ``rows`` and their cache (``batch``): prefill joins jobs, ``step`` feeds one token per row."""

    def __init__(self, adapter_set: AdapterSet, metrics: ServerMetrics = NO_METRICS) -> None:
        self.set, self.metrics = adapter_set, metrics
        self.rows: list[Row] = []
        self.batch: Batch | None = None

    def join(self, jobs: list[Job]) -> None:
        """Prefill ``jobs`` (claimed by the scheduler); settle rows done at prefill; join the others to the batch."""
        for new, part in self._prefill(jobs):
            keep = [k for k, r in enumerate(new) if not r.done]
            self._settle([r for r in new if r.done])
            if not keep:
                continue
            if len(keep) < len(new):
                part.keep(keep)
            if self.batch is None:
                self.batch = part
            else:
                self.batch.join(part)
            self.rows = self.rows + [new[k] for k in keep]

    def step(self) -> None:
        """Feed each row its newest token; choose the next; let finished rows leave."""
        import torch

        rows, batch = self.rows, self.batch
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
            self.rows, self.batch = [], None
            return
        if len(keep) < len(rows):
            batch.keep(keep)
        self.rows = [rows[k] for k in keep]

    def drop(self) -> list[Job]:
        """Empty the batch (a step failed, or the server closes); the jobs its rows belonged to, to fail."""
        jobs = list(dict.fromkeys(r.job for r in self.rows))
        self.rows, self.batch = [], None
        return jobs

    def _prefill(self, jobs: list[Job]) -> list[tuple[list[Row], Batch]]:
        """Tokenize and prefill ``jobs``: together, or each alone if that fails (so a bad one fails alone). Echo
        jobs need every position's logits, so they go alone."""
        ready = [j for j in jobs if check_prompts(j, self.set.tokenizer)]
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

    def _settle(self, rows: list[Row]) -> None:
        """Record finished rows; answer a job once all of its rows are done."""
        for row in rows:
            job = row.job
            job.results = job.results or [None] * job.rows
            job.results[row.index] = row.completion(self.set.tokenizer)
            if all(r is not None for r in job.results) and not job.future.done():
                job.future.set_result(job.results)


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
