"""Write the comparison of several evaluated models as Markdown, JSON, CSV and PNG charts (``charts``).

    write_report(rows, Path("reports"), "gpt2-alpaca", meta={"command": "peft-gpt2 compare ...", "date": "2025-01-01"})

A row is one flat dict per (model, evaluation set); any value may be ``None`` (the base model has no train
time), and ``None`` stays visible: "—" in text tables, empty in CSV, ``null`` in JSON, "n/a" on the chart.
A metric with ``<metric>_lo``/``_hi`` (``peft_gpt2.evaluation.uncertainty``) is shown as ``value [lo, hi]`` and
drawn with an error bar; ``<metric>_within_noise`` marks it "≈" (no difference from the row named by ``reference``).
Every file is written to a temporary file in the same folder and then renamed, so a crash never leaves a
half-written report behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peft_gpt2.evaluation.metrics.table import METRICS, TEXT
from peft_gpt2.evaluation.uncertainty import CONFIDENCE, RESAMPLES, SEED
from peft_gpt2.reporting import charts
from peft_gpt2.run_folder import write_atomic

# (row key, table header, format spec); "" means str(value). One table per data set, titled by its name, n and
# reference row; the metrics the metric table marks for the report, with their intervals, the budget beside them.
# The other metrics (precision, recall, sentence BLEU), adapter size and eval time, and every interval and test as
# numbers, are in the JSON and CSV.
COLUMNS: list[tuple[str, str, str]] = [
    ("model", "model", ""),
    ("method", "method", ""),
    *((m.name, m.label, m.fmt) for m in METRICS if m.report),
    ("trainable_parameters", "trainable params", ",.0f"),
    ("tokens_seen", "tokens seen", ",.0f"),
    ("train_time_s", "train time (s)", ".1f"),
    ("peak_memory_mb", "peak memory (MB)", ".0f"),
]
MISSING = "—"
NOISE = "≈"  # marks a value whose paired difference from the reference row is within noise


def format_value(value: Any, spec: str) -> str:
    """Format one cell; ``None`` becomes "—" and a value the spec cannot format is shown as is, never dropped."""
    if value is None:
        return MISSING
    try:
        return format(value, spec) if spec else str(value)
    except (TypeError, ValueError):
        return str(value)


def _cell(row: dict, key: str, spec: str) -> str:
    """A value, with its interval ``[lo, hi]`` when the row has one and the noise marker when it is set."""
    text = format_value(row.get(key), spec)
    if key == "model" and row.get("reference") is not None and row.get("reference") == row.get("model"):
        return f"{text} (ref)"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if row.get(key) is None or not isinstance(lo, numbers.Real) or not isinstance(hi, numbers.Real):
        return text
    if math.isfinite(lo) or math.isfinite(hi):  # nan bounds: nothing to resample
        text += f" [{format_value(lo, spec)}, {format_value(hi, spec)}]"
    return f"{NOISE} {text}" if row.get(f"{key}_within_noise") else text


OPTIONAL = tuple(m.name for m in METRICS if m.kind != TEXT)  # shown only where some row has a value


def shown(rows: Iterable[dict]) -> list[tuple[str, str, str]]:
    """The columns of `COLUMNS` these rows use: an optional metric no row measured is left out."""
    rows = list(rows)
    return [c for c in COLUMNS if c[0] not in OPTIONAL or any(row.get(c[0]) is not None for row in rows)]


def _cells(rows: Iterable[dict], columns: list[tuple[str, str, str]]) -> list[list[str]]:
    return [[_cell(row, key, spec) for key, _, spec in columns] for row in rows]


def legend(rows: list[dict]) -> list[str]:
    """What the brackets, the marker and the dashes mean; only the parts these rows use."""
    lines = []
    if any(f"{key}_lo" in row for row in rows for key, _, _ in COLUMNS):
        lines.append(
            f"[lo, hi] = {CONFIDENCE:.0%} percentile bootstrap interval over the n items "
            f"({RESAMPLES} resamples, seed {SEED}; corpus metrics recomputed on each resample)."
        )
    references = sorted({str(row["reference"]) for row in rows if row.get("reference") is not None})
    if references:
        lines.append(
            f"{NOISE} = within noise of the reference row (ref: {', '.join(references)}), on the same items: the "
            f"{CONFIDENCE:.0%} paired bootstrap interval of the difference contains 0, or a paired permutation test "
            f"gives p >= {1 - CONFIDENCE:.2f}. Unmarked values differ from the reference by both. Each cell is its "
            "own test, not corrected for multiple comparisons."
        )
    if any(row.get("nist") is not None for row in rows):
        lines.append(
            "Multi-reference data: BLEU and ROUGE-L use every reference of each item; NIST, CIDEr and ROUGE-L (E2E) "
            "follow the E2E challenge's scripts (peft_gpt2/evaluation/metrics/multi_reference.py); METEOR is not "
            "computed (METEOR 1.5 needs Java and its paraphrase tables; nltk's METEOR is another metric)."
        )
    return lines + [f"{MISSING} = not measured for that model."]


def markdown_table(rows: list[dict]) -> str:
    """Render `rows` as a GitHub Markdown table with every column of `COLUMNS`; numbers are right-aligned."""
    columns = shown(rows)
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "|".join("---:" if spec else "---" for _, _, spec in columns) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in _cells(rows, columns)]
    return "\n".join(lines)


def terminal_table(rows: list[dict]) -> str:
    """Render `rows` as plain aligned text, one titled table per data set (columns aligned across them)."""
    columns = shown(rows)
    cells = _cells(rows, columns)
    table = [[header for _, header, _ in columns], *cells]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if spec else c.ljust(w) for c, w, (_, _, spec) in zip(cells, widths, columns, strict=True)]
        return "  ".join(padded).rstrip()

    lines: list[str] = []
    by_row = {id(row): line(c) for row, c in zip(rows, cells, strict=True)}
    groups = _by_dataset(rows)
    for dataset, group in groups.items():
        title = _title(dataset, group) if len(groups) > 1 or dataset is not None else ""
        lines += ([""] if lines else []) + ([title] if title else [])
        lines += [line(table[0]), "  ".join("-" * w for w in widths), *(by_row[id(row)] for row in group)]
    measured = any(row.get("reference") is not None or any(k.endswith("_lo") for k in row) for row in rows)
    return "\n".join(lines + (["", *legend(rows)] if measured else []))


def _title(dataset: Any, group: list[dict]) -> str:
    """``<dataset>: n = <items> items; reference row: <model>`` (the parts the rows have)."""
    n = sorted({str(row["examples"]) for row in group if row.get("examples") is not None})
    reference = sorted({str(row["reference"]) for row in group if row.get("reference") is not None})
    about = ([f"n = {', '.join(n)} items"] if n else []) + [f"reference row: {r}" for r in reference]
    return f"{dataset}" + (": " + "; ".join(about) if about else "")


def _by_dataset(rows: list[dict]) -> dict[Any, list[dict]]:
    """Group rows by their ``dataset`` key, in order of first appearance (rows without one share group ``None``)."""
    groups: dict[Any, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get("dataset"), []).append(row)
    return groups


def _jsonable(value: Any) -> Any:
    """Plain numbers for numpy scalars; strict JSON has no NaN/inf, so a non-finite float (an overflowed perplexity)
    is written as ``null``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value) if math.isfinite(value) else None


def _markdown(rows: list[dict], name: str, meta: dict) -> str:
    parts = [f"# Model comparison: {name}"]
    parts += ["", *(f"- **{key}**: {value}" for key, value in meta.items())] if meta else []
    groups = _by_dataset(rows)
    for dataset, group in groups.items():
        parts += ["", f"## {dataset}", ""] if len(groups) > 1 or dataset is not None else [""]
        about = _title(dataset, group).partition(": ")[2]
        parts += [about + ".", ""] if about else []
        parts.append(markdown_table(group))
    for line in legend(rows):
        parts += ["", line]
    return "\n".join(parts + [""])


def _csv(rows: list[dict]) -> str:
    """Header = every key any row has: data set and n, `COLUMNS` order, then extra keys (e.g. ``f1_lo``) as met."""
    order = ["model", "method", "dataset", "examples", *(key for key, _, _ in COLUMNS)]
    known = [key for key in dict.fromkeys(order) if any(key in row for row in rows)]
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(known + [k for row in rows for k in row])), restval="")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return f.getvalue()


def write_report(rows: list[dict], out_dir: Path, name: str, *, meta: dict | None = None) -> dict[str, Path]:
    """Write ``<name>.md``, ``.json``, ``.csv`` and ``.png`` (and the trade-off chart) into `out_dir`, atomically.

    Args:
        rows (`list[dict]`): one flat dict per evaluated model and evaluation set; missing keys count as ``None``.
        out_dir (`Path`): created if needed.
        name (`str`): file stem and report title.
        meta (`dict`, *optional*): provenance (command, date, machine) shown as a list and stored in the JSON.

    Returns:
        `dict[str, Path]`: the written files, keyed ``"md"``, ``"json"``, ``"csv"``, ``"png"``, and
        ``"tradeoff"`` (``<name>-tradeoff.png``, quality against trainable parameters) when the rows' trainable
        parameter counts differ.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("md", "json", "csv", "png")}
    sizes = {row.get("trainable_parameters") for row in rows} - {None}
    if len(sizes) > 1:  # methods of different sizes (a sweep): quality against trainable parameters too
        paths["tradeoff"] = out_dir / f"{name}-tradeoff.png"
    document = {"meta": meta, "rows": [{k: _jsonable(v) for k, v in row.items()} for row in rows]}
    # Render everything before writing anything: an error in any format leaves the previous report untouched.
    contents = {
        "md": _markdown(rows, name, meta).encode(),
        "json": (json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n").encode(),
        "csv": _csv(rows).encode(),
        "png": charts.bar_chart(_by_dataset(rows), name),
    }
    if "tradeoff" in paths:  # BLEU is the E2E challenge's headline metric; F1 is SQuAD's
        metric = "bleu" if any(row.get("nist") is not None for row in rows) else "f1"
        contents["tradeoff"] = charts.tradeoff_chart(_by_dataset(rows), name, metric)
    for ext, data in contents.items():
        write_atomic(paths[ext], data)
    return paths
