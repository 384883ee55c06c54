"""What each single-reference text metric takes from one item (a generated text and its reference), and the corpus
statistic BLEU computes from their sums.

Evaluation scores every item once with these (`peft_gpt2.evaluation.metrics.item_scores`); a set's value, and any
bootstrap resample's, then follows from the items' values alone (`peft_gpt2.evaluation.metrics.table`). The
`evaluate` modules beside this file give the same numbers to users who load them by name; `squad_f1` imports its
arithmetic from here.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Sequence

from peft_gpt2.errors import PeftGpt2Error

BLEU_ORDER = 4
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, delete punctuation, drop articles and collapse whitespace, in the SQuAD v2.0 script's order."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def score_item(prediction: str, reference: str) -> tuple[float, float, float, float]:
    """``(precision, recall, f1, exact_match)`` of one answer against one reference, as the SQuAD v2.0 script: tokens
    of the normalized strings, multiset overlap; if either side has no token, all four are 1.0 when both are empty,
    else 0.0."""
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    exact = float(pred_tokens == ref_tokens)
    if not pred_tokens or not ref_tokens:
        return exact, exact, exact, exact
    num_same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if num_same == 0:
        return 0.0, 0.0, 0.0, exact
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return precision, recall, 2 * precision * recall / (precision + recall), exact


def precision(prediction: str, reference: str) -> float:
    return score_item(prediction, reference)[0]


def recall(prediction: str, reference: str) -> float:
    return score_item(prediction, reference)[1]


def f1(prediction: str, reference: str) -> float:
    return score_item(prediction, reference)[2]


def exact_match(prediction: str, reference: str) -> float:
    return score_item(prediction, reference)[3]


@functools.cache
def _sentence_bleu():
    """sacrebleu's ``sentence_bleu`` defaults ("13a", case-sensitive, "exp" smoothing, effective order), built once."""
    from sacrebleu.metrics.bleu import BLEU

    return BLEU(effective_order=True)


def sentence_bleu(prediction: str, reference: str) -> float:
    """``sacrebleu.sentence_bleu``, 0..1."""
    return _sentence_bleu().sentence_score(prediction, [reference]).score / 100


def bleu_stats(prediction: str, reference: str) -> list[int]:
    """sacrebleu's sufficient statistics of one item: hypothesis and reference length, matching then total 1- to
    4-grams; summed over items they are what ``sacrebleu.corpus_bleu`` scores (`corpus_bleu`)."""
    score = _sentence_bleu().sentence_score(prediction, [reference])
    return [score.sys_len, score.ref_len, *score.counts, *score.totals]


def corpus_bleu(sums: Sequence[float]) -> float:
    """Corpus BLEU, 0..1, from summed `bleu_stats` (or `multi_reference` ones): sacrebleu's own arithmetic
    (``BLEU.compute_bleu``, "exp" smoothing, no effective order), so it equals ``sacrebleu.corpus_bleu`` exactly."""
    from sacrebleu.metrics.bleu import BLEU

    s = [int(v) for v in sums]  # a resample's sums are whole floats; sacrebleu formats the lengths as integers
    order = BLEU_ORDER
    score = BLEU.compute_bleu(
        correct=s[2 : 2 + order], total=s[2 + order :], sys_len=s[0], ref_len=s[1], smooth_method="exp"
    )
    return score.score / 100


@functools.cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """rouge-score's sentence-level ROUGE-L F-measure, no stemmer."""
    return _rouge().score(target=reference, prediction=prediction)["rougeL"].fmeasure


def check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    """Fail with a plain message on inputs that would otherwise be mis-scored or fail obscurely."""
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


__all__ = [
    "bleu_stats",
    "check_pairs",
    "corpus_bleu",
    "exact_match",
    "f1",
    "normalize_answer",
    "precision",
    "recall",
    "rouge_l",
    "score_item",
    "sentence_bleu",
]
