"""Hand-worked checks of the local `evaluate` metric modules, and that they load and combine offline."""

from __future__ import annotations

import csv
import math
import socket
from pathlib import Path

import evaluate
import pytest
import sacrebleu
from nltk.translate.nist_score import corpus_nist, sentence_nist
from rouge_score import rouge_scorer

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.metrics import METRIC_NAMES, METRICS_DIR, item_scores, load_metric, scores_from_items
from peft_gpt2.evaluation.metrics.multi_reference import MULTI_REFERENCE_KEYS, item_statistics, scores_from_statistics


@pytest.fixture(scope="module", autouse=True)
def _evaluate_caches(tmp_path_factory):
    """`evaluate` copies module scripts into HF_MODULES_CACHE; keep that out of the user's ~/.cache.

    The paths are read when `evaluate` is imported, so patch its config rather than the environment.
    """
    root = tmp_path_factory.mktemp("hf-evaluate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate.config, "HF_MODULES_CACHE", root / "modules")
        mp.setattr(evaluate.config, "HF_METRICS_CACHE", root / "metrics")
        yield


@pytest.fixture()
def offline(monkeypatch):
    """Offline mode on, and any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """What evaluation reports for single-reference text: each item scored once, the set from the items."""
    return scores_from_items(item_scores(predictions, references))


def multi_reference_metrics(predictions: list[str], references: list[list[str]]) -> dict:
    """What evaluation reports for multi-reference text: per-item statistics once, the set from their sums."""
    return scores_from_statistics(item_statistics(predictions, references))


def squad(prediction: str, reference: str) -> dict[str, float]:
    return load_metric("squad_f1").compute(predictions=[prediction], references=[reference])


# --- SQuAD F1 / exact match ---------------------------------------------------------------------------------


def test_squad_extra_words_cost_precision_not_recall():
    # "it was irene adler" (4 tokens) vs "irene adler" (2): 2 shared -> P 2/4, R 2/2, F1 2*.5*1/1.5 = 2/3.
    result = squad("It was Irene Adler.", "Irene Adler")
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(1.0)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["exact_match"] == 0.0


def test_squad_punctuation_is_deleted_not_spaced():
    # "The Red-Headed League" -> "redheaded league" (hyphen deleted, "the" dropped): 2 tokens.
    # "red headed league" stays 3 tokens; only "league" is shared -> P 1/3, R 1/2, F1 (1/3)/(5/6) = 0.4.
    result = squad("red headed league", "The Red-Headed League")
    assert result["precision"] == pytest.approx(1 / 3)
    assert result["recall"] == pytest.approx(1 / 2)
    assert result["f1"] == pytest.approx(0.4)
    assert result["exact_match"] == 0.0
    # Same normalized string "redheaded league" on both sides: exact match.
    assert squad("red-headed league!", "The Red-Headed League")["exact_match"] == 1.0
    assert squad("Redheaded League", "The Red-Headed League")["exact_match"] == 1.0


def test_squad_articles_are_whole_words_only():
    assert squad("An anthem", "anthem")["exact_match"] == 1.0  # "an" dropped, "anthem" kept
    assert squad("the Theory", "a theory")["exact_match"] == 1.0
    assert squad("Thebes", "bes")["f1"] == 0.0  # "the" inside a word is not an article
    assert squad("Baker  Street\n", " baker street")["exact_match"] == 1.0  # whitespace collapsed


def test_squad_repeated_tokens_count_by_multiset():
    # pred {dog:3, cat:1}, ref {dog:1, cat:2}: overlap takes min counts = dog 1 + cat 1 = 2.
    # P 2/4, R 2/3, F1 2*(1/2)(2/3)/(7/6) = 4/7. (Counting pred tokens found in ref would give P 4/4.)
    result = squad("dog dog dog cat", "dog cat cat")
    assert result["precision"] == pytest.approx(1 / 2)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(4 / 7)
    # pred {dog:2, cat:1}, ref {dog:3}: overlap dog 2 -> P 2/3, R 2/3. (Set overlap would give 1/3 each.)
    result = squad("dog dog cat", "dog dog dog")
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("", "", 1.0),  # both empty: full marks, as in the SQuAD v2 script
        ("The.", "", 1.0),  # "The." normalizes to nothing, so both are empty
        ("", "Irene Adler", 0.0),
        ("Irene Adler", "a", 0.0),  # reference normalizes to nothing
    ],
)
def test_squad_empty_after_normalization(prediction: str, reference: str, expected: float):
    result = squad(prediction, reference)
    assert result["f1"] == result["precision"] == result["recall"] == expected
    assert result["exact_match"] == expected


def test_squad_scores_are_means_over_items():
    predictions, references = ["Irene Adler", "Holmes"], ["irene adler.", "Watson"]
    result = load_metric("squad_f1").compute(predictions=predictions, references=references)
    assert result["f1"] == pytest.approx(0.5)
    assert result["exact_match"] == pytest.approx(0.5)
    assert item_scores(predictions, references)["f1"] == pytest.approx([1.0, 0.0])


# --- BLEU ---------------------------------------------------------------------------------------------------

PREDICTIONS = ["the cat sat on the mat", "a quick brown fox jumps", "Holmes lit his pipe slowly"]
REFERENCES = ["the cat is on the mat", "the quick brown fox jumps over", "Holmes slowly lit his pipe"]


def test_bleu_matches_sacrebleu_on_a_zero_to_one_scale():
    result = load_metric("bleu").compute(predictions=PREDICTIONS, references=REFERENCES)
    corpus = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES])
    sentences = [sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    assert result["bleu"] == pytest.approx(corpus.score / 100)
    assert result["sentence_bleu"] == pytest.approx(sum(sentences) / len(sentences) / 100)
    assert result["brevity_penalty"] == pytest.approx(corpus.bp)
    assert result["precisions"] == pytest.approx([p / 100 for p in corpus.precisions])
    assert 0.0 < result["bleu"] < 1.0
    assert result["bleu"] != pytest.approx(result["sentence_bleu"])  # pooled vs averaged really differ here


def test_bleu_perfect_match_is_one():
    result = load_metric("bleu").compute(predictions=PREDICTIONS, references=PREDICTIONS)
    assert result["bleu"] == pytest.approx(1.0)
    assert result["sentence_bleu"] == pytest.approx(1.0)


def test_bleu_corpus_is_zero_without_any_predicted_4gram_but_sentence_bleu_is_not():
    # Corpus BLEU uses all four orders: 2-token answers have no 4-grams, so it is 0 even when perfect.
    # Sentence BLEU uses effective order (only the orders the answer has), so perfect short answers score 1.
    result = load_metric("bleu").compute(
        predictions=["Irene Adler", "Baker Street"], references=["Irene Adler", "Baker Street"]
    )
    assert result["bleu"] == 0.0
    assert result["sentence_bleu"] == pytest.approx(1.0)


# --- ROUGE-L ------------------------------------------------------------------------------------------------


def test_rouge_l_hand_computed_lcs():
    # Item 1: LCS of "the cat was found under the bed" (7) and "the cat was under the bed" (6) is
    # "the cat was under the bed" = 6 -> P 6/7, R 6/6, F 2*(6/7)/(13/7) = 12/13. Item 2 shares nothing -> 0.
    result = load_metric("rouge_l").compute(
        predictions=["The cat was found under the bed", "Holmes smiled"],
        references=["the cat was under the bed", "Watson frowned"],
    )
    assert result["rouge_l"] == pytest.approx((12 / 13 + 0.0) / 2)


def test_rouge_l_counts_order_not_just_overlap():
    # Same bag of words, reversed order: LCS is 1 token of 3 -> F 1/3.
    result = load_metric("rouge_l").compute(predictions=["adler irene miss"], references=["miss irene adler"])
    assert result["rouge_l"] == pytest.approx(1 / 3)


# --- loading, combining, the flat helper --------------------------------------------------------------------


def test_local_modules_load_offline_by_folder_and_by_script(offline):
    for name in ("squad_f1", "bleu", "rouge_l"):
        by_folder = evaluate.load(str(METRICS_DIR / name))
        by_script = evaluate.load(str(METRICS_DIR / name / f"{name}.py"))
        assert by_folder.name == by_script.name == name
        assert isinstance(by_folder, evaluate.Metric)
        assert by_folder.features["references"].dtype == "string"


def test_combine_works_offline(offline):
    combined = evaluate.combine([load_metric(name) for name in ("squad_f1", "bleu", "rouge_l")])
    result = combined.compute(predictions=["It was Irene Adler."], references=["Irene Adler"])
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["rouge_l"] == pytest.approx(2 / 3)  # LCS "irene adler": P 2/4, R 2/2
    assert {"bleu", "sentence_bleu", "brevity_penalty", "precisions", "exact_match"} <= result.keys()


def test_evaluation_gives_the_evaluate_modules_numbers(offline):
    """Evaluation scores each item once (`item_scores`); users who load the modules get the same numbers, to the last
    bit but for sentence BLEU: the module divides its summed percentages by 100 once, evaluation each item's score
    (the value the bootstrap resamples), which can move the last bit."""
    predictions = [*PREDICTIONS, "It was Irene Adler.", "", "Baker Street", "the the the"]
    references = [*REFERENCES, "Irene Adler", "Watson", "baker street.", "a"]
    combined = evaluate.combine([load_metric(name) for name in METRIC_NAMES])
    modules = combined.compute(predictions=predictions, references=references)
    ours = text_metrics(predictions, references)
    assert ours.pop("sentence_bleu") == pytest.approx(modules["sentence_bleu"], rel=1e-15, abs=0)
    assert ours == {key: modules[key] for key in ours}  # exactly: F1 and its kin, corpus BLEU, ROUGE-L


def test_text_metrics_flat_keys(offline):
    result = text_metrics(["It was Irene Adler.", "Holmes"], ["Irene Adler", "Watson"])
    assert list(result) == ["f1", "precision", "recall", "exact_match", "bleu", "sentence_bleu", "rouge_l"]
    assert all(isinstance(v, float) for v in result.values())
    assert result["f1"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert result["precision"] == pytest.approx(0.25)
    assert result["recall"] == pytest.approx(0.5)
    assert result["exact_match"] == 0.0
    assert result["rouge_l"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_unknown_metric_is_a_user_error():
    with pytest.raises(PeftGpt2Error, match="Unknown metric 'bleurt'"):
        load_metric("bleurt")


@pytest.mark.parametrize("helper", [text_metrics, item_scores])
def test_bad_inputs_are_user_errors(helper):
    with pytest.raises(PeftGpt2Error, match="empty"):
        helper([], [])
    with pytest.raises(PeftGpt2Error, match="2 predictions but 1 references"):
        helper(["a", "b"], ["a"])


# --- Multi-reference metrics of the E2E challenge -------------------------------------------------------------
# "Official" below: e2e-metrics' measure_scores.py (with -p, as the LoRA repository runs it; BLEU also checked
# without -p, i.e. mteval-v13a.pl), its COCO scripts through Java, run once on these exact inputs; pinned to the
# 4 decimals it prints.


def test_multi_bleu_uneven_references_none_padding_is_dropped_but_empty_string_is_a_reference():
    # Item 2 has one reference, item 1 two; sacrebleu takes parallel reference streams, so item 2 needs padding.
    predictions = ["the cat sat on the mat", "dogs bark loudly"]
    references = [["the cat sat on the mat", "a cat sat on a mat"], ["dogs bark loudly at night now"]]
    # By hand: every output n-gram is in a reference (9/9, 7/7, 5/5, 3/3). Output length 6 + 3 = 9; closest
    # reference lengths 6 (exact) + 6 (item 2's only real one) = 12, so BP = BLEU = exp(1 - 12/9) = exp(-1/3).
    ours = multi_reference_metrics(predictions, references)["bleu"]
    assert ours == pytest.approx(math.exp(-1 / 3))
    assert round(ours, 4) == 0.7165  # official, Perl and -p alike
    first = [references[0][0], references[1][0]]
    with_none = sacrebleu.corpus_bleu(predictions, [first, [references[0][1], None]], lowercase=True)
    assert with_none.ref_len == 12
    assert with_none.score / 100 == pytest.approx(ours)
    # "" is a reference of length 0: for the 3-token output |3 - 6| == |3 - 0| and ties go to the shorter, so
    # the reference length is 6 + 0 < 9: no brevity penalty, and a perfect 100 that no real reference supports.
    with_empty = sacrebleu.corpus_bleu(predictions, [first, [references[0][1], ""]], lowercase=True)
    assert with_empty.ref_len == 6
    assert with_empty.bp == 1.0
    assert with_empty.score == pytest.approx(100.0)
    assert with_empty.counts == with_none.counts  # an empty reference adds no n-gram: only the length moves


def test_multi_bleu_on_sacrebleus_documented_example():
    # sacrebleu's README: two reference streams, corpus BLEU 48.53. Ours lower-cases (as e2e-metrics does); the
    # example's cases already agree, so the number stays.
    streams = [
        ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
    ]
    system = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    assert round(sacrebleu.corpus_bleu(system, streams).score, 2) == 48.53
    per_item = [list(refs) for refs in zip(*streams, strict=True)]
    assert multi_reference_metrics(system, per_item)["bleu"] == pytest.approx(0.4853, abs=5e-5)


def test_multi_nist_clips_against_all_references_unlike_nltk():
    # References "a b", "c d": 4 words, each once, so info(a) = info(b) = info(c) = log2(4/1) = 2; info("a b") =
    # log2(count(a) / count(a b)) = 0. Output "a b c": all three unigrams occur in some reference -> 6/3 = 2;
    # bigrams "a b" (info 0), "b c" (absent) -> 0; no longer n-grams. Output 3 words, mean reference 2: no penalty.
    assert multi_reference_metrics(["a b c"], [["a b", "c d"]])["nist"] == pytest.approx(2.0)
    # nltk scores each order against its single best reference: unigrams of "a b" only, (2 + 2) / 3.
    assert corpus_nist([[["a", "b"], ["c", "d"]]], [["a", "b", "c"]], n=3) == pytest.approx(4 / 3)


def test_multi_nist_on_nltks_documented_example():
    # nltk's docstring sentences. With one reference per item the two definitions coincide (our tokens are
    # lower-cased; these sentences have no punctuation to split).
    h1 = "It is a guide to action which ensures that the military always obeys the commands of the party"
    h2 = "It is to insure the troops forever hearing the activity guidebook that party direct"
    r1 = "It is a guide to action that ensures that the military will forever heed Party commands"
    r2 = "It is the guiding principle which guarantees the military forces always being under the command of the Party"
    r3 = "It is the practical guide for the army always to heed the directions of the party"
    tokens = [[r1.lower().split()], [r3.lower().split()]]
    single = multi_reference_metrics([h1, h2], [[r1], [r3]])["nist"]
    assert single == pytest.approx(corpus_nist(tokens, [h1.lower().split(), h2.lower().split()]))
    # nltk documents sentence_nist([reference1, reference2, reference3], hypothesis1) as 3.3709... (case-sensitive).
    three = [r.split() for r in (r1, r2, r3)]
    assert 3.3709 <= sentence_nist(three, h1.split()) < 3.3710
    # With all three references per item the official scripts give 3.6948; nltk's best-single-reference does not.
    ours = multi_reference_metrics([h1, h2], [[r1, r2, r3]] * 2)["nist"]
    assert round(ours, 4) == 3.6948
    lowered = [[r.lower().split() for r in (r1, r2, r3)]] * 2
    assert corpus_nist(lowered, [h1.lower().split(), h2.lower().split()]) != pytest.approx(ours, abs=0.1)


def test_multi_nist_length_penalty_counts_each_items_real_references():
    # Item 1: one 10-word reference; item 2: three identical 5-word ones. 25 reference words: info(a..e) =
    # log2(25/1), info(k..o) = log2(25/3), every longer n-gram has info 0 (as frequent as its prefix).
    # Matched information / output words = (5 log2 25 + 5 log2(25/3)) / 10.
    precision = (math.log2(25) + math.log2(25 / 3)) / 2
    predictions = ["a b c d e", "k l m n o"]
    references = [["a b c d e f g h i j"], ["k l m n o"] * 3]
    # Mean reference length per item, summed: 10/1 + 15/3 = 15; output 10 words: ratio 2/3, where NIST's
    # penalty is 0.5 by construction. Padding item 1 to three references would give 10/3 + 5 and no penalty.
    nist = multi_reference_metrics(predictions, references)["nist"]
    assert nist == pytest.approx(precision * 0.5)
    assert round(nist, 4) == 1.9257  # official -p; the Perl (25 words / 2 references per item) gives 3.1221


def test_multi_rouge_l_best_f_versus_e2e_max_precision_and_recall():
    # Item 1, "the cat sat" against "the cat sat on the mat" (LCS 3: P 1, R 1/2, F 2/3) and "cat sat" (LCS 2:
    # P 2/3, R 1, F 4/5). rouge_score's best F: 4/5. The COCO formula takes P 1 from the first and R 1 from the
    # second: F-beta = 1. Item 2 shares nothing: 0 for both.
    result = multi_reference_metrics(
        ["the cat sat", "holmes smiled"], [["the cat sat on the mat", "cat sat"], ["watson frowned"]]
    )
    assert result["rouge_l"] == pytest.approx((4 / 5 + 0) / 2)
    assert result["rouge_l_e2e"] == pytest.approx((1 + 0) / 2)  # official ROUGE_L: 0.5


def test_multi_rouge_l_on_rouge_scores_documented_example():
    # rouge_score's README pair. LCS "the quick brown jumps the" = 5 of 9 target and 8 predicted tokens:
    # F = 2 (5/9)(5/8) / (5/9 + 5/8) = 10/17. A worse extra reference does not lower the best.
    target, prediction = "The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log."
    library = rouge_scorer.RougeScorer(["rougeL"]).score(target, prediction)["rougeL"].fmeasure
    assert library == pytest.approx(10 / 17)
    result = multi_reference_metrics([prediction], [[target, "Holmes lit his pipe"]])
    assert result["rouge_l"] == pytest.approx(10 / 17)


def test_multi_cider_hand_computed():
    # Two items, so idf = log(2) - log(df) = log 2 for every n-gram (each in one item's references, or in none).
    # Item 1, "a b" vs "a b": cosine 1 for unigrams and bigrams, no 3- or 4-grams (0): mean over 4 orders 1/2,
    # x10 = 5. Item 2, "c e" vs "c d": unigram cosine (log 2)^2 / (sqrt 2 log 2)^2 = 1/2, bigrams 0: 1/8, x10 =
    # 1.25. Equal lengths, so no Gaussian damping. Corpus: (5 + 1.25) / 2.
    result = multi_reference_metrics(["a b", "c e"], [["a b"], ["c d"]])
    assert result["cider"] == pytest.approx(3.125)  # official CIDEr (pycocoevalcap): 3.125


def test_multi_cider_averages_over_each_items_references_and_damps_length():
    # Official CIDEr 5.248 on the uneven-references case of the BLEU test: its 3-token output is 3 bigrams
    # shorter than its reference, damped by exp(-9 / 72).
    result = multi_reference_metrics(
        ["the cat sat on the mat", "dogs bark loudly"],
        [["the cat sat on the mat", "a cat sat on a mat"], ["dogs bark loudly at night now"]],
    )
    assert result["cider"] == pytest.approx(5.248, abs=5e-4)
    assert result["rouge_l_e2e"] == pytest.approx(0.8144, abs=5e-5)


def _devset() -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    with (Path(__file__).resolve().parents[2] / "data" / "e2e" / "devset.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            groups.setdefault(row["mr"], []).append(row["ref"])
    return list(groups.values())


@pytest.mark.parametrize(
    ("setup", "official"),
    [
        # Each MR's first reference as its output, scored against the others (1 to 42 references).
        ("leave_one_out", {"bleu": 0.5995, "nist": 8.5785, "rouge_l_e2e": 0.6528, "cider": 1.8543}),
        # The next MR's last reference as output, against all references (2 to 43): wrong facts, other lengths.
        ("next_mr", {"bleu": 0.3784, "nist": 5.9593, "rouge_l_e2e": 0.5136, "cider": 1.2363}),
    ],
)
def test_multi_reference_metrics_match_the_official_scripts_on_the_devset(setup, official):
    groups = _devset()
    assert len(groups) == 547
    if setup == "leave_one_out":
        predictions, references = [g[0] for g in groups], [g[1:] for g in groups]
    else:
        predictions, references = [groups[(i + 1) % len(groups)][-1] for i in range(len(groups))], groups
    result = multi_reference_metrics(predictions, references)
    for key in ("bleu", "nist", "rouge_l_e2e"):
        assert result[key] == pytest.approx(official[key], abs=5e-5), key
    # Our regex tokenizer splits 6 of the 4,672 references unlike Java's PTB; on PTB's own tokens our CIDEr
    # equals pycocoevalcap's to the last digit (checked once, 1.8542754607258303 here).
    assert result["cider"] == pytest.approx(official["cider"], abs=1e-3)


def test_multi_identical_outputs_score_the_maximum():
    texts = ["the eagle is a coffee shop near the river", "alimentum serves cheap chinese food in town"]
    best = multi_reference_metrics(texts, [[t] for t in texts])
    assert best["bleu"] == pytest.approx(1.0)
    assert best["rouge_l"] == pytest.approx(1.0)
    assert best["rouge_l_e2e"] == pytest.approx(1.0)
    assert best["cider"] == pytest.approx(10.0)  # CIDEr's ceiling: cosine 1 at every order, no damping
    worse = multi_reference_metrics([texts[0], texts[1].replace("cheap", "costly")], [[t] for t in texts])
    assert worse["nist"] < best["nist"]  # NIST has no fixed ceiling: it is information, not a ratio
    assert all(worse[k] < best[k] for k in ("bleu", "rouge_l", "rouge_l_e2e", "cider"))


def test_multi_meteor_is_none_with_the_reason():
    result = multi_reference_metrics(["a b c"], [["a b c"]])
    assert list(result) == list(MULTI_REFERENCE_KEYS)
    assert result["meteor"] is None
    assert "METEOR 1.5" in result["meteor_reason"]
    assert "WordNet" in result["meteor_reason"]


def test_multi_subsets_from_item_statistics_for_a_bootstrap():
    groups = _devset()[:12]
    predictions = [groups[(i + 1) % len(groups)][-1] for i in range(len(groups))]
    stats = item_statistics(predictions, groups)
    assert scores_from_statistics(stats) == multi_reference_metrics(predictions, groups)
    # A resample with repeats: BLEU and the ROUGE-Ls equal scoring the resampled lists themselves. NIST and
    # CIDEr keep the full set's information weights and document frequencies, so they only come close.
    indices = [3, 3, 0, 7, 11, 7]
    subset = scores_from_statistics(stats, indices)
    direct = multi_reference_metrics([predictions[i] for i in indices], [groups[i] for i in indices])
    for key in ("bleu", "rouge_l", "rouge_l_e2e"):
        assert subset[key] == pytest.approx(direct[key]), key
    with pytest.raises(PeftGpt2Error, match="empty"):
        scores_from_statistics(stats, [])


def test_multi_bad_inputs_are_user_errors():
    with pytest.raises(PeftGpt2Error, match="empty"):
        multi_reference_metrics([], [])
    with pytest.raises(PeftGpt2Error, match="2 predictions but 1 lists"):
        multi_reference_metrics(["a", "b"], [["a"]])
    with pytest.raises(PeftGpt2Error, match="list of strings"):
        multi_reference_metrics(["a"], ["a"])  # a bare string would be scored as references "a"
    with pytest.raises(PeftGpt2Error, match="no reference"):
        multi_reference_metrics(["a"], [[]])
    with pytest.raises(PeftGpt2Error, match="not a string"):
        multi_reference_metrics(["a"], [["a", None]])
