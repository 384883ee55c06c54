"""Load, validate, clean, subsample and split Alpaca-style instruction data.

    python -c "from peft_gpt2.data import load_records; print(len(load_records('data/sample_instructions.json')))"

Everything here runs before a model is loaded, so a bad record fails in a second, not after hours.
Cleaning is stated, not silent: exact duplicates and empty outputs are dropped and counted.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from peft_gpt2.errors import PeftGpt2Error

FIELDS = ("instruction", "input", "output")
REQUIRED = ("instruction", "output")


@dataclass
class Splits:
    """Train/validation/test records plus what cleaning did, for the provenance file."""

    train: list[dict]
    validation: list[dict]
    test: list[dict]
    stats: dict = field(default_factory=dict)


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PeftGpt2Error(f"{source}: line {line}: not UTF-8 text (byte {err.start}); re-save it as UTF-8") from None


def _parse_json(text: str, source: str) -> list:
    stripped = text.lstrip()
    if not stripped:
        raise PeftGpt2Error(f"{source}: the file is empty")
    if stripped[0] == "[" or source.endswith(".json"):
        try:
            data = json.loads(text)
        except (RecursionError, ValueError) as err:  # nesting too deep; an integer past Python's digit limit
            if not isinstance(err, json.JSONDecodeError):
                raise PeftGpt2Error(f"{source}: unreadable JSON ({type(err).__name__}: {err})") from None
            raise PeftGpt2Error(
                f"{source}: line {err.lineno}, column {err.colno}: malformed JSON ({err.msg})"
            ) from None
        if not isinstance(data, list):
            raise PeftGpt2Error(
                f"{source}: expected a JSON list of records, got a {type(data).__name__}"
                + (f" with keys {sorted(data)[:5]}" if isinstance(data, dict) else "")
            )
        return data
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except (RecursionError, ValueError) as err:
                reason = err.msg if isinstance(err, json.JSONDecodeError) else f"{type(err).__name__}: {err}"
                raise PeftGpt2Error(f"{source}: line {lineno}: malformed JSON Lines record ({reason})") from None
    return records


def read_source(source: str) -> list:
    if source.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(source, timeout=60) as response:
                return _parse_json(_decode(response.read(), source), source)
        except OSError as err:
            raise PeftGpt2Error(
                f"could not download {source}: {err}; download it and set data.path to the file"
            ) from None
    path = Path(source).expanduser()
    if path.is_file():
        return _parse_json(_decode(path.read_bytes(), source), source)
    if path.suffix in (".json", ".jsonl") or path.exists() or source.startswith((".", "/", "~")):
        raise PeftGpt2Error(f"data file {source} does not exist")
    return _read_hub_dataset(source)


def _read_hub_dataset(name: str) -> list:
    """A Hugging Face datasets name such as ``tatsu-lab/alpaca`` (train split)."""
    import datasets

    try:
        return list(datasets.load_dataset(name, split="train"))
    except Exception as err:  # datasets raises many types: network, missing, bad config
        raise PeftGpt2Error(
            f"could not load data set {name!r} from the Hugging Face Hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}); offline, point data.path at a JSON/JSONL file"
        ) from None


def validate_records(raw: list, source: str) -> list[dict]:
    """Check every record's shape; the error names the record index and the field."""
    records = []
    for i, record in enumerate(raw):
        if not isinstance(record, dict):
            raise PeftGpt2Error(f"{source}: record {i}: expected an object with {FIELDS}, got {type(record).__name__}")
        for key in REQUIRED:
            if key not in record:
                raise PeftGpt2Error(f"{source}: record {i}: missing field {key!r} (has {sorted(record)})")
        for key in FIELDS:
            value = record.get(key)
            if key == "input" and value is None:
                continue
            if not isinstance(value, str):
                raise PeftGpt2Error(f"{source}: record {i}: field {key!r} must be a string, got {type(value).__name__}")
        records.append({key: record.get(key) or "" for key in FIELDS})
    return records


def load_records(source: str) -> list[dict]:
    """Read and validate Alpaca-style records from a JSON/JSONL file, a URL or a hub data set name."""
    return validate_records(read_source(source), source)


def clean(records: list[dict]) -> tuple[list[dict], dict]:
    """Drop exact duplicates (first kept) and records whose output is empty; count both."""
    seen: set[tuple[str, ...]] = set()
    kept, duplicates, empty = [], 0, 0
    for record in records:
        key = tuple(record[k] for k in FIELDS)
        if not record["output"].strip():
            empty += 1
        elif key in seen:
            duplicates += 1
        else:
            seen.add(key)
            kept.append(record)
    return kept, {"records_read": len(records), "dropped_duplicates": duplicates, "dropped_empty_output": empty}


def subsample(records: list[dict], *, limit: int | None, fraction: float | None, seed: int) -> list[dict]:
    """A seeded random subset, in the original order."""
    count = limit if limit is not None else round(len(records) * fraction) if fraction is not None else None
    if count is None or count >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), count))
    return [records[i] for i in keep]


def split(records: list[dict], fractions: list[float], seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Deterministic train/validation/test split: a seeded shuffle, then cut by the fractions."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = round(len(records) * fractions[1])
    n_test = round(len(records) * fractions[2])
    n_train = len(records) - n_val - n_test
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    return tuple([records[i] for i in part] for part in parts)  # type: ignore[return-value]


def prepare_splits(
    source: str,
    *,
    limit: int | None = None,
    fraction: float | None = None,
    fractions: list[float] | tuple[float, ...] = (0.85, 0.10, 0.05),
    seed: int = 42,
) -> Splits:
    """Load, clean, subsample and split; raise if nothing is left to train on."""
    records, stats = clean(load_records(source))
    if not records:
        raise PeftGpt2Error(
            f"{source}: no usable records after cleaning ({stats['records_read']} read, "
            f"{stats['dropped_duplicates']} duplicates, {stats['dropped_empty_output']} with an empty output)"
        )
    records = subsample(records, limit=limit, fraction=fraction, seed=seed)
    train, validation, test = split(records, list(fractions), seed)
    if not train:
        raise PeftGpt2Error(f"{source}: {len(records)} records leave no training examples after the split")
    stats.update(records_used=len(records), train=len(train), validation=len(validation), test=len(test))
    return Splits(train, validation, test, stats)


def save_records(records: list[dict], path: Path) -> None:
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
