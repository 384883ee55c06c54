"""E2E-style data: MRs grouped with all their references, splits by MR, the data_to_text template."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_recipe

from peft_gpt2.config.recipe import load_recipe
from peft_gpt2.data.data_to_text import as_eval_records, as_records, data_to_text_rows, load_mrs
from peft_gpt2.data.templates import TEMPLATES, tokenize_pairs
from peft_gpt2.errors import PeftGpt2Error

DEVSET = Path(__file__).resolve().parents[2] / "data" / "e2e" / "devset.csv"
CSV = (
    "mr,ref\n"
    '"name[A], food[Thai]","A serves Thai food."\n'
    '"name[B], area[riverside]","B is by the river."\n'
    '"name[A], food[Thai]","Thai food is served at A."\n'
    '"name[A], food[Thai]","A serves Thai food."\n'
)


def test_csv_rows_group_by_mr_in_order_keeping_repeated_references(tmp_path):
    (tmp_path / "e2e.csv").write_text(CSV)
    groups = load_mrs(str(tmp_path / "e2e.csv"))
    repeated = ["A serves Thai food.", "Thai food is served at A.", "A serves Thai food."]  # as the official data
    assert groups == [
        {"mr": "name[A], food[Thai]", "references": repeated},
        {"mr": "name[B], area[riverside]", "references": ["B is by the river."]},
    ]
    second = {"instruction": "name[A], food[Thai]", "input": "", "output": "Thai food is served at A."}
    assert as_records(groups)[1] == second
    assert as_eval_records(groups)[0]["references"] == groups[0]["references"]


def test_the_shipped_devset():
    groups = load_mrs(str(DEVSET))
    assert len(groups) == 547
    assert sum(len(g["references"]) for g in groups) == 4672  # every row (151 repeat a reference of their MR)
    assert min(len(g["references"]) for g in groups) == 2


def test_mrs_without_references_and_bad_files(tmp_path):
    (tmp_path / "inputs.csv").write_text('mr\n"name[A], food[Thai]"\n"name[B]"\n')
    assert [g["references"] for g in load_mrs(str(tmp_path / "inputs.csv"))] == [[], []]  # a test-input file
    with pytest.raises(PeftGpt2Error, match="does not exist"):  # a missing file, not a hub data set name
        load_mrs(str(tmp_path / "missing.csv"))
    (tmp_path / "bad.csv").write_text("meaning,text\nx,y\n")
    with pytest.raises(PeftGpt2Error, match="expected a CSV with columns mr and ref"):
        load_mrs(str(tmp_path / "bad.csv"))
    (tmp_path / "empty_mr.csv").write_text('mr,ref\n"name[A]","A."\n"","B."\n')
    with pytest.raises(PeftGpt2Error, match="line 3: empty mr"):
        load_mrs(str(tmp_path / "empty_mr.csv"))


def test_splits_are_by_mr_and_train_on_every_reference(tmp_path, gpt2_tokenizer):
    recipe = load_recipe(
        write_recipe(
            tmp_path / "e2e.yaml",
            data={"path": str(DEVSET), "format": "data_to_text", "template": "data_to_text", "max_length": 128},
        )
    )
    rows = data_to_text_rows(recipe.data, gpt2_tokenizer)
    train_mrs = {r["prompt"] for r in rows.train}
    validation_mrs = {r["prompt"] for r in rows.validation}
    test_prompts = {TEMPLATES["data_to_text"].render(r)["prompt"] for r in rows.test}
    assert not train_mrs & validation_mrs and not train_mrs & test_prompts and not validation_mrs & test_prompts
    assert rows.stats["train_mrs"] + rows.stats["validation_mrs"] + rows.stats["test_mrs"] == 547
    assert len(rows.train) + rows.stats["train_overlong_dropped"] == rows.stats["train"] > rows.stats["train_mrs"]
    assert all(len(r["references"]) >= 2 for r in rows.test)  # evaluation keeps every reference of each MR


def test_every_devset_pair_keeps_an_exact_completion_mask(gpt2_tokenizer):
    pairs = [TEMPLATES["data_to_text"].render(r) for r in as_records(load_mrs(str(DEVSET)))]
    kept = tokenize_pairs(pairs, gpt2_tokenizer, 1024, "truncate", "devset")  # raises if BPE merged across the join
    assert len(kept.pairs) == 4672 and pairs[0]["prompt"].endswith("### Text:\n")


def test_a_hub_data_set_keeps_its_own_splits(tmp_path, gpt2_tokenizer, monkeypatch):
    import datasets

    def fake(name, split):
        mrs = {"train": ["name[A]", "name[B]"], "validation": ["name[C]"], "test": ["name[D]"]}[split]
        rows = [{"meaning_representation": m, "human_reference": f"{m[5:-1]} is {k}."} for m in mrs for k in "xy"]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    recipe = load_recipe(write_recipe(tmp_path / "hub.yaml", data={"path": "e2e_nlg", "format": "data_to_text"}))
    rows = data_to_text_rows(recipe.data, gpt2_tokenizer)
    assert (rows.stats["train_mrs"], rows.stats["validation_mrs"], rows.stats["test_mrs"]) == (2, 1, 1)
    assert len(rows.train) == 4 and rows.test[0]["references"] == ["D is x.", "D is y."]


@pytest.mark.slow
def test_compare_scores_a_data_to_text_test_split_against_every_reference(tmp_path):
    from peft_gpt2.evaluation.compare import compare
    from peft_gpt2.inference.settings import GenerationSettings
    from peft_gpt2.reporting.reports import terminal_table
    from peft_gpt2.training.train import train

    runs = []
    for name, seed in (("e2e-a", 1), ("e2e-b", 2)):
        data = {"path": str(DEVSET), "format": "data_to_text", "template": "data_to_text", "limit": 40}
        path = write_recipe(tmp_path / f"{name}.yaml", data=data, train={"max_steps": 2, "seed": seed})
        runs.append(str(train(load_recipe(path)).path))
    settings = GenerationSettings(max_new_tokens=6, num_beams=2, stop=["\n"])
    rows = compare(runs, data=["test", str(DEVSET)], limit=5, settings=settings)
    test_rows = [r for r in rows if r["dataset"] == "test"]
    assert [r["model"] for r in test_rows] == ["base", "e2e-a", "e2e-b"]
    for row in rows:
        assert row["nist"] is not None and row["cider"] is not None and row["nist_lo"] <= row["nist"] <= row["nist_hi"]
        assert row["bleu_lo"] <= row["bleu"] <= row["bleu_hi"]
    table = terminal_table(rows)
    assert "NIST" in table and "CIDEr" in table and "METEOR is not computed" in table


def test_decoding_resolves_flags_over_the_runs_recorded_settings():
    from peft_gpt2.inference.settings import resolve_settings

    beams = {"num_beams": 10, "length_penalty": 0.8, "no_repeat_ngram_size": 4, "max_new_tokens": 64}
    assert resolve_settings({}, [None]).num_beams == 1  # nothing recorded: the defaults
    settings = resolve_settings({"max_new_tokens": 8}, [beams, None, beams])
    assert (settings.num_beams, settings.length_penalty, settings.max_new_tokens) == (10, 0.8, 8)
    assert resolve_settings({"temperature": 0.7}, []).do_sample
    with pytest.raises(PeftGpt2Error, match="record different decoding settings"):
        resolve_settings({}, [beams, {**beams, "num_beams": 4}])


@pytest.mark.slow
def test_eval_writes_one_output_per_mr_for_the_official_scripts(tmp_path):
    from peft_gpt2.cli.main import main
    from peft_gpt2.training.train import train

    data = {"path": str(DEVSET), "format": "data_to_text", "template": "data_to_text", "limit": 20}
    generation = {"num_beams": 2, "max_new_tokens": 5, "stop": ["\n"]}
    adapter = train(load_recipe(write_recipe(tmp_path / "e2e.yaml", data=data, generation=generation))).path
    (tmp_path / "inputs.csv").write_text('mr\n"name[A], food[Thai]"\n"name[B], area[riverside]"\n"name[C]"\n')
    inputs = str(tmp_path / "inputs.csv")
    assert main(["eval", "--adapter", str(adapter), "--data", inputs, "--out", str(tmp_path)]) == 0
    outputs = (tmp_path / "e2e.inputs.outputs.txt").read_text().split("\n")
    assert len(outputs) == 4 and outputs[-1] == ""  # one line per MR, in input order
    assert main(["eval", "--adapter", str(adapter), "--data", str(DEVSET), "--limit", "3", "--out", str(tmp_path)]) == 0
    assert len((tmp_path / "e2e.devset.outputs.txt").read_text().splitlines()) == 3
    assert len((tmp_path / "e2e.devset.answers.jsonl").read_text().splitlines()) == 3
