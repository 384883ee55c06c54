"""Data loading: shapes, cleaning counts, deterministic splits, and errors that name file and record."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from peft_gpt2.data.config import DataConfig
from peft_gpt2.data.instructions import clean, instruction_rows, load_records, prepare_splits, split, subsample
from peft_gpt2.errors import PeftGpt2Error


def records(n: int) -> list[dict]:
    return [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(n)]


def test_json_and_jsonl_load_the_same(tmp_path):
    data = records(5)
    (tmp_path / "a.json").write_text(json.dumps(data))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in data) + "\n\n")
    assert load_records(str(tmp_path / "a.json")) == load_records(str(tmp_path / "a.jsonl")) == data


def test_missing_input_becomes_empty_and_extra_keys_are_ignored(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "x", "output": "y", "text": "z", "input": None}]))
    assert load_records(str(tmp_path / "a.json")) == [{"instruction": "x", "input": "", "output": "y"}]


def test_shipped_sample_data_is_valid():
    assert len(load_records(str(REPO / "data" / "sample_instructions.json"))) >= 150


def test_cleaning_drops_and_counts():
    data = records(3) + [records(3)[1], {"instruction": "a", "input": "", "output": "  "}]
    kept, stats = clean(data)
    assert kept == records(3)
    assert stats == {"records_read": 5, "dropped_duplicates": 1, "dropped_empty_output": 1}


def test_split_is_deterministic_disjoint_and_sized():
    data = records(100)
    a = split(data, [0.85, 0.10, 0.05], seed=1)
    assert a == split(data, [0.85, 0.10, 0.05], seed=1)
    assert [len(p) for p in a] == [85, 10, 5]
    outputs = [r["output"] for part in a for r in part]
    assert sorted(outputs) == sorted(r["output"] for r in data)
    assert a != split(data, [0.85, 0.10, 0.05], seed=2)


def test_subsample_by_limit_and_fraction():
    data = records(50)
    assert len(subsample(data, limit=10, fraction=None, seed=0)) == 10
    assert len(subsample(data, limit=None, fraction=0.2, seed=0)) == 10
    assert subsample(data, limit=10, fraction=None, seed=0) == subsample(data, limit=10, fraction=None, seed=0)
    assert subsample(data, limit=500, fraction=None, seed=0) == data


def test_prepare_splits_reports_counts(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(records(40) + records(2)))
    splits = prepare_splits(str(tmp_path / "a.json"), limit=20, seed=0)
    assert splits.stats["dropped_duplicates"] == 2
    assert splits.stats["records_used"] == 20
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 20


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", '[\n {"instruction": "a", "output": "b"},\n {"instruction": }\n]', "bad.json: line 3"),
        ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{oops}\n', "bad.jsonl: line 2: malformed JSON Lines"),
        ("obj.json", '{"data": []}', "expected a JSON list of records, got a dict"),
        ("empty.json", "  \n", "the file is empty"),
        (
            "nofield.json",
            '[{"instruction": "a", "output": "b"}, {"instruction": "c"}]',
            "record 1: missing field 'output'",
        ),
        ("type.json", '[{"instruction": "a", "output": 3}]', "record 0: field 'output' must be a string, got int"),
        ("notobj.json", '["just text"]', "record 0: expected an object"),
        ("allempty.json", '[{"instruction": "a", "output": ""}]', "no usable records after cleaning"),
    ],
)
def test_bad_files_name_file_and_record(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(PeftGpt2Error) as err:
        prepare_splits(str(tmp_path / name))
    assert message in str(err.value)


def test_non_utf8_names_the_line(tmp_path):
    (tmp_path / "latin.json").write_bytes(b'[\n{"instruction": "caf\xe9", "output": "x"}]')
    with pytest.raises(PeftGpt2Error, match=r"latin.json: line 2: not UTF-8"):
        load_records(str(tmp_path / "latin.json"))


def test_missing_file(tmp_path):
    with pytest.raises(PeftGpt2Error, match="does not exist"):
        load_records(str(tmp_path / "nope.json"))


def test_instruction_rows_apply_the_overlong_policy_and_count_it(tmp_path, gpt2_tokenizer):
    """The counts land in the run's provenance (``data``): how many examples were cut or left out, per split."""
    long_output = [{"instruction": "Repeat.", "input": "", "output": f"{i} " + "word " * 40} for i in range(3)]
    long_prompt = [{"instruction": "Read this: " + "word " * 40, "input": "", "output": "ok"}]
    (tmp_path / "a.json").write_text(json.dumps(records(6) + long_output + long_prompt))
    config = {"path": str(tmp_path / "a.json"), "template": "short", "max_length": 24, "split": [0.6, 0.4, 0.0]}

    def counts(stats: dict, kind: str) -> int:
        return stats[f"train_overlong_{kind}"] + stats[f"validation_overlong_{kind}"]

    rows = instruction_rows(DataConfig(**config), gpt2_tokenizer)
    assert len(rows.train) + len(rows.validation) == 9 and rows.test == []
    assert set(rows.train[0]) == {"prompt", "completion", "input_ids", "completion_mask"}  # TRL's, made once
    assert (counts(rows.stats, "truncated"), counts(rows.stats, "dropped")) == (3, 1)
    assert (rows.stats["train"], rows.stats["validation"]) == (6, 4)  # records per split, before the policy

    rows = instruction_rows(DataConfig(**config, overlong="drop"), gpt2_tokenizer)
    assert len(rows.train) + len(rows.validation) == 6
    assert (counts(rows.stats, "truncated"), counts(rows.stats, "dropped")) == (0, 4)

    (tmp_path / "a.json").write_text(json.dumps(long_output))
    with pytest.raises(PeftGpt2Error, match="every training example is longer than data.max_length=24"):
        instruction_rows(DataConfig(**config, overlong="drop"), gpt2_tokenizer)


def test_a_data_set_too_small_for_a_validation_split_still_trains(tmp_path, gpt2_tokenizer):
    (tmp_path / "a.json").write_text(json.dumps(records(4)))  # 10% of 4 rounds to 0 validation records
    rows = instruction_rows(DataConfig(path=str(tmp_path / "a.json"), template="short"), gpt2_tokenizer)
    assert len(rows.train) == 4 and rows.validation == [] and rows.stats["validation_overlong_dropped"] == 0


def test_text_that_cannot_be_written_back_is_refused_before_training(tmp_path):
    """A lone surrogate parses as JSON, trains, and only fails when the test split is saved: refuse it up front."""
    (tmp_path / "bad.json").write_text('[{"instruction": "Say it.", "input": "", "output": "ok \\ud800"}]')
    with pytest.raises(PeftGpt2Error, match=r"record 0: field 'output' holds text that is not valid Unicode"):
        load_records(str(tmp_path / "bad.json"))
