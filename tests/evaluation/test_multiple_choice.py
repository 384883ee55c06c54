"""Multiple choice in-process: lm_eval's tokenization and metrics, batching that changes nothing, compare, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, train_toy_adapter

from peft_gpt2.cli.main import main
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation import multiple_choice
from peft_gpt2.evaluation.compare import compare
from peft_gpt2.evaluation.evaluate import evaluate_model, load_eval_records
from peft_gpt2.evaluation.multiple_choice import choice_loglikelihoods, encode_pair, score_choices
from peft_gpt2.reporting.reports import write_report

SHIPPED = REPO / "data" / "sample_choices.jsonl"
ITEMS = [
    {"question": "The capital of France is", "choices": ["Paris", "Berlin", "a big old city"], "answer": 0},
    {"question": "Two plus two equals ", "choices": ["four", "five"], "answer": 0},  # trailing space: moves
    {"question": "Snow is", "choices": ["white", "black", "red", "transparent-ish"], "answer": 1},
]


def test_the_shipped_file_loads_as_multiple_choice():
    records, task = load_eval_records(str(SHIPPED))
    assert task == "multiple_choice" and len(records) == 30
    assert all(set(r) == {"question", "choices", "answer"} for r in records)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "record 1: field 'question'"),
        ({"question": "q", "choices": ["a"], "answer": 0}, "record 1: field 'choices' must be a list of at least two"),
        ({"question": "q", "choices": ["a", " "], "answer": 0}, "record 1: field 'choices' must hold non-empty"),
        ({"question": "q", "choices": ["a", "b"], "answer": 2}, "record 1: field 'answer' must be the index (0 to 1)"),
        ({"question": "q", "choices": ["a", "b"], "answer": True}, "record 1: field 'answer'"),
        ({"question": "q", "choices": ["a", "b"], "answer": "a"}, "record 1: field 'answer'"),
    ],
)
def test_bad_records_are_named(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [ITEMS[0], record]))
    with pytest.raises(PeftGpt2Error, match=f"bad.jsonl: {message}".replace("(", r"\(").replace(")", r"\)")):
        load_eval_records(str(path))


def test_encode_pair_is_lm_evals(tiny_path, gpt2_tokenizer):
    """Our split of question and choice into tokens is lm_eval's own (``TemplateLM._encode_pair``), join merges too."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    lm = LocalCompletionsAPI(model="base", tokenizer=tiny_path, tokenizer_backend="huggingface")
    pairs = [(r["question"], " " + c) for r in ITEMS for c in r["choices"]] + [("Hello", "world"), ("a  ", "b")]
    for context, continuation in pairs:
        assert encode_pair(gpt2_tokenizer, context, continuation) == lm._encode_pair(context, continuation)
    context, continuation = encode_pair(gpt2_tokenizer, "Two plus two equals ", " four")
    assert gpt2_tokenizer.decode(continuation) == "  four"  # the question's trailing space joined the choice


def test_loglikelihoods_are_the_unbatched_sums(tiny):
    """Batched and padded (any batch size) equals one unpadded forward pass per choice, summed log-softmax."""
    import torch

    model, tokenizer = tiny
    expected = []
    for record in ITEMS:
        row = []
        for choice in record["choices"]:
            context, continuation = encode_pair(tokenizer, record["question"], " " + choice)
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = model(ids).logits[0].float().log_softmax(-1)
            row.append(sum(logprobs[len(context) + k - 1, t].item() for k, t in enumerate(continuation)))
        expected.append(row)
    for batch_size in (1, 3, 16):
        got = choice_loglikelihoods(model, tokenizer, ITEMS, batch_size=batch_size)
        assert [len(g) for g in got] == [len(r["choices"]) for r in ITEMS]
        assert sum(got, []) == pytest.approx(sum(expected, []), abs=1e-4)


def test_acc_and_acc_norm_follow_lm_eval(monkeypatch, tiny):
    """acc: argmax of the sums; acc_norm: argmax of sum / characters of the choice; ties go to the first."""
    lls = [
        [-6.0, -5.0, -9.0],  # acc 1 (wrong); per character -1.2, -0.83, -0.64: acc_norm 2 (wrong)
        [-3.0, -3.0],  # a tie: 0 (right); per character -0.75, -0.75: 0 again (right)
        [-9.0, -5.0, -9.5, -13.0],  # acc 1 (right); per character -1.8, -1.0, -3.17, -0.87: acc_norm 3 (wrong)
    ]
    monkeypatch.setattr(multiple_choice, "choice_loglikelihoods", lambda *a, **k: lls)
    result = score_choices(*tiny, ITEMS)
    assert [a["pred"] for a in result.answers] == [1, 0, 1]
    assert [a["pred_norm"] for a in result.answers] == [2, 0, 3]
    assert result.items == {"acc": [0.0, 1.0, 1.0], "acc_norm": [0.0, 1.0, 0.0]}
    assert result.metrics["acc"] == pytest.approx(2 / 3) and result.metrics["acc_norm"] == pytest.approx(1 / 3)
    assert result.metrics["examples"] == 3 and result.answers[2]["loglikelihoods"] == lls[2]


def test_eval_cli_scores_multiple_choice(tmp_path, tiny, tiny_path, capsys):
    """``peft-gpt2 eval`` detects the task and prints acc and acc_norm, as `evaluate_model` computes them."""
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ITEMS))
    main(["eval", "--model", tiny_path, "--data", str(path), "--out", str(tmp_path)])
    printed = json.loads(capsys.readouterr().out)
    expected = evaluate_model(*tiny, load_eval_records(str(path))[0])
    assert printed["task"] == "multiple_choice" and printed["examples"] == 3
    assert (printed["acc"], printed["acc_norm"]) == (expected.metrics["acc"], expected.metrics["acc_norm"])
    answers = [json.loads(line) for line in Path(printed["answers"]).read_text(encoding="utf-8").splitlines()]
    assert answers == expected.answers and {"pred", "pred_norm", "loglikelihoods"} <= set(answers[0])


def test_compare_and_report_carry_acc_with_intervals(tmp_path, tiny_path):
    """compare on multiple-choice data: acc and acc_norm rows with bootstrap intervals and a paired test, and a
    report that shows them (no text metric on these rows)."""
    adapter = train_toy_adapter(tmp_path, "A", steps=2)
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ITEMS * 3))
    rows = compare([str(adapter)], data=[str(path)])
    assert [r["model"] for r in rows] == ["base", "toy-A"]
    for row in rows:
        assert 0 <= row["acc_lo"] <= row["acc"] <= row["acc_hi"] <= 1 and row["f1"] is None
        assert row["acc_norm_lo"] <= row["acc_norm"] <= row["acc_norm_hi"]
    assert 0 < rows[0]["acc_p"] <= 1 and "f1_lo" not in rows[0]
    paths = write_report(rows, tmp_path / "out", "mc")
    header = next(line for line in paths["md"].read_text().splitlines() if line.startswith("| model"))
    assert "| MC acc |" in header and "| MC acc_norm |" in header
    assert json.loads(paths["json"].read_text())["rows"][0]["acc_norm_within_noise"] in (True, False)  # base vs toy-A
