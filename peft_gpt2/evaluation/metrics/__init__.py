"""Our text metrics: scored once per item for evaluation, and shipped as local `evaluate` modules for users.

Evaluation scores each item once (`item_scores`, with the per-item statistics of `per_item`) and derives the set's
values from those (`scores_from_items`), as the bootstrap derives a resample's; `table` lists every metric.

The same metrics load by name as `evaluate` modules (`load_metric`), from the folders here (`squad_f1`, `bleu`,
`rouge_l`, each holding a script of the same name): `evaluate.load("bleu")` would download a script from the
Hugging Face Hub, these load from disk, work under `HF_EVALUATE_OFFLINE=1` and combine with `evaluate.combine`;
tests/evaluation/test_metrics.py checks they give evaluation's numbers.

Loading a local module still writes: `evaluate` copies the script into `HF_MODULES_CACHE` (default
`$HF_HOME/modules`) to import it, and creates a folder under `HF_METRICS_CACHE`; both are read when
`evaluate` is first imported, so point `HF_HOME` at a writable place before that if the home directory is
read-only.

Items with several references each (E2E's MRs) are scored by `multi_reference` (`item_statistics`, then
`scores_from_statistics`: its inputs are lists of lists, and its NIST and CIDEr weigh n-grams by the whole set).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.metrics.table import item_scores, scores_from_items

if TYPE_CHECKING:
    import evaluate

METRICS_DIR: Path = Path(__file__).resolve().parent
"""Folder holding one `evaluate` module folder per metric."""

METRIC_NAMES: tuple[str, ...] = ("squad_f1", "bleu", "rouge_l")
"""Names `load_metric` accepts."""


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
    import evaluate

    # A folder whose script has the folder's name: evaluate takes its local branch, never the Hub one.
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)


__all__ = ["METRICS_DIR", "METRIC_NAMES", "item_scores", "load_metric", "scores_from_items"]
