"""eval and compare: one base load, adapters swapped, rows per (model, data set), honest test splits."""

from __future__ import annotations

import json
import math

import pytest

from peft_gpt2.adapters.folder import attach, folder_kind
from peft_gpt2.cli.main import main
from peft_gpt2.config.recipe import load_recipe
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.compare import compare
from peft_gpt2.evaluation.evaluate import evaluate_model, load_eval_records
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.models import loading as models
from peft_gpt2.training.train import train

QA = [{"question": f"What is {a} plus {a}?", "answer": str(2 * a)} for a in range(6)]
FAST = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_path):
    """A LoRA adapter and a full fine-tune of the tiny GPT-2, trained a few steps on the same split."""
    root = tmp_path_factory.mktemp("runs")
    records = [{"instruction": "Double it.", "input": str(a), "output": str(2 * a)} for a in range(60)]
    (root / "data.json").write_text(json.dumps(records))
    (root / "qa.json").write_text(json.dumps(QA))
    out = {}
    for method in ("lora", "full"):
        (root / f"{method}.yaml").write_text(
            f"name: toy-{method}\nmethod: {method}\noutput_dir: {root / 'adapters'}\nmodel: {{name: tiny-gpt2}}\n"
            f"data: {{path: {root / 'data.json'}, template: short, max_length: 48}}\n"
            "train: {max_steps: 3, learning_rate: 1.0e-2, precision: fp32, per_device_train_batch_size: 8}\n"
        )
        out[method] = train(load_recipe(root / f"{method}.yaml")).path
    out["root"] = root
    return out


def test_compare_loads_the_base_once_and_scores_every_row(runs, monkeypatch):
    calls = []
    real = models.load_base
    monkeypatch.setattr(models, "load_base", lambda name, **kw: calls.append(name) or real(name, **kw))
    rows = compare(
        [str(runs["lora"]), str(runs["full"])],
        data=["test", str(runs["root"] / "qa.json")],
        settings=FAST,
        answers_dir=runs["root"] / "answers",
    )
    assert calls == ["tiny-gpt2", str(runs["full"])]  # base once; the full fine-tune is its own model
    assert [(r["model"], r["dataset"]) for r in rows] == [
        ("base", "test"),
        ("toy-lora", "test"),
        ("toy-full", "test"),
        ("base", "qa"),
        ("toy-lora", "qa"),
        ("toy-full", "qa"),
    ]
    assert [r["method"] for r in rows[:3]] == ["base", "lora", "full"]
    for row in rows:
        assert 0 <= row["f1"] <= 1 and row["perplexity"] > 1 and row["eval_time_s"] > 0
    assert rows[0]["trainable_parameters"] is None and rows[1]["trainable_parameters"] > 0
    assert rows[1]["adapter_size_mb"] < rows[2]["adapter_size_mb"]
    assert rows[3]["examples"] == len(QA)
    answers = (runs["root"] / "answers" / "toy-lora.qa.answers.jsonl").read_text().splitlines()
    assert len(answers) == len(QA) and set(json.loads(answers[0])) >= {"expected", "generated", "f1"}
    # honest numbers: an interval per metric, a paired test against the first run, the budget beside them
    assert {r["reference"] for r in rows} == {"toy-lora"} and all("tokens_seen" in r for r in rows)
    for row in rows:
        for metric in ("f1", "exact_match", "bleu", "rouge_l", "perplexity", "token_accuracy"):
            assert row[f"{metric}_lo"] <= row[metric] * (1 + 1e-9) and row[metric] <= row[f"{metric}_hi"] * (1 + 1e-9)
        tested = row["model"] != "toy-lora"
        assert ("f1_diff" in row) == tested and ("perplexity_within_noise" in row) == tested
        if tested:
            assert row["perplexity_diff_lo"] <= row["perplexity_diff"] <= row["perplexity_diff_hi"]
            assert 0 < row["perplexity_p"] <= 1


def test_base_row_equals_the_bare_base_and_adapter_row_equals_a_fresh_load(runs, tiny_path):
    records, _ = load_eval_records(str(runs["root"] / "qa.json"))
    rows = compare([str(runs["lora"])], data=[str(runs["root"] / "qa.json")], settings=FAST)
    bare, tokenizer = models.load_base("tiny-gpt2")
    expected_base = evaluate_model(bare, tokenizer, records, template="short", settings=FAST).metrics
    assert rows[0]["perplexity"] == pytest.approx(expected_base["perplexity"], rel=1e-5)
    fresh = attach(models.load_base("tiny-gpt2")[0], runs["lora"], "x")
    expected_lora = evaluate_model(fresh, tokenizer, records, template="short", settings=FAST).metrics
    assert rows[1]["perplexity"] == pytest.approx(expected_lora["perplexity"], rel=1e-5)
    assert rows[1]["perplexity"] != pytest.approx(rows[0]["perplexity"], rel=1e-3)  # the adapter matters


def test_reference_row_is_checked_before_loading(runs, monkeypatch, capsys):
    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("model loaded before --reference was checked"))
    with pytest.raises(PeftGpt2Error, match="not a row"):
        compare([str(runs["lora"])], data=[str(runs["root"] / "qa.json")], reference="toy-ful")
    assert main(["compare", str(runs["lora"]), "--data", str(runs["root"] / "qa.json"), "--reference", "x"]) == 2
    assert "'x' is not a row" in capsys.readouterr().err


def test_evaluate_model_keeps_per_item_sums(tiny):
    model, tokenizer = tiny
    records = [{"instruction": q["question"], "input": "", "output": q["answer"]} for q in QA]
    records[2] = {**records[2], "instruction": records[2]["instruction"] * 30}  # its prompt alone fills max_length
    result = evaluate_model(model, tokenizer, records, template="short", settings=FAST, batch_size=4, max_length=64)
    items, metrics = result.items, result.metrics
    assert metrics["dropped"] == 1 and items["tokens"][2] == 0 and items["nll"][2] == 0  # record 2 overflows
    assert all(len(column) == len(QA) for column in items.values())
    assert sum(items["tokens"]) == metrics["completion_tokens"]
    assert math.exp(sum(items["nll"]) / sum(items["tokens"])) == pytest.approx(metrics["perplexity"], rel=1e-6)
    assert sum(items["correct"]) / sum(items["tokens"]) == pytest.approx(metrics["token_accuracy"])
    alone = evaluate_model(model, tokenizer, records[3:4], template="short", settings=FAST).items
    assert alone["nll"][0] == pytest.approx(items["nll"][3], rel=1e-4) and alone["tokens"] == items["tokens"][3:4]
    assert items["f1"] == [a["f1"] for a in result.answers]
    assert sum(items["f1"]) / len(QA) == pytest.approx(metrics["f1"])


def test_different_test_splits_are_refused(runs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    for f in runs["lora"].iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    provenance = json.loads((other / "peft_gpt2.json").read_text())
    (other / "peft_gpt2.json").write_text(json.dumps({**provenance, "name": "other"}))
    (other / "test.json").write_text(json.dumps([{"instruction": "x", "input": "", "output": "y"}]))
    with pytest.raises(PeftGpt2Error, match="different test splits"):
        compare([str(runs["lora"]), str(other)], settings=FAST)


def test_eval_cli_prints_metrics_and_writes_answers(runs, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "eval",
            "--adapter",
            str(runs["lora"]),
            "--data",
            str(runs["root"] / "qa.json"),
            "--max-new-tokens",
            "4",
            "--limit",
            "3",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "qa" and out["examples"] == 3 and out["model"] == "tiny-gpt2"
    assert {"f1", "exact_match", "bleu", "rouge_l", "perplexity", "token_accuracy"} <= set(out)
    assert len((tmp_path / out["answers"]).read_text().splitlines()) == 3


def test_eval_cli_bad_data_fails_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("model loaded before data was checked"))
    (tmp_path / "bad.json").write_text('[{"question": "q"}]')
    assert main(["eval", "--model", "tiny-gpt2", "--data", str(tmp_path / "bad.json")]) == 2
    assert "record 0" in capsys.readouterr().err


def test_adapter_folder_checks(runs, tmp_path, tiny):
    assert folder_kind(runs["lora"]) == "adapter" and folder_kind(runs["full"]) == "model"
    with pytest.raises(PeftGpt2Error, match="neither a PEFT adapter"):
        folder_kind(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((runs["lora"] / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(PeftGpt2Error, match="pickle"):
        folder_kind(pickled)
    model, _ = tiny
    model.config.n_embd = 65  # a different base config: the fingerprint no longer matches
    with pytest.raises(PeftGpt2Error, match="was trained on base"):
        attach(model, runs["lora"], "x")
