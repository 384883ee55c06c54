"""Instruction records (Alpaca-style): validate, clean, subsample, split, and turn into training pairs.

    python -c "from peft_gpt2.data.instructions import load_records; \
print(len(load_records('data/sample_instructions.json')))"

Everything here runs before a model is loaded, so a bad record fails in a second, not after hours.
Cleaning is stated, not silent: exact duplicates and empty outputs are dropped and counted.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.data.rows import TrainingRows
from peft_gpt2.data.sources import read_source
from peft_gpt2.data.templates import TokenizedPairs, get_template, tokenize_pairs
from peft_gpt2.errors import PeftGpt2Error

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from peft_gpt2.data.config import DataConfig

FIELDS = ("instruction", "input", "output")
REQUIRED = ("instruction", "output")


@dataclass
class Splits:
    """Train/validation/test records plus what cleaning did, for the provenance file."""

    train: list[dict]
    validation: list[dict]
    test: list[dict]
    stats: dict = field(default_factory=dict)


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
            try:  # a lone surrogate ("\\ud800" in JSON) trains, then fails when the test split is written out
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                raise PeftGpt2Error(
                    f"{source}: record {i}: field {key!r} holds text that is not valid Unicode ({err.reason} at "
                    f"character {err.start}); fix or drop the record"
                ) from None
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


def instruction_rows(d: DataConfig, tokenizer: PreTrainedTokenizerBase) -> TrainingRows:
    """Load, clean and split ``data.path``; render the pairs through the template and check their completion masks.

    Needs only the tokenizer, never the model, so a bad record fails in seconds. The loss is on each completion and
    its eos; the test records stay as records, saved with the run for ``compare --data test``.
    """
    splits = prepare_splits(d.path, limit=d.limit, fraction=d.fraction, fractions=d.split, seed=d.seed)
    return rows_from_splits(splits, d, tokenizer)


def rows_from_splits(splits: Splits, d: DataConfig, tokenizer: PreTrainedTokenizerBase) -> TrainingRows:
    """Train and validation records rendered to pairs, checked and tokenized once; test records kept as they are."""
    template = get_template(d.template)
    stats = dict(splits.stats)
    kept = {}
    for name, records in (("train", splits.train), ("validation", splits.validation)):
        pairs = tokenize_pairs([template.render(r) for r in records], tokenizer, d.max_length, d.overlong, name)
        kept[name] = with_token_ids(pairs, tokenizer, d.max_length)
        stats.update({f"{name}_overlong_truncated": pairs.truncated, f"{name}_overlong_dropped": pairs.dropped})
    if not kept["train"]:
        raise PeftGpt2Error(f"{d.path}: every training example is longer than data.max_length={d.max_length}")
    return TrainingRows(kept["train"], kept["validation"], splits.test, stats)


def with_token_ids(kept: TokenizedPairs, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
    """The pairs, each with the tokens TRL would make of it, so TRL does not tokenize every example a second time.

    ``input_ids`` is prompt + completion + eos (TRL adds none to a completion already ending in it), cut at
    ``max_length``; ``completion_mask`` marks the completion. A tokenizer that adds special tokens (a BOS) makes
    other ids in TRL, which calls it with its defaults: checked on the first pair, and then the pairs go bare.
    """
    eos, rows = tokenizer.eos_token, []
    for pair, prompt, full in zip(kept.pairs, kept.prompt_ids, kept.full_ids, strict=True):
        ids = full + ([] if pair["completion"].endswith(eos) else [tokenizer.eos_token_id])
        mask = [0] * len(prompt) + [1] * (len(ids) - len(prompt))
        rows.append({**pair, "input_ids": ids[:max_length], "completion_mask": mask[:max_length]})
    if rows:
        first = rows[0]["prompt"] + rows[0]["completion"]
        trl_ids = tokenizer(text=first if first.endswith(eos) else first + eos)["input_ids"]
        if trl_ids[:max_length] != rows[0]["input_ids"]:
            return kept.pairs
    return rows
