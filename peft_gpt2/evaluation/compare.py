"""Compare a base model, full fine-tunes and LoRA adapters on the same held-out data, in one table.

    peft-gpt2 compare adapters/alpaca-lora adapters/alpaca-full --data test --data data/sherlock_qa.json

The base is loaded once into an ``AdapterSet`` with every adapter trained on it (once per PEFT method: a model
holds one), and each row is scored inside ``using(adapter)`` (the base row with adapters disabled), so every row
sees the same base weights. Full fine-tunes
are whole models and are loaded one at a time. Every row is scored by ``evaluate_model`` on the same records.

Every metric gets a 95% bootstrap interval over the data set's items, and every row a paired bootstrap test
against the reference row (default: the first run given) on the same items (``peft_gpt2.evaluation.uncertainty``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.adapters.folder import disk_size_mb, folder_kind
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.evaluate import evaluate_model, load_eval_records
from peft_gpt2.evaluation.metrics.table import names
from peft_gpt2.evaluation.uncertainty import compare_rows
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.models.methods import peft_type
from peft_gpt2.run_folder import Provenance, held_out_records, write_atomic

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TEST_DATA = "test"  # --data value meaning "the held-out split saved with the runs"


@dataclass
class Run:
    """One row of the comparison: the base, an adapter, or a full model folder."""

    label: str
    kind: str  # base | adapter | model
    path: Path | None
    provenance: Provenance
    base: str | None = None  # the model an adapter attaches to

    @property
    def method(self) -> str:
        return "base" if self.kind == "base" else self.provenance.method or self.kind


def plan_runs(paths: list[str], base: str | None = None) -> tuple[str, list[Run]]:
    """Check every folder before loading anything; the base row is ``base`` or the first run's base.

    Adapters trained on other bases (e.g. an instruction adapter over a merged domain model) are scored on
    their own base, which is loaded once for all the adapters that share it.
    """
    runs = []
    for p in paths:
        path = Path(p)
        kind = folder_kind(path)
        provenance = Provenance.read(path)
        run_base = provenance.base_model or base
        if kind == "adapter" and not run_base:
            raise PeftGpt2Error(f"{path}: no base model recorded in peft_gpt2.json; pass --base")
        runs.append(Run(provenance.name or path.name, kind, path, provenance, run_base))
    base = base or next((r.base for r in runs if r.base), None)
    if base is None:
        raise PeftGpt2Error("no base model recorded in the runs' peft_gpt2.json; pass --base")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels) or "base" in labels:
        raise PeftGpt2Error(f"run names must be unique and not 'base': {labels}")
    return base, [Run("base", "base", None, Provenance(), base), *runs]


def eval_sets(runs: list[Run], data: list[str], task: str | None, limit: int | None) -> list[tuple[str, list, str]]:
    """``(name, records, task)`` per data set; ``test`` is the runs' shared held-out split."""
    sets = []
    for source in data:
        if source == TEST_DATA:
            splits = {held_out_records(r.path) for r in runs if r.path and held_out_records(r.path)}
            if not splits:
                raise PeftGpt2Error("--data test: none of the runs has a saved test.json; pass a data file")
            contents = {s.read_text(encoding="utf-8") for s in splits}
            if len(contents) > 1:
                raise PeftGpt2Error(
                    "the runs hold different test splits (other data, seed or split), so one run's test records "
                    "may be another's training data; pass an evaluation file with --data"
                )
            records, kind = load_eval_records(str(sorted(splits)[0]))  # Alpaca records, or a chat run's messages
            name = "test"
        else:
            records, kind = load_eval_records(source, task)
            name = Path(source).stem
        sets.append((name, records[:limit] if limit else records, kind))
    return sets


def _row(run: Run, dataset: str, metrics: dict, eval_time: float) -> dict:
    p = run.provenance
    return {
        "model": run.label,
        "method": run.method,
        "base": run.base if run.kind != "model" else None,
        "dataset": dataset,
        **{name: metrics.get(name) for name in names()},  # None where the data has no such metric
        "trainable_parameters": p.trainable_parameters,
        "tokens_seen": p.tokens_seen,
        "adapter_size_mb": round(disk_size_mb(run.path), 2) if run.path else None,
        "train_time_s": p.train_time_s,
        "peak_memory_mb": p.peak_memory_mb,
        "eval_time_s": round(eval_time, 2),
        "examples": metrics["examples"],
        "mean_answer_words": metrics.get("mean_answer_words"),
    }


def shared_template(runs: list[Run]) -> str:
    """The prompt template every row answers instruction records through; a text-corpus or chat run has none (a
    chat run's records carry their turns, rendered by the tokenizer's chat template) and uses the others' one."""
    templates = {
        r.provenance.template for r in runs if r.kind != "base" and r.provenance.data_format not in ("text", "messages")
    }
    if len(templates) > 1:
        raise PeftGpt2Error(f"the runs were trained with different prompt templates {sorted(templates)}")
    return templates.pop() if templates else Provenance().template


def reference_row(runs: list[Run], reference: str | None) -> str:
    """The label every row is tested against: `reference`, or the first fine-tuned run (the first one given)."""
    labels = [r.label for r in runs]
    if reference is None:
        return labels[1] if len(labels) > 1 else labels[0]
    if reference not in labels:
        raise PeftGpt2Error(f"--reference {reference!r} is not a row of this comparison; rows: {labels}")
    return reference


def add_uncertainty(rows: list[dict], items: dict[tuple[str, str], dict], reference: str) -> None:
    """Add each metric's interval and the paired test against `reference` to `rows`, one data set at a time."""
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        found = {label: columns for (label, name), columns in items.items() if name == dataset}
        stats = compare_rows(found, reference if reference in found else None)
        for row in rows:
            if row["dataset"] == dataset:
                row.update(reference=reference, **stats[row["model"]])


def write_lines(texts: list[str], path: Path) -> Path:
    """One text per line (a line break inside one becomes a space), atomically: what the E2E scripts score."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(" ".join(t.split()) + "\n" for t in texts).encode("utf-8"))
    return path


def write_jsonl(rows: list[dict], path: Path) -> None:
    """Write atomically: a temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


def each_model(runs: list[Run], base_name: str) -> Iterator[tuple[PreTrainedModel, PreTrainedTokenizerBase, Run]]:
    """Every run's model, ready to score: the bare base first, then adapters swapped into their base (loaded once
    per base and PEFT method, since a model holds one method), then full-model folders."""
    from peft_gpt2.models.loading import load_base

    bases = [base_name] + sorted({r.base for r in runs if r.kind == "adapter"} - {base_name})
    for name in bases:
        by_method: dict[str | None, list[Run]] = {}
        for run in (r for r in runs if r.kind == "adapter" and r.base == name):
            by_method.setdefault(peft_type(run.path), []).append(run)
        for i, group in enumerate(list(by_method.values()) or [[]]):
            model, tokenizer = load_base(name)
            adapter_set = AdapterSet(model, tokenizer, {r.label: r.path for r in group})
            for run in ([runs[0]] if name == base_name and i == 0 else []) + group:
                with adapter_set.using(None if run.kind == "base" else run.label):
                    yield adapter_set.model, tokenizer, run
            del model, adapter_set
    for run in (r for r in runs if r.kind == "model"):
        yield *load_base(str(run.path)), run


def compare(
    paths: list[str],
    *,
    data: list[str] | None = None,
    base: str | None = None,
    task: str | None = None,
    limit: int | None = None,
    settings: GenerationSettings | None = None,
    answers_dir: Path | None = None,
    reference: str | None = None,
) -> list[dict]:
    """Evaluate the base and every run on every data set; one row per (model, data set).

    Args:
        paths (`list[str]`): adapter or full-model folders written by ``peft-gpt2 train``.
        data (`list[str]`, *optional*, defaults to ``["test"]``): evaluation files; ``test`` is the runs'
            shared held-out split.
        base (`str`, *optional*): the base model; defaults to the one the runs record.
        task (`str`, *optional*): ``qa``, ``instructions`` or ``chat`` for the data files (detected if unset).
        limit (`int`, *optional*): evaluate the first N records of each set.
        settings (`GenerationSettings`, *optional*): decoding settings (greedy by default).
        answers_dir (`Path`, *optional*): where to write ``<model>.<dataset>.answers.jsonl``.
        reference (`str`, *optional*): the row (a run's name, or ``base``) every other row is tested against;
            defaults to the first run given.
    """
    base_name, runs = plan_runs(paths, base)
    reference = reference_row(runs, reference)
    sets = eval_sets(runs, data or [TEST_DATA], task, limit)
    template = shared_template(runs)
    items: dict[tuple[str, str], dict] = {}  # (row, data set) -> per-item columns, for the bootstrap

    def score(model, tokenizer, run: Run) -> list[dict]:
        rows = []
        for name, records, _ in sets:
            start = time.perf_counter()
            result = evaluate_model(model, tokenizer, records, template=template, settings=settings)
            rows.append(_row(run, name, result.metrics, time.perf_counter() - start))
            items[run.label, name] = result.items
            if answers_dir is not None:
                write_jsonl(result.answers, answers_dir / f"{run.label}.{name}.answers.jsonl")
            m = result.metrics
            said = (
                f"acc {m['acc']:.3f}  acc_norm {m['acc_norm']:.3f}"  # multiple choice
                if "acc" in m
                else f"F1 {m['f1']:.3f}  BLEU {m['bleu']:.3f}  perplexity {m['perplexity']:.2f}"
            )
            print(f"{run.label:>24} {name:>16}: {said}", flush=True)
        return rows

    rows = []
    for model, tokenizer, run in each_model(runs, base_name):
        rows += score(model, tokenizer, run)
    order = {r.label: i for i, r in enumerate(runs)}
    set_order = {name: i for i, (name, _, _) in enumerate(sets)}
    rows.sort(key=lambda row: (set_order[row["dataset"]], order[row["model"]]))
    add_uncertainty(rows, items, reference)
    return rows
