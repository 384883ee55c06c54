"""The one table of metrics: what each is called and shown as, which way is better, how a set's value follows from
its items', and on which data it exists. Everything that lists metrics reads it: evaluation's per-item scoring and
set values, the bootstrap (`peft_gpt2.evaluation.uncertainty`), compare's rows, the report's columns and the charts.

Adding a metric is a row here, plus, if it is computed from each item's text, its per-item statistic in `per_item`
(and for a corpus statistic the function of their sums, as `corpus_bleu`).
A set's value is always a function of sums over its items, so a bootstrap resample is scored the same way as the
whole set without scoring any text again:

- ``MEAN``: the mean of a per-item value (F1, sentence BLEU, ROUGE-L, accuracy);
- ``RATIO``: a per-item numerator summed over the summed per-item ``tokens`` (token accuracy; perplexity is the exp
  of the ratio);
- ``CORPUS``: a statistic (``finish``) of per-item sufficient statistics summed (corpus BLEU, NIST).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from peft_gpt2.evaluation.metrics.ngram_scores import corpus_nist
from peft_gpt2.evaluation.metrics.per_item import (
    bleu_stats,
    check_pairs,
    corpus_bleu,
    exact_match,
    f1,
    precision,
    recall,
    rouge_l,
    sentence_bleu,
)

MEAN, RATIO, CORPUS = "mean of items", "ratio of sums", "corpus statistic"
TEXT = "text"
"""Generated answers scored against a reference: every data set but multiple choice (also multi-reference data)."""
MULTI_REFERENCE = "multi_reference"
"""Only data with several references per item (E2E); its BLEU and ROUGE-L use them all (`multi_reference`)."""
MULTIPLE_CHOICE = "multiple_choice"
"""Choices scored by log-likelihood, nothing generated (`peft_gpt2.evaluation.multiple_choice`)."""
HIGHER, LOWER = True, False
OVERLAP = "overlap with the expected answer"

PANELS: dict[str, str] = {
    OVERLAP: "score (0–1, {better})",
    "perplexity": "perplexity ({better})",
    "token accuracy": "accuracy (0–1, {better})",
}
"""The report chart's panels, in order: title -> y-axis label (``{better}``: its metrics' direction)."""


@dataclass(frozen=True)
class Metric:
    """One metric, as every part of the package sees it.

    Attributes:
        name (`str`): Its key in evaluation's metrics, compare's rows and the report files.
        label (`str`): Its header in the report's tables and its name on the charts.
        fmt (`str`): The format spec of its value in tables and on bars.
        higher_is_better (`bool`): Its direction (`HIGHER` or `LOWER`).
        aggregate (`str`, *optional*): `MEAN`, `RATIO` or `CORPUS`; ``None`` for a metric never computed (METEOR).
        kind (`str`): The data that has it: `TEXT`, `MULTI_REFERENCE` or `MULTIPLE_CHOICE`.
        column (`str`): The per-item column in ``EvalResult.items`` (a value, a numerator, or statistics); its name
            by default.
        item (`Callable`, *optional*): ``(prediction, reference) -> column value`` for single-reference text
            metrics, scored once per item by `item_scores`.
        finish (`Callable`, *optional*): `CORPUS`: the summed statistics (1-d) -> the value; `RATIO`: applied to
            the ratio (perplexity: ``np.exp``).
        report (`bool`): A column of the report's tables (the others are in its JSON and CSV only).
        panel (`str`, *optional*): The chart panel (a `PANELS` title) it is drawn in.
    """

    name: str
    label: str
    fmt: str
    higher_is_better: bool
    aggregate: str | None
    kind: str
    column: str = ""
    item: Callable[[str, str], Any] | None = None
    finish: Callable | None = None
    report: bool = True
    panel: str | None = None

    def __post_init__(self) -> None:
        if not self.column:
            object.__setattr__(self, "column", self.name)

    @property
    def better(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


METRICS: tuple[Metric, ...] = (
    Metric("f1", "F1", ".3f", HIGHER, MEAN, TEXT, item=f1, panel=OVERLAP),
    Metric("precision", "precision", ".3f", HIGHER, MEAN, TEXT, item=precision, report=False),
    Metric("recall", "recall", ".3f", HIGHER, MEAN, TEXT, item=recall, report=False),
    Metric("exact_match", "EM", ".3f", HIGHER, MEAN, TEXT, item=exact_match, panel=OVERLAP),
    Metric("bleu", "BLEU", ".3f", HIGHER, CORPUS, TEXT, "bleu_stats", bleu_stats, corpus_bleu, panel=OVERLAP),
    Metric("sentence_bleu", "sentence BLEU", ".3f", HIGHER, MEAN, TEXT, item=sentence_bleu, report=False),
    Metric("rouge_l", "ROUGE-L", ".3f", HIGHER, MEAN, TEXT, item=rouge_l, panel=OVERLAP),
    Metric("nist", "NIST", ".2f", HIGHER, CORPUS, MULTI_REFERENCE, "nist_stats", finish=corpus_nist),
    Metric("cider", "CIDEr", ".2f", HIGHER, MEAN, MULTI_REFERENCE),
    Metric("rouge_l_e2e", "ROUGE-L (E2E)", ".3f", HIGHER, MEAN, MULTI_REFERENCE),
    Metric("meteor", "METEOR", ".3f", HIGHER, None, MULTI_REFERENCE),  # never computed: multi_reference.METEOR_REASON
    Metric("acc", "MC acc", ".3f", HIGHER, MEAN, MULTIPLE_CHOICE),  # lm_eval's acc and acc_norm
    Metric("acc_norm", "MC acc_norm", ".3f", HIGHER, MEAN, MULTIPLE_CHOICE),
    Metric("perplexity", "perplexity", ".2f", LOWER, RATIO, TEXT, "nll", finish=np.exp, panel="perplexity"),
    Metric("token_accuracy", "token accuracy", ".3f", HIGHER, RATIO, TEXT, "correct", panel="token accuracy"),
)
"""Every metric, in the order rows, columns and charts show them."""
BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
PER_ITEM: tuple[Metric, ...] = tuple(m for m in METRICS if m.item is not None)
"""The single-reference text metrics: each item scored once by `item_scores`, the set by `scores_from_items`."""


def select(kind: str | None = None, *, computed: bool = False) -> tuple[Metric, ...]:
    """The metrics of one `kind` (all by default) in table order; only those with an aggregate when `computed`
    (METEOR has none)."""
    return tuple(m for m in METRICS if (kind is None or m.kind == kind) and (not computed or m.aggregate is not None))


def names(kind: str | None = None, *, computed: bool = False) -> tuple[str, ...]:
    """The names of `select`'s metrics."""
    return tuple(m.name for m in select(kind, computed=computed))


def item_scores(predictions: list[str], references: list[str]) -> dict[str, list]:
    """Each item's share of every `PER_ITEM` metric, one column per metric (`Metric.column`), in input order.

    Raises:
        `PeftGpt2Error`: If the lists are empty, differ in length, or hold something other than strings.
    """
    check_pairs(predictions, references)
    columns: dict[str, list] = {m.column: [] for m in PER_ITEM}
    for prediction, reference in zip(predictions, references, strict=True):
        for m in PER_ITEM:
            columns[m.column].append(m.item(prediction, reference))
    return columns


def scores_from_items(items: Mapping[str, list], metrics: Iterable[Metric] = PER_ITEM) -> dict[str, float]:
    """The set's value of each of `metrics` (`MEAN` or `CORPUS`) from its items' columns: a mean is summed in item
    order and divided once; a corpus statistic gets the exact sums."""
    values = {}
    for m in metrics:
        column = items[m.column]
        if m.aggregate == MEAN:
            values[m.name] = sum(column) / len(column)
        elif m.aggregate == CORPUS:
            values[m.name] = float(m.finish([sum(c) for c in zip(*column, strict=True)]))
        else:
            raise ValueError(f"{m.name}: a {m.aggregate} is not scored from items here")
    return values


__all__ = [
    "BY_NAME",
    "CORPUS",
    "HIGHER",
    "LOWER",
    "MEAN",
    "METRICS",
    "MULTIPLE_CHOICE",
    "MULTI_REFERENCE",
    "PANELS",
    "PER_ITEM",
    "RATIO",
    "TEXT",
    "Metric",
    "item_scores",
    "names",
    "scores_from_items",
    "select",
]
