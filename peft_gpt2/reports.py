"""Write the comparison of several evaluated models as Markdown, JSON, CSV and a PNG bar chart.

    write_report(rows, Path("reports"), "gpt2-alpaca", meta={"command": "peft-gpt2 compare ...", "date": "2025-01-01"})

A row is one flat dict per (model, evaluation set); any value may be ``None`` (the base model has no train
time), and ``None`` stays visible: "—" in text tables, empty in CSV, ``null`` in JSON, "n/a" on the chart.
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

from peft_gpt2.run_folder import write_atomic

# (row key, table header, format spec); "" means str(value).
COLUMNS: list[tuple[str, str, str]] = [
    ("model", "model", ""),
    ("method", "method", ""),
    ("dataset", "dataset", ""),
    ("f1", "F1", ".3f"),
    ("precision", "P", ".3f"),
    ("recall", "R", ".3f"),
    ("exact_match", "EM", ".3f"),
    ("bleu", "BLEU", ".3f"),
    ("rouge_l", "ROUGE-L", ".3f"),
    ("perplexity", "perplexity", ".2f"),
    ("token_accuracy", "token accuracy", ".3f"),
    ("trainable_parameters", "trainable params", ",.0f"),
    ("adapter_size_mb", "adapter size (MB)", ".2f"),
    ("train_time_s", "train time (s)", ".1f"),
    ("peak_memory_mb", "peak memory (MB)", ".0f"),
    ("eval_time_s", "eval time (s)", ".1f"),
]
MISSING = "—"
# Chart panels: (title, y label, metric keys). Perplexity gets its own panel because its scale is not 0..1.
_PANELS: list[tuple[str, str, list[str]]] = [
    ("overlap with the reference", "score (0–1, higher is better)", ["f1", "exact_match", "bleu", "rouge_l"]),
    ("perplexity", "perplexity (lower is better)", ["perplexity"]),
    ("token accuracy", "accuracy (0–1, higher is better)", ["token_accuracy"]),
]
_HEADERS = {key: header for key, header, _ in COLUMNS}


def format_value(value: Any, spec: str) -> str:
    """Format one cell; ``None`` becomes "—" and a value the spec cannot format is shown as is, never dropped."""
    if value is None:
        return MISSING
    try:
        return format(value, spec) if spec else str(value)
    except (TypeError, ValueError):
        return str(value)


def _cells(rows: Iterable[dict]) -> list[list[str]]:
    return [[format_value(row.get(key), spec) for key, _, spec in COLUMNS] for row in rows]


def markdown_table(rows: list[dict]) -> str:
    """Render `rows` as a GitHub Markdown table with every column of `COLUMNS`; numbers are right-aligned."""
    lines = ["| " + " | ".join(header for _, header, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join("---:" if spec else "---" for _, _, spec in COLUMNS) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in _cells(rows)]
    return "\n".join(lines)


def terminal_table(rows: list[dict]) -> str:
    """Render `rows` as plain aligned text for a terminal or a log, with no dependency beyond the standard library."""
    table = [[header for _, header, _ in COLUMNS], *_cells(rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if spec else c.ljust(w) for c, w, (_, _, spec) in zip(cells, widths, COLUMNS, strict=True)]
        return "  ".join(padded).rstrip()

    return "\n".join([line(table[0]), "  ".join("-" * w for w in widths), *(line(r) for r in table[1:])])


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
        parts.append(markdown_table(group))
    parts += ["", f"{MISSING} = not measured for that model.", ""]
    return "\n".join(parts)


def _csv(rows: list[dict]) -> str:
    """Header = every key any row has: `COLUMNS` order first, then extra keys (e.g. ``sentence_bleu``) as met."""
    known = [key for key, _, _ in COLUMNS if any(key in row for row in rows)]
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(known + [k for row in rows for k in row])), restval="")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return f.getvalue()


def _chart(rows: list[dict], name: str) -> bytes:
    """Bar chart: one row of panels per evaluation set, one colour per model, a value label on every bar."""
    # A bare Figure on an Agg canvas, not pyplot: no GUI, and no change to the backend of the caller's process.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    def num(row: dict, key: str) -> float | None:
        value = row.get(key)
        return float(value) if isinstance(value, numbers.Real) and math.isfinite(value) else None

    panels = [(t, y, [k for k in ks if any(num(r, k) is not None for r in rows)]) for t, y, ks in _PANELS]
    panels = [p for p in panels if p[2]]
    groups = _by_dataset(rows)
    models = list(dict.fromkeys(str(row.get("model")) for row in rows))
    colours = {m: colormaps["tab10"](i % 10) for i, m in enumerate(models)}
    width = 0.8 / max(len(models), 1)
    offsets = [(i - (len(models) - 1) / 2) * width for i in range(len(models))]
    if not panels:
        fig = Figure(figsize=(6, 2))
        fig.text(0.5, 0.5, "no metrics to plot", ha="center", va="center")
    else:
        ratios = [max(len(keys) * len(models) / 3, 1.2) for _, _, keys in panels]
        fig = Figure(figsize=(max(9.0, 2.2 * sum(ratios)), 3.8 * len(groups) + 1), dpi=120, layout="constrained")
        axes = fig.subplots(len(groups), len(panels), squeeze=False, gridspec_kw={"width_ratios": ratios})
        for col, (title, ylabel, keys) in enumerate(panels):
            shared = max(num(r, k) or 0.0 for r in rows for k in keys) or 1.0  # same scale for every dataset
            for ax, (dataset, group) in zip(axes[:, col], groups.items(), strict=True):
                # perplexity differs by orders of magnitude between data sets: scale it per data set
                own = max(num(r, k) or 0.0 for r in group for k in keys) or 1.0
                top = own if keys == ["perplexity"] else shared
                for model, offset in zip(models, offsets, strict=True):
                    row = next((r for r in group if str(r.get("model")) == model), {})
                    values = [num(row, k) for k in keys]
                    xs = [j + offset for j in range(len(keys))]
                    bars = ax.bar(xs, [v or 0.0 for v in values], width, color=colours[model])
                    fmts = [".2f" if k == "perplexity" else ".3f" for k in keys]
                    labels = ["n/a" if v is None else format(v, f) for v, f in zip(values, fmts, strict=True)]
                    ax.bar_label(bars, labels=labels, padding=2, fontsize=7, rotation=90 if len(models) > 4 else 0)
                if len(keys) > 1:
                    ax.set_xticks(range(len(keys)), [_HEADERS[k] for k in keys])
                else:  # one metric: name each bar by its model, so the panel reads without the legend
                    ax.set_xticks(offsets, models, rotation=30, ha="right", fontsize=8)
                ax.set_ylim(0, top * 1.3)
                ax.set_ylabel(ylabel, fontsize=9)
                ax.set_title(title + (f" — {dataset}" if dataset is not None else ""), fontsize=10)
                ax.grid(axis="y", alpha=0.3)
                ax.set_axisbelow(True)
        handles = [Rectangle((0, 0), 1, 1, color=colours[m]) for m in models]
        fig.legend(handles, models, loc="outside lower center", ncol=min(len(models), 6), frameon=False)
        fig.suptitle(f"Model comparison: {name}", fontsize=13)
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def write_report(rows: list[dict], out_dir: Path, name: str, *, meta: dict | None = None) -> dict[str, Path]:
    """Write ``<name>.md``, ``.json``, ``.csv`` and ``.png`` into `out_dir`, each atomically.

    Args:
        rows (`list[dict]`): one flat dict per evaluated model and evaluation set; missing keys count as ``None``.
        out_dir (`Path`): created if needed.
        name (`str`): file stem and report title.
        meta (`dict`, *optional*): provenance (command, date, machine) shown as a list and stored in the JSON.

    Returns:
        `dict[str, Path]`: the written files, keyed ``"md"``, ``"json"``, ``"csv"``, ``"png"``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("md", "json", "csv", "png")}
    document = {"meta": meta, "rows": [{k: _jsonable(v) for k, v in row.items()} for row in rows]}
    # Render everything before writing anything: an error in any format leaves the previous report untouched.
    contents = {
        "md": _markdown(rows, name, meta).encode(),
        "json": (json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n").encode(),
        "csv": _csv(rows).encode(),
        "png": _chart(rows, name),
    }
    for ext, data in contents.items():
        write_atomic(paths[ext], data)
    return paths
