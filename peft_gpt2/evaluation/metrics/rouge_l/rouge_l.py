"""Mean ROUGE-L F-measure from Google's `rouge_score`, as a local `evaluate` module.

Shipped inside the package so `evaluate.load` never has to reach the Hub; `rouge_score` does the scoring, so
the number matches the reference implementation.
"""

from __future__ import annotations

import datasets
import evaluate
from rouge_score import rouge_scorer

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    pages = "74--81",
}
"""

_DESCRIPTION = """\
ROUGE-L: the F-measure of the longest common subsequence (LCS) of tokens between each prediction and its
reference, averaged over items (0..1). Scored by `rouge_score.rouge_scorer.RougeScorer(["rougeL"])` without
a stemmer; its tokenizer lower-cases and splits on anything that is not a letter or digit. Sentence-level
"rougeL", not the summary-level "rougeLsum".
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`):
        Generated texts, one per item.
    references (`list[str]`):
        The reference text for each item (exactly one reference per item).

Returns:
    `dict`: `rouge_l`, the mean ROUGE-L F-measure in 0..1.

Examples:
    >>> metric = evaluate.load("peft_gpt2/evaluation/metrics/rouge_l")
    >>> metric.compute(predictions=["the cat sat"], references=["the cat sat"])["rouge_l"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    """Mean sentence-level ROUGE-L F-measure, one reference per prediction, no stemming."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        if not predictions:
            raise ValueError("rouge_l needs at least one prediction/reference pair.")
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        scores = [
            scorer.score(target=r, prediction=p)["rougeL"].fmeasure
            for p, r in zip(predictions, references, strict=True)
        ]
        return {"rouge_l": sum(scores) / len(scores)}
