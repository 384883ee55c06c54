"""Our text metrics, shipped as local `evaluate` modules so evaluation never needs the Hub.

`evaluate.load("bleu")` downloads a script from the Hugging Face Hub; the folders here (`squad_f1`, `bleu`,
`rouge_l`, each holding a script of the same name) load from disk instead, work under
`HF_EVALUATE_OFFLINE=1`, combine with `evaluate.combine`, and keep every metric definition in one reviewed
place.

Loading a local module still writes: `evaluate` copies the script into `HF_MODULES_CACHE` (default
`$HF_HOME/modules`) to import it, and creates a folder under `HF_METRICS_CACHE`; both are read when
`evaluate` is first imported, so point `HF_HOME` at a writable place before that if the home directory is
read-only.

Items with several references each (E2E's MRs) are scored by `multi_reference_metrics` (plain functions in
`multi_reference`, not `evaluate` modules: its inputs are lists of lists, and a bootstrap wants per-item
statistics, `item_statistics` then `scores_from_statistics`).
"""

from __future__ import annotations

from pathlib import Path

import evaluate

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.metrics.multi_reference import (
    MULTI_REFERENCE_KEYS,
    ItemStatistics,
    item_statistics,
    multi_reference_metrics,
    scores_from_statistics,
)

METRICS_DIR: Path = Path(__file__).resolve().parent
"""Folder holding one `evaluate` module folder per metric."""

METRIC_NAMES: tuple[str, ...] = ("squad_f1", "bleu", "rouge_l")
"""Names `load_metric` accepts, in the order `text_metrics` computes them."""

TEXT_METRIC_KEYS: tuple[str, ...] = (
    "f1",
    "precision",
    "recall",
    "exact_match",
    "bleu",
    "sentence_bleu",
    "rouge_l",
)
"""Keys of the dict `text_metrics` returns."""


def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load one of our metrics from its folder in the package, without touching the network.

    Args:
        name (`str`):
            One of `"squad_f1"`, `"bleu"`, `"rouge_l"`.

    Returns:
        `evaluate.EvaluationModule`: a fresh module kept in memory (no arrow cache files per compute).

    Raises:
        `PeftGpt2Error`: if `name` is not one of our metrics.
    """
    if name not in METRIC_NAMES:
        raise PeftGpt2Error(f"Unknown metric {name!r}; choose one of: {', '.join(METRIC_NAMES)}.")
    # A folder whose script has the folder's name: evaluate takes its local branch, never the Hub one.
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)


def _check_pairs(predictions: list[str], references: list[str]) -> None:
    """Fail with a plain message before `evaluate` does with a less helpful one."""
    if len(predictions) != len(references):
        raise PeftGpt2Error(
            f"Got {len(predictions)} predictions but {len(references)} references; they must pair up one to one."
        )
    if not predictions:
        raise PeftGpt2Error("No predictions to score: the lists of predictions and references are empty.")
    for label, texts in (("prediction", predictions), ("reference", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise PeftGpt2Error(f"{label} {i} is a {type(text).__name__}, not a string.")


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Score generated texts against one reference each with all our metrics.

    Args:
        predictions (`list[str]`):
            Generated texts, one per item.
        references (`list[str]`):
            The reference for each item.

    Returns:
        `dict[str, float]`: `f1`, `precision`, `recall`, `exact_match` (SQuAD-style means), `bleu` (corpus),
        `sentence_bleu` (mean) and `rouge_l` (mean F-measure), all on a 0..1 scale.

    Raises:
        `PeftGpt2Error`: if the lists are empty, differ in length, or hold something other than strings.
    """
    _check_pairs(predictions, references)
    combined = evaluate.combine([load_metric(name) for name in METRIC_NAMES])
    results = combined.compute(predictions=list(predictions), references=list(references))
    return {key: float(results[key]) for key in TEXT_METRIC_KEYS}


def per_item_f1(predictions: list[str], references: list[str]) -> list[float]:
    """SQuAD-style token F1 of each item, in input order, for answers files.

    Args:
        predictions (`list[str]`):
            Generated answers, one per item.
        references (`list[str]`):
            The expected answer for each item.

    Returns:
        `list[float]`: one F1 in 0..1 per item; their mean is `text_metrics(...)["f1"]`.

    Raises:
        `PeftGpt2Error`: if the lists are empty, differ in length, or hold something other than strings.
    """
    _check_pairs(predictions, references)
    result = load_metric("squad_f1").compute(predictions=list(predictions), references=list(references), per_item=True)
    return [float(x) for x in result["per_item_f1"]]


__all__ = [
    "METRICS_DIR",
    "METRIC_NAMES",
    "MULTI_REFERENCE_KEYS",
    "TEXT_METRIC_KEYS",
    "ItemStatistics",
    "item_statistics",
    "load_metric",
    "multi_reference_metrics",
    "per_item_f1",
    "scores_from_statistics",
    "text_metrics",
]
