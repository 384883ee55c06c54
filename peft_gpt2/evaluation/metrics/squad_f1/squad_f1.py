"""SQuAD-style token F1 and exact match, as a local `evaluate` module.

Shipped inside the package so `evaluate.load` never has to reach the Hub; the arithmetic follows the
official SQuAD v2.0 evaluation script (normalization, multiset token overlap, empty-answer rule), with one
reference per item and scores on a 0..1 scale rather than the script's percentages. It is evaluation's own
per-item arithmetic (`peft_gpt2.evaluation.metrics.per_item.score_item`), so the two cannot drift apart.
"""

from __future__ import annotations

import datasets
import evaluate

from peft_gpt2.evaluation.metrics.per_item import score_item

_CITATION = """\
@inproceedings{rajpurkar-etal-2018-know,
    title = "Know What You Don't Know: Unanswerable Questions for {SQ}u{AD}",
    author = "Rajpurkar, Pranav and Jia, Robin and Liang, Percy",
    booktitle = "Proceedings of the 56th Annual Meeting of the Association for Computational Linguistics",
    year = "2018",
    pages = "784--789",
}
"""

_DESCRIPTION = """\
SQuAD-style answer overlap. Both strings are normalized (lower-cased, ASCII punctuation deleted - not
replaced by a space, so "Red-Headed" becomes "redheaded" - the whole words a/an/the removed, whitespace
collapsed) and split on whitespace. Precision, recall and F1 come from the multiset overlap of the tokens (a
repeated token counts at most as often as it appears on both sides); exact match compares the normalized
strings. If either side normalizes to no tokens, precision, recall and F1 are 1.0 when both are empty and
0.0 otherwise, as in the SQuAD v2.0 script. Scores are means over items, on a 0..1 scale.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`):
        Generated answers, one per item.
    references (`list[str]`):
        The expected answer for each item (exactly one reference per item).
    per_item (`bool`, *optional*, defaults to `False`):
        Also return `per_item_f1`, the F1 of each item in input order (for writing answers files).

Returns:
    `dict`: `f1`, `precision`, `recall`, `exact_match` (floats in 0..1, means over items), and `per_item_f1`
    (`list[float]`) when `per_item=True`.

Examples:
    >>> metric = evaluate.load("peft_gpt2/evaluation/metrics/squad_f1")
    >>> metric.compute(predictions=["It was Irene Adler."], references=["Irene Adler"])["recall"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadF1(evaluate.Metric):
    """Mean SQuAD token precision / recall / F1 and exact match of generated answers."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(
        self, predictions: list[str], references: list[str], per_item: bool = False
    ) -> dict[str, float | list[float]]:
        scores = [score_item(p, r) for p, r in zip(predictions, references, strict=True)]
        n = len(scores)
        if n == 0:
            raise ValueError("squad_f1 needs at least one prediction/reference pair.")
        precision, recall, f1, exact = (sum(column) / n for column in zip(*scores, strict=True))
        result: dict[str, float | list[float]] = {
            "f1": f1,
            "precision": precision,
            "recall": recall,
            "exact_match": exact,
        }
        if per_item:
            result["per_item_f1"] = [s[2] for s in scores]
        return result
