"""Property test: whatever bytes or records a user's file holds, the loader loads them or raises our error."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_gpt2.data.instructions import prepare_splits
from peft_gpt2.errors import PeftGpt2Error

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
field_values = st.one_of(st.text(max_size=30), json_values)
records = st.lists(
    st.fixed_dictionaries(
        {},
        optional={"instruction": field_values, "input": field_values, "output": field_values, "extra": json_values},
    )
    | json_values,
    max_size=8,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def load_or_our_error(path) -> None:
    try:
        splits = prepare_splits(str(path), fractions=[0.6, 0.2, 0.2])
    except PeftGpt2Error as err:
        assert str(path.name) in str(err) or "no usable" in str(err) or "training examples" in str(err)
        return
    for record in splits.train + splits.validation + splits.test:
        assert set(record) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) for v in record.values()) and record["output"].strip()


@FUZZ
@given(data=records, jsonl=st.booleans())
def test_random_records_load_or_raise_our_error(tmp_path, data, jsonl):
    path = tmp_path / ("f.jsonl" if jsonl else "f.json")
    path.write_text("\n".join(json.dumps(r) for r in data) if jsonl else json.dumps(data), encoding="utf-8")
    load_or_our_error(path)


@FUZZ
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".json", ".jsonl"]))
def test_random_bytes_load_or_raise_our_error(tmp_path, raw, suffix):
    path = tmp_path / f"f{suffix}"
    path.write_bytes(raw)
    load_or_our_error(path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("deep.json", "[" * 100_000, "deep.json: unreadable JSON (nested too deeply)"),
        ("digits.json", "[" + "1" * 5000 + "]", "digits.json: unreadable JSON (Exceeds the limit (4300 digits)"),
        ("deep.jsonl", '{"output": "a"}\n' + "[" * 100_000, "deep.jsonl: line 2: malformed JSON Lines record (nested"),
        ("digits.jsonl", "1" * 5000, "digits.jsonl: line 1: malformed JSON Lines record (Exceeds the limit"),
    ],
)
def test_pathological_json_is_one_line_naming_file_and_line(tmp_path, name, text, message):
    """json.loads raises RecursionError or ValueError here, not JSONDecodeError; refused in well under 2 s."""
    (tmp_path / name).write_text(text)
    start = time.perf_counter()
    with pytest.raises(PeftGpt2Error) as err:
        prepare_splits(str(tmp_path / name))
    assert time.perf_counter() - start < 2
    assert message in str(err.value) and "\n" not in str(err.value) and "set_int_max_str_digits" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [('mr,ref\n"' + "x" * 200_000 + '",y\n', 2), ('mr,ref\na,b\n"c' + ",d\n" * 70_000, 3)],
)
def test_a_csv_field_past_the_csv_limit_names_file_and_line(tmp_path, text, line):
    """A 200,000-character field, or an unclosed quote swallowing the rest of the file: csv.Error before."""
    from peft_gpt2.data.data_to_text import load_mrs

    (tmp_path / "e2e.csv").write_text(text)
    with pytest.raises(PeftGpt2Error, match=rf"e2e\.csv: line {line}: not a readable CSV row \(field larger"):
        load_mrs(str(tmp_path / "e2e.csv"))


def test_front_matter_is_stripped_in_linear_time():
    """Each leading "cover" paragraph copied the rest of the book: 128,000 of them (900 KB) took 2.7 s, 1M minutes."""
    from peft_gpt2.data.corpus import strip_gutenberg

    start = time.perf_counter()
    assert strip_gutenberg("cover\n\n" * 300_000 + "Produced by a volunteer\n\nThe book.\n") == "The book."
    assert time.perf_counter() - start < 2
