"""Corpus BLEU and mean sentence BLEU from sacrebleu, as a local `evaluate` module.

Shipped inside the package so `evaluate.load` never has to reach the Hub. sacrebleu does the scoring so the
numbers match what others report with its defaults; this module only rescales them from 0..100 to 0..1.
"""

from __future__ import annotations

import datasets
import evaluate
import sacrebleu

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
BLEU computed by sacrebleu with its defaults: the "13a" tokenizer (mteval-v13a, sacrebleu's default), case
sensitive, n-grams up to 4. `bleu` is corpus BLEU (`sacrebleu.corpus_bleu`): n-gram counts pooled over all
items, "exp" smoothing for an order with no match, and no effective order, so it is 0.0 when no prediction in
the corpus has 4 tokens. `sentence_bleu` is the mean over items of `sacrebleu.sentence_bleu`, which uses
"exp" smoothing (its default) and effective order, so a short answer is not zeroed merely for lacking
4-grams. Scores are sacrebleu's divided by 100 (0..1; a perfect match can read 1.0000000000000004).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`):
        Generated texts, one per item.
    references (`list[str]`):
        The reference text for each item (exactly one reference per item).

Returns:
    `dict`: `bleu` (corpus BLEU), `sentence_bleu` (mean sentence BLEU), `brevity_penalty` (corpus), all floats
    in 0..1, and `precisions` (`list[float]`, corpus 1- to 4-gram precisions in 0..1).

Examples:
    >>> metric = evaluate.load("peft_gpt2/evaluation/metrics/bleu")
    >>> texts = ["the cat sat on the mat"]
    >>> round(metric.compute(predictions=texts, references=texts)["bleu"], 6)
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    """sacrebleu corpus BLEU and mean sentence BLEU, one reference per prediction, on a 0..1 scale."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float | list[float]]:
        if not predictions:
            raise ValueError("bleu needs at least one prediction/reference pair.")
        corpus = sacrebleu.corpus_bleu(list(predictions), [list(references)])
        sentences = [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(predictions, references, strict=True)]
        return {
            "bleu": corpus.score / 100,
            "sentence_bleu": sum(sentences) / len(sentences) / 100,
            "brevity_penalty": corpus.bp,
            "precisions": [p / 100 for p in corpus.precisions],
        }
