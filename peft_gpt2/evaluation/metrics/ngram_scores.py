"""The E2E scripts' n-gram formulas, per item: NIST-5 statistics, COCO's ROUGE-L and CIDEr-D, and their tokenizers.

Split from `multi_reference` (which sums these over items and documents how each follows the official
`e2e-metrics` scripts); checked against those scripts in tests/evaluation/test_metrics.py.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

NIST_ORDER = 5
CIDER_ORDER = 4
CIDER_SIGMA = 6.0
ROUGE_L_E2E_BETA = 1.2

# What the COCO scripts delete after PTB tokenization, plus the raw brackets and quotes PTB would have
# rewritten into -LRB-, ``, '' and so on before that deletion.
_COCO_PUNCTUATION = frozenset(
    {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"', "(", ")", "{", "}"}
)
_COCO_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-./]\w+)*|\.\.\.|--|\S")
_TOKENIZER_13A = Tokenizer13a()
def coco_tokens(text: str) -> list[str]:
    """Lower-cased tokens close to what the COCO caption scripts score (Stanford PTBTokenizer, punctuation dropped).

    The official scripts start a Java tokenizer; this regex does without: words (keeping inner hyphens,
    periods and slashes, so "family-friendly" and "3.5" stay whole), clitics split the PTB way ("it's" -> "it
    's", "don't" -> "do n't"), "\u00a3" written "#" as PTB does, and the punctuation COCO deletes removed. Of the
    4,672 references in data/e2e/devset.csv, 6 tokenize differently from PTB 3.4.1 (it keeps "center." before a
    comma, and a "-" before a number); rarer inputs ("u.s.", "o'brien") differ too.
    """
    tokens = _COCO_TOKEN.findall(text.lower().replace("\u00a3", "#"))  # PTB writes the pound sign as "#"
    return [t for t in tokens if t not in _COCO_PUNCTUATION]


def mteval_tokens(text: str) -> list[str]:
    """Lower-cased tokens of mteval-v13a, as `e2e-metrics` runs it (sacrebleu's "13a" tokenizer reproduces it)."""
    return _TOKENIZER_13A(text.lower().rstrip()).split()


def _ngrams(tokens: Sequence[str], max_order: int) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram of `tokens`, orders 1..`max_order` together."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def _max_counts(counters: Sequence[Counter[tuple[str, ...]]]) -> Counter[tuple[str, ...]]:
    """Each n-gram's largest count in any one reference: the clip of BLEU and NIST with several references."""
    merged: Counter[tuple[str, ...]] = Counter()
    for counter in counters:
        merged |= counter
    return merged


def nist_rows(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """NIST statistics per item as e2e-metrics' pymteval counts them, information weights from all references."""
    hyps = [mteval_tokens(p) for p in predictions]
    refs = [[mteval_tokens(r) for r in item] for item in references]
    ref_counts = [[_ngrams(r, NIST_ORDER) for r in item] for item in refs]
    corpus: Counter[tuple[str, ...]] = Counter()
    for item in ref_counts:
        for counts in item:
            corpus.update(counts)
    total_words = sum(len(r) for item in refs for r in item)

    def info(ngram: tuple[str, ...]) -> float:
        # Doddington's information: log2(count(w1..wn-1) / count(w1..wn)), the unigram's prefix count being the
        # number of reference words. A matched n-gram is in some reference, so its count is positive.
        prefix = corpus[ngram[:-1]] if len(ngram) > 1 else total_words
        return math.log2(prefix / corpus[ngram])

    rows = []
    for hyp, item_refs, item_counts in zip(hyps, refs, ref_counts, strict=True):
        clip = _max_counts(item_counts)
        matched = [0.0] * NIST_ORDER
        for ngram, count in _ngrams(hyp, NIST_ORDER).items():
            if ngram in clip:
                matched[len(ngram) - 1] += info(ngram) * min(count, clip[ngram])
        produced = [max(len(hyp) - n + 1, 0) for n in range(1, NIST_ORDER + 1)]
        rows.append([*matched, *produced, sum(len(r) for r in item_refs) / len(item_refs)])
    return np.asarray(rows, dtype=np.float64)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_e2e(hyp: list[str], refs: list[list[str]]) -> float:
    """COCO's ROUGE-L: LCS precision and recall, each maximized over the references, F-beta with beta 1.2."""
    if not hyp:
        return 0.0
    lcs = [_lcs(r, hyp) for r in refs]
    precision = max(n / len(hyp) for n in lcs)
    recall = max(n / len(r) if r else 0.0 for n, r in zip(lcs, refs, strict=True))
    if precision == 0 or recall == 0:
        return 0.0
    beta2 = ROUGE_L_E2E_BETA**2
    return (1 + beta2) * precision * recall / (recall + beta2 * precision)


def cider_scores(hyps: list[list[str]], refs: list[list[list[str]]]) -> np.ndarray:
    """COCO's CIDEr-D per item (`pycocoevalcap.cider.cider_scorer`), its corpus score being their mean.

    Document frequency of an n-gram: the number of items whose references contain it; idf uses log(items).
    Each n-gram order gives a cosine of tf-idf vectors where the output's weights are clipped by the reference's,
    damped by exp(-delta^2 / 2 sigma^2); orders are averaged, references averaged, and the result times 10.
    As in COCO, delta is the difference in number of bigrams (its `length` counts n-grams of index 1).
    """
    hyp_counts = [_ngrams(h, CIDER_ORDER) for h in hyps]
    ref_counts = [[_ngrams(r, CIDER_ORDER) for r in item] for item in refs]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for item in ref_counts:
        document_frequency.update({ngram for counts in item for ngram in counts})
    log_items = math.log(len(refs))

    def vector(counts: Counter[tuple[str, ...]]) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(CIDER_ORDER)]
        for ngram, tf in counts.items():
            vec[len(ngram) - 1][ngram] = tf * (log_items - math.log(max(1.0, document_frequency[ngram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
        bigrams = sum(tf for ngram, tf in counts.items() if len(ngram) == 2)
        return vec, norms, bigrams

    scores = []
    for hyp, item in zip(hyp_counts, ref_counts, strict=True):
        vec_h, norm_h, len_h = vector(hyp)
        total = 0.0
        for ref in item:
            vec_r, norm_r, len_r = vector(ref)
            damp = math.exp(-((len_h - len_r) ** 2) / (2 * CIDER_SIGMA**2))
            for n in range(CIDER_ORDER):
                dot = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec_h[n].items())
                if norm_h[n] != 0 and norm_r[n] != 0:
                    dot /= norm_h[n] * norm_r[n]
                total += dot * damp
        scores.append(total / CIDER_ORDER / len(item) * 10.0)
    return np.asarray(scores, dtype=np.float64)


def nist_length_penalty(ratio: float) -> float:
    """NIST's brevity factor: 1 from ratio 1 up, 0.5 at ratio 2/3, exp(-beta log^2 ratio) in between."""
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    beta = -math.log(0.5) / math.log(1.5) ** 2
    return math.exp(-beta * math.log(ratio) ** 2)


def corpus_nist(sums: Sequence[float]) -> float:
    """NIST-5 from per-item NIST statistics (`nist_rows`) summed over a set or a resample of it."""
    precision = sum(sums[k] / max(sums[NIST_ORDER + k], 1.0) for k in range(NIST_ORDER))
    ratio = sums[NIST_ORDER] / sums[2 * NIST_ORDER] if sums[2 * NIST_ORDER] else math.inf
    return float(precision * nist_length_penalty(ratio))
