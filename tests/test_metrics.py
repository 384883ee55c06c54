"""Hand-worked checks of the local `evaluate` metric modules, and that they load and combine offline."""

from __future__ import annotations

import socket

import evaluate
import pytest
import sacrebleu

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.metrics import METRICS_DIR, load_metric, per_item_f1, text_metrics


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
    assert per_item_f1(predictions, references) == pytest.approx([1.0, 0.0])


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


@pytest.mark.parametrize("helper", [text_metrics, per_item_f1])
def test_bad_inputs_are_user_errors(helper):
    with pytest.raises(PeftGpt2Error, match="empty"):
        helper([], [])
    with pytest.raises(PeftGpt2Error, match="2 predictions but 1 references"):
        helper(["a", "b"], ["a"])
