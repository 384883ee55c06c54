"""What scoring one model on one data set returns (`evaluate_model`, `score_choices`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EvalResult:
    """One model scored on one data set.

    Attributes:
        metrics (`dict[str, Any]`): The set's value of each metric it has (named as in
            `peft_gpt2.evaluation.metrics.table.METRICS`), plus counts and timings (``examples``, ``generation_time_s``,
            ``loss_time_s``, ...).
        answers (`list[dict]`): Per record, in input order, what an answers file holds: the input, the expected and
            generated text and its F1 (or, for multiple choice, each choice's log-likelihood and the picks).
        items (`dict[str, list]`): Per-record columns (`Metric.column`), one value or statistics row per record:
            every metric's value on any subset of the records follows from them
            (`peft_gpt2.evaluation.uncertainty` resamples them).
    """

    metrics: dict[str, Any]
    answers: list[dict]
    items: dict[str, list]


__all__ = ["EvalResult"]
