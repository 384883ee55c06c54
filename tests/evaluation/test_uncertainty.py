"""Bootstrap intervals and the paired test: seeded, honest about n, and silent about identical outputs."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import sacrebleu

from peft_gpt2.evaluation.metrics import item_scores, scores_from_items
from peft_gpt2.evaluation.metrics.per_item import corpus_bleu
from peft_gpt2.evaluation.uncertainty import (
    METRICS,
    bootstrap_interval,
    compare_rows,
    draws,
    paired_difference,
    statistic,
)

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "holmes", "watson", "baker", "street", "london", "fog"]


def texts(n: int, seed: int = 0, right_every: int = 5) -> tuple[list[str], list[str]]:
    """``n`` (generated, expected) pairs: every ``right_every``-th answer is exact, the rest are random words."""
    rng = random.Random(seed)
    expected = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(n)]
    generated = [" ".join(rng.choices(WORDS, k=rng.randint(0, 10))) for _ in range(n)]
    generated = [e if i % right_every == 0 else g for i, (g, e) in enumerate(zip(generated, expected, strict=True))]
    return generated, expected


def columns(n: int, seed: int = 0, right_every: int = 5) -> dict[str, list]:
    """Per-item columns as ``evaluate_model`` returns them, with made-up teacher-forced sums."""
    generated, expected = texts(n, seed, right_every)
    items = item_scores(generated, expected)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 20, size=n)
    items.update(nll=list(tokens * rng.uniform(1, 4, size=n)), tokens=list(tokens), correct=list(tokens // 3))
    return items


def test_item_scores_add_up_to_the_set_metrics():
    generated, expected = texts(60)
    items = item_scores(generated, expected)
    whole = scores_from_items(items)  # what evaluate_model reports
    for metric in ("f1", "precision", "recall", "exact_match", "sentence_bleu", "rouge_l", "bleu"):
        assert statistic(items, metric)(np.arange(60)[None])[0] == pytest.approx(whole[metric], abs=1e-12), metric


def test_corpus_bleu_is_recomputed_per_resample_as_sacrebleu_does():
    generated, expected = texts(40, seed=1)
    items = item_scores(generated, expected)
    idx = draws(40, resamples=30, seed=3)
    ours = statistic(items, "bleu")(idx)
    theirs = [
        sacrebleu.corpus_bleu([generated[i] for i in row], [[expected[i] for i in row]]).score / 100 for row in idx
    ]
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours.mean() != pytest.approx(
        np.mean(items["sentence_bleu"]), abs=1e-3
    )  # corpus BLEU, not an average of sentences
    for g, e in ((["a b"], ["a b c"]), ([""], ["x y"]), (["x y z w"], ["a b c d"])):  # short, empty, no match
        stats = np.array(item_scores(g, e)["bleu_stats"]).sum(0)
        assert corpus_bleu(stats) == pytest.approx(sacrebleu.corpus_bleu(g, [e]).score / 100)


def test_perplexity_per_resample_is_pooled_over_the_drawn_items():
    items = {"nll": [1.0, 9.0, 2.0], "tokens": [1, 3, 2], "correct": [1, 0, 2]}
    idx = np.array([[0, 0, 1], [2, 2, 2]])
    assert statistic(items, "perplexity")(idx) == pytest.approx([math.exp(11 / 5), math.exp(6 / 6)])
    assert statistic(items, "token_accuracy")(idx) == pytest.approx([2 / 5, 6 / 6])


@pytest.mark.parametrize("metric", METRICS)
def test_interval_contains_the_estimate_and_shrinks_with_n(metric):
    widths = []
    for n in (25, 400):
        estimate, lo, hi = bootstrap_interval(columns(n), metric)
        assert lo <= estimate <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(16) = 1/4 of the width at 16x the items


def test_bootstrap_is_seeded_and_takes_any_statistic():
    items = columns(50)
    assert bootstrap_interval(items, "bleu") == bootstrap_interval(items, "bleu", seed=0)
    assert bootstrap_interval(items, "bleu")[1:] != bootstrap_interval(items, "bleu", seed=1)[1:]
    values = np.asarray(items["f1"])
    median = bootstrap_interval(lambda idx: np.median(values[idx], axis=-1), n=50)
    assert median[1] <= median[0] <= median[2]
    with pytest.raises(ValueError, match="no resampling rule"):
        bootstrap_interval(items, "meteor")


def test_identical_outputs_are_no_difference():
    items = columns(30)
    for metric in METRICS:
        test = paired_difference(items, dict(items), metric)
        assert test == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0, "within_noise": True}, metric


def test_a_clear_difference_is_not_noise_and_the_test_is_paired():
    good, bad = columns(80, right_every=1), columns(80, right_every=1000)  # every answer exact vs almost none
    test = paired_difference(good, bad, "f1")
    assert test["diff"] > 0.5 and test["lo"] > 0 and not test["within_noise"] and test["p"] < 0.01
    # paired: a constant gain on every item is certain, however much the items differ from each other
    base = {"f1": list(np.linspace(0, 0.9, 40))}
    better = {"f1": [v + 0.01 for v in base["f1"]]}
    assert paired_difference(better, base, "f1")["lo"] == pytest.approx(0.01)
    assert bootstrap_interval(base, "f1")[2] - bootstrap_interval(base, "f1")[1] > 0.1  # yet the CIs overlap


def test_one_dominant_item_among_few_is_noise():
    """15 items, 5 differ, one by far the most: the bootstrap interval alone misses 0, the permutation test does not."""
    gaps = [-0.076, -0.026, 0, 0.035, 0, 0, -0.069, -0.333, -0.002, 0, 0, 0, 0, 0, 0]  # smollm2_alpaca, 8-bit vs LoRA
    test = paired_difference({"f1": [0.4 + g for g in gaps]}, {"f1": [0.4] * 15}, "f1")
    assert test["hi"] < 0 and test["p"] > 0.1 and test["within_noise"]


def test_false_differences_stay_rare():
    """Two rows that differ from a shared base on a few random items each, the same way: no real difference."""
    rng, wrong = np.random.default_rng(2), 0
    for trial in range(200):
        base = rng.uniform(0, 1, 30)
        a, b = base.copy(), base.copy()
        a[rng.choice(30, 5, replace=False)] = rng.uniform(0, 1, 5)
        b[rng.choice(30, 5, replace=False)] = rng.uniform(0, 1, 5)
        wrong += not paired_difference({"f1": list(a)}, {"f1": list(b)}, "f1", seed=trial)["within_noise"]
    assert wrong / 200 <= 0.08  # 5% expected (4% here); the bootstrap interval alone calls 11% of these real


def test_compare_rows_flat_keys_for_the_report():
    a, b = columns(20), columns(20, seed=1)
    out = compare_rows({"base": a, "lora": b, "same": dict(b)}, "lora")
    assert set(out["lora"]) == {f"{m}_{k}" for m in METRICS for k in ("lo", "hi")}
    assert out["same"]["f1_within_noise"] is True and out["same"]["f1_p"] == 1.0
    assert {"f1_diff", "f1_diff_lo", "f1_diff_hi", "f1_p", "f1_within_noise"} <= set(out["base"])
    for metric in METRICS:  # the same draws as a test of one pair
        pair = paired_difference(a, b, metric)
        assert out["base"][f"{metric}_diff_lo"] == pair["lo"] and out["base"][f"{metric}_p"] == pair["p"]
    alone = compare_rows({"base": a}, None)["base"]  # no reference: intervals only, the same ones
    assert alone == {k: v for k, v in out["base"].items() if k in alone} and len(alone) == 2 * len(METRICS)
    with pytest.raises(ValueError, match="same items"):
        compare_rows({"a": a, "b": columns(21)}, "a")
