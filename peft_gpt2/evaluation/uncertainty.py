"""How sure a comparison is: bootstrap intervals over test items, and a paired test of a row against a reference.

    python -c "from peft_gpt2.evaluation.uncertainty import bootstrap_interval as b; print(b({'f1': [0, 1, 1]}, 'f1'))"

Every metric here is a function of per-item statistics summed over the items (what ``evaluate_model`` returns as
``items``; each metric's aggregate is in `peft_gpt2.evaluation.metrics.table`): a mean is ``sum(x) / sum(1)``, corpus
BLEU comes from the summed n-gram counts and lengths (the function that gives the whole set's BLEU), perplexity is
``exp(sum nll / sum tokens)`` and token accuracy ``sum correct / sum tokens``. So a corpus-level metric is
recomputed on every resample from its sums, never averaged per item.

Interval of a metric: percentile bootstrap over items. Draw ``n`` of the ``n`` items with replacement
``RESAMPLES`` times (``numpy.random.default_rng(seed)``; the draws depend only on ``n`` and the seed), recompute
the metric on each draw, read the 2.5th and 97.5th percentiles.

A row against the reference row, on the same items (paired):

- the difference's interval: the same bootstrap draws for both rows, the difference recomputed per draw;
- ``p``: a paired permutation test (approximate randomization): swap the two rows' outputs on each item with
  probability 1/2, ``RESAMPLES`` times, and count how often the difference is at least as large as the one seen.
  It is exact under "the two rows are interchangeable", where the bootstrap is optimistic with few items;
- *within noise* unless both agree: the interval contains 0 or ``p >= 0.05``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from peft_gpt2.evaluation.metrics import table

RESAMPLES = 1000  # bounds move by 2-3% of the interval width from seed to seed (F1, BLEU, 106 items)
SEED = 0
CONFIDENCE = 0.95
METRICS = table.names(table.TEXT, computed=True)
"""Metrics `additive` recomputes from ``evaluate_model``'s ``items`` for every generation data set."""
MULTI_REFERENCE_METRICS = table.names(table.MULTI_REFERENCE, computed=True)
"""And for multi-reference (E2E) data, whose ``items`` also hold ``nist_stats``, ``cider``, ``rouge_l_e2e``."""
CHOICE_METRICS = table.names(table.MULTIPLE_CHOICE, computed=True)
"""Multiple-choice data (`peft_gpt2.evaluation.multiple_choice`): its items hold only these."""
_TEST_KEYS = {"diff": "diff", "lo": "diff_lo", "hi": "diff_hi", "p": "p", "within_noise": "within_noise"}

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps a ``(resamples, n)`` matrix of item indices to one metric value per row of the matrix."""
Finish = Callable[[np.ndarray], np.ndarray]
"""Maps summed per-item statistics ``(..., k)`` to the metric ``(...)``."""


def draws(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``(resamples, n)`` item indices drawn with replacement; the same for every call with the same arguments."""
    if n < 1:
        raise ValueError("no items to resample")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of the ``n`` items is drawn in each row of `idx`: ``(resamples, n)``."""
    rows = np.arange(idx.shape[0])[:, None] * n
    return np.bincount((rows + idx).ravel(), minlength=idx.shape[0] * n).reshape(idx.shape[0], n).astype(np.float64)


def _ratio(then: Callable | None) -> Finish:
    def finish(sums: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            value = sums[..., 0] / sums[..., 1]  # nan: a draw of only dropped items (no tokens)
            return then(value) if then else value

    return finish


def _rowwise(finish: Callable[[np.ndarray], float]) -> Finish:
    """A corpus statistic of one set of sums, applied to every resample's: the set's value is the same function."""
    return lambda sums: np.apply_along_axis(finish, -1, sums)


def additive(items: Mapping[str, list], metric: str) -> tuple[np.ndarray, Finish]:
    """``(x, finish)``: per-item statistics ``(n, k)`` whose (weighted) sum `finish` turns into the metric, by the
    metric's aggregate in `peft_gpt2.evaluation.metrics.table`."""
    m = table.BY_NAME.get(metric)
    if m is None or m.aggregate is None:
        known = ", ".join(table.names(computed=True))
        raise ValueError(f"no resampling rule for metric {metric!r}; known: {known}")
    column = np.asarray(items[m.column], dtype=np.float64)
    if m.aggregate == table.CORPUS:
        return column.reshape(len(column), -1), _rowwise(m.finish)
    denominator = np.ones_like(column) if m.aggregate == table.MEAN else np.asarray(items["tokens"], np.float64)
    return np.stack([column, denominator], axis=1), _ratio(m.finish)


def statistic(items: Mapping[str, list], metric: str) -> Statistic:
    """The `Statistic` of a known metric (`METRICS`) over ``evaluate_model``'s per-item columns."""
    x, finish = additive(items, metric)
    return lambda idx: finish(counts(np.asarray(idx), len(x)) @ x)


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]  # inf - inf (two overflowed perplexities) is no evidence either way
    if not len(values):
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def bootstrap_interval(
    items: Mapping[str, list] | Statistic,
    metric: str | None = None,
    *,
    n: int | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, float]:
    """``(estimate, lo, hi)``: a metric on all items and its percentile bootstrap interval over items.

    Args:
        items (`Mapping[str, list]` or `Statistic`): per-item columns (with `metric`), or any `Statistic` (with
            `n`, the number of items), e.g. ``lambda idx: np.array([my_corpus_metric(row) for row in idx])``.
        metric (`str`, *optional*): one of `METRICS`, when `items` are columns.
        resamples, seed, confidence: the bootstrap's size, seed and coverage.
    """
    if callable(items):
        if n is None:
            raise ValueError("a Statistic needs n, the number of items")
        stat = items
    else:
        stat, n = statistic(items, metric or ""), len(next(iter(items.values())))
    estimate = float(stat(np.arange(n)[None])[0])
    return (estimate, *_interval(stat(draws(n, resamples, seed)), confidence))


def permutation_p(x: np.ndarray, ref: np.ndarray, finish: Finish, *, resamples: int = RESAMPLES, seed: int = SEED):
    """Two-sided paired permutation p of ``finish(sum x) - finish(sum ref)``: each item's pair swapped at random."""
    observed = float(finish(x.sum(0)) - finish(ref.sum(0)))
    if math.isnan(observed):  # e.g. both perplexities overflowed: nothing to test
        return 1.0
    swap = np.random.default_rng([seed, 1]).integers(0, 2, size=(resamples, len(x))).astype(np.float64)
    moved = swap @ (ref - x)  # what swapping the chosen items moves from one row's sums to the other's
    with np.errstate(invalid="ignore"):
        null = np.abs(finish(x.sum(0) + moved) - finish(ref.sum(0) - moved))
    tolerance = 1e-9 * max(1.0, abs(observed)) if math.isfinite(observed) else 0.0  # float noise ties
    return float((1 + np.sum(null >= abs(observed) - tolerance)) / (resamples + 1))


def paired_difference(
    items: Mapping[str, list],
    reference: Mapping[str, list],
    metric: str,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict:
    """``metric(items) - metric(reference)`` on the same items: its bootstrap interval and permutation test.

    Returns:
        `dict`: ``diff`` (on all items), ``lo``, ``hi`` (paired bootstrap interval: both rows on the same draws),
        ``p`` (paired permutation test, two-sided, never 0; 1.0 for identical outputs) and ``within_noise`` (the
        interval contains 0 or ``p >= 1 - confidence``).
    """
    kwargs = {"resamples": resamples, "seed": seed, "confidence": confidence}
    row = compare_rows({"row": items, "reference": reference}, "reference", (metric,), **kwargs)["row"]
    return {key: row[f"{metric}_{name}"] for key, name in _TEST_KEYS.items()}


def _paired(x: np.ndarray, ref: np.ndarray, finish: Finish, diffs: np.ndarray, **kwargs) -> dict:
    """The test of one row against the reference, from the per-draw differences of the shared bootstrap."""
    confidence = kwargs.pop("confidence")
    with np.errstate(invalid="ignore"):
        lo, hi = _interval(diffs, confidence)
    p = permutation_p(x, ref, finish, **kwargs)
    within = not lo > 0 and not hi < 0  # written so that nan bounds (nothing to resample) count as no evidence
    return {
        "diff": float(finish(x.sum(0)) - finish(ref.sum(0))),
        "lo": lo,
        "hi": hi,
        "p": p,
        "within_noise": bool(within or p >= 1 - confidence),
    }


def compare_rows(
    items: Mapping[str, Mapping[str, list]],
    reference: str | None,
    metrics: tuple[str, ...] = table.names(computed=True),
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, dict]:
    """Intervals of every metric for every row of one data set, and each row's paired test against `reference`.

    All rows share one set of bootstrap draws (the same items), so this is ``rows x metrics`` vectorized passes.

    Args:
        items (`Mapping[str, Mapping[str, list]]`): ``{row label: per-item columns}``, all on the same items.
        reference (`str`, *optional*): the label every other row is tested against; ``None`` for no tests.

    Returns:
        `dict[str, dict]`: per row, flat keys ``<metric>_lo``, ``<metric>_hi`` and, for rows other than the
        reference, ``<metric>_diff``, ``<metric>_diff_lo``, ``<metric>_diff_hi``, ``<metric>_p``,
        ``<metric>_within_noise`` (see `paired_difference`).
    """
    sizes = {len(next(iter(columns.values()))) for columns in items.values()}
    if len(sizes) != 1:
        raise ValueError(f"a paired comparison needs the same items in every row, got sizes {sorted(sizes)}")
    n = sizes.pop()
    weights = counts(draws(n, resamples, seed), n)
    out: dict[str, dict] = {label: {} for label in items}
    for metric in metrics:
        m = table.BY_NAME.get(metric)
        if m is not None and m.aggregate is not None and not all(m.column in c for c in items.values()):
            continue  # a metric of other data (NIST: multi-reference; acc: multiple choice); unknown ones raise below
        stats = {label: additive(columns, metric) for label, columns in items.items()}
        drawn = {label: finish(weights @ x) for label, (x, finish) in stats.items()}
        for label, (x, finish) in stats.items():
            lo, hi = _interval(drawn[label], confidence)
            out[label].update({f"{metric}_lo": lo, f"{metric}_hi": hi})
            if reference is not None and label != reference:
                diffs = drawn[label] - drawn[reference]
                test = _paired(
                    x, stats[reference][0], finish, diffs, resamples=resamples, seed=seed, confidence=confidence
                )
                out[label].update({f"{metric}_{_TEST_KEYS[k]}": v for k, v in test.items()})
    return out


__all__ = [
    "CHOICE_METRICS",
    "CONFIDENCE",
    "METRICS",
    "RESAMPLES",
    "SEED",
    "additive",
    "bootstrap_interval",
    "compare_rows",
    "counts",
    "draws",
    "paired_difference",
    "permutation_p",
    "statistic",
]
