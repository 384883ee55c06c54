"""Data-to-text records (E2E NLG): a meaning representation (MR) with several human references.

    python -c "from peft_gpt2.data.data_to_text import load_mrs; g = load_mrs('data/e2e/devset.csv'); \
print(len(g), sum(len(x['references']) for x in g))"

Training uses one (MR, reference) pair per example; evaluation uses one record per MR with all its references.
Splits are made by MR, never by row, so no MR of the test split was trained on with another of its references.
Sources: the E2E CSV files (columns ``mr``, ``ref``; a test-input file may have ``mr`` only) or a Hugging Face
data set with ``meaning_representation`` and ``human_reference`` (``e2e_nlg``).
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

from peft_gpt2.data.instructions import Splits, rows_from_splits, split, subsample
from peft_gpt2.data.rows import TrainingRows
from peft_gpt2.data.sources import is_hub_name, read_text
from peft_gpt2.errors import PeftGpt2Error

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from peft_gpt2.data.config import DataConfig

HUB_FIELDS = ("meaning_representation", "human_reference")
CSV = (".csv",)


def load_mrs(source: str, hub_split: str = "train") -> list[dict]:
    """``[{"mr", "references"}]``, one per distinct MR in order of first appearance (references may be empty).

    A reference repeated for the same MR stays repeated (the E2E devset repeats 151 of its 4,672 rows), as in the
    official data and scoring scripts: NIST's and CIDEr's weights count references, so dropping them would move
    those scores away from the published ones.
    """
    rows = _hub_rows(source, hub_split) if is_hub_name(source, CSV) else _csv_rows(read_text(source), source)
    groups: dict[str, list[str]] = {}
    for mr, ref in rows:
        refs = groups.setdefault(mr, [])
        if ref:
            refs.append(ref)
    if not groups:
        raise PeftGpt2Error(f"{source}: no meaning representations")
    return [{"mr": mr, "references": refs} for mr, refs in groups.items()]


def _csv_rows(text: str, source: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        return _mr_ref_pairs(reader, source)
    except csv.Error as err:  # e.g. a field past csv's 131,072-character limit: an unclosed quote, or not E2E data
        raise PeftGpt2Error(f"{source}: line {reader.line_num + 1}: not a readable CSV row ({err})") from None


def _mr_ref_pairs(reader: csv.DictReader, source: str) -> list[tuple[str, str]]:
    columns = [c.strip() for c in reader.fieldnames or []]
    if "mr" not in columns:
        raise PeftGpt2Error(f"{source}: expected a CSV with columns mr and ref (E2E format), got {columns[:10]}")
    rows = []
    for row in reader:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        if not row.get("mr"):
            raise PeftGpt2Error(f"{source}: line {reader.line_num}: empty mr")
        rows.append((row["mr"], row.get("ref", "")))
    return rows


def _hub_rows(name: str, hub_split: str) -> list[tuple[str, str]]:
    import datasets

    try:
        data = datasets.load_dataset(name, split=hub_split)
    except Exception as err:  # datasets raises many types: network, missing, bad config
        raise PeftGpt2Error(
            f"could not load data set {name!r} ({type(err).__name__}); offline, use data/e2e/devset.csv"
        ) from None
    if not set(HUB_FIELDS) <= set(data.column_names):
        raise PeftGpt2Error(f"{name}: expected fields {HUB_FIELDS}, got {data.column_names}")
    return [(r[HUB_FIELDS[0]].strip(), r[HUB_FIELDS[1]].strip()) for r in data]


def as_records(groups: list[dict]) -> list[dict]:
    """One training record per (MR, reference), in the instruction shape the templates render."""
    return [{"instruction": g["mr"], "input": "", "output": ref} for g in groups for ref in g["references"]]


def as_eval_records(groups: list[dict]) -> list[dict]:
    """One record per MR with all its references (``output`` is the first, for single-reference metrics)."""
    return [
        {"instruction": g["mr"], "input": "", "output": (g["references"] or [""])[0], "references": g["references"]}
        for g in groups
    ]


def data_to_text_rows(d: DataConfig, tokenizer: PreTrainedTokenizerBase) -> TrainingRows:
    """Split the MRs (seeded, by MR), then train on every (MR, reference) pair of the training MRs.

    A hub data set (``e2e_nlg``) keeps its own train / validation / test splits (``data.split`` is not used);
    ``data.limit`` / ``data.fraction`` subsample the training MRs.
    """
    if is_hub_name(d.path, CSV):
        train, validation, test = (load_mrs(d.path, part) for part in ("train", "validation", "test"))
        train = subsample(train, limit=d.limit, fraction=d.fraction, seed=d.seed)
        groups = train + validation + test
    else:
        groups = [g for g in load_mrs(d.path) if g["references"]]
        groups = subsample(groups, limit=d.limit, fraction=d.fraction, seed=d.seed)
        train, validation, test = split(groups, list(d.split), d.seed)
    if not train:
        raise PeftGpt2Error(f"{d.path}: {len(groups)} MRs leave none for training after the split")
    stats = {"mrs": len(groups), "train_mrs": len(train), "validation_mrs": len(validation), "test_mrs": len(test)}
    splits = Splits(as_records(train), as_records(validation), as_eval_records(test), stats)
    stats.update(train=len(splits.train), validation=len(splits.validation), test=len(splits.test))
    return rows_from_splits(splits, d, tokenizer)
