"""Property test: whatever bytes or records a user's file holds, the loader loads them or raises our error."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.instructions import prepare_splits

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


def test_pathological_json_is_our_error(tmp_path):
    for name, text in [
        ("deep.json", "[" * 100_000),
        ("digits.json", "[" + "1" * 5000 + "]"),
        ("deep.jsonl", "[" * 100_000),
        ("digits.jsonl", "1" * 5000),
    ]:
        (tmp_path / name).write_text(text)
        load_or_our_error(tmp_path / name)
