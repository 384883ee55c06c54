"""Write the comparison of several evaluated models as Markdown, JSON, CSV and a PNG bar chart.

    write_report(rows, Path("reports"), "gpt2-alpaca", meta={"command": "peft-gpt2 compare ...", "date": "2025-01-01"})

A row is one flat dict per (model, evaluation set); any value may be ``None`` (the base model has no train
time), and ``None`` stays visible: "—" in text tables, empty in CSV, ``null`` in JSON, "n/a" on the chart.
A metric with ``<metric>_lo``/``_hi`` (``peft_gpt2.uncertainty``) is shown as ``value [lo, hi]`` and drawn with
an error bar; ``<metric>_within_noise`` marks it "≈" (no difference from the row named by ``reference``).
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
from peft_gpt2.uncertainty import CONFIDENCE, RESAMPLES, SEED

# (row key, table header, format spec); "" means str(value). One table per data set, titled by its name, n and
# reference row; the metrics with their intervals, the budget beside them. Precision, recall, sentence BLEU,
# adapter size and eval time (and every interval and test as numbers) are in the JSON and CSV.
COLUMNS: list[tuple[str, str, str]] = [
    ("model", "model", ""),
    ("method", "method", ""),
    ("f1", "F1", ".3f"),
    ("exact_match", "EM", ".3f"),
    ("bleu", "BLEU", ".3f"),
    ("rouge_l", "ROUGE-L", ".3f"),
    ("nist", "NIST", ".2f"),  # this and the next three: multi-reference (E2E) data only
    ("cider", "CIDEr", ".2f"),
    ("rouge_l_e2e", "ROUGE-L (E2E)", ".3f"),
    ("meteor", "METEOR", ".3f"),
    ("perplexity", "perplexity", ".2f"),
    ("token_accuracy", "token accuracy", ".3f"),
    ("trainable_parameters", "trainable params", ",.0f"),
    ("tokens_seen", "tokens seen", ",.0f"),
    ("train_time_s", "train time (s)", ".1f"),
    ("peak_memory_mb", "peak memory (MB)", ".0f"),
]
MISSING = "—"
NOISE = "≈"  # marks a value whose paired difference from the reference row is within noise
# Chart panels: (title, y label, metric keys). Perplexity gets its own panel because its scale is not 0..1.
_PANELS: list[tuple[str, str, list[str]]] = [
    ("overlap with the expected answer", "score (0–1, higher is better)", ["f1", "exact_match", "bleu", "rouge_l"]),
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


OPTIONAL = ("nist", "cider", "rouge_l_e2e", "meteor")  # shown only where some row has a value


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
            "follow the E2E challenge's scripts (peft_gpt2/metrics/multi_reference.py); METEOR is not computed "
            "(METEOR 1.5 needs Java and its paraphrase tables; nltk's METEOR is another metric)."
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


def _num(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, numbers.Real) and math.isfinite(value) else None


def _top(row: dict, key: str) -> float:
    """The highest point a bar and its error bar reach (0 when missing)."""
    return max(_num(row, key) or 0.0, _num(row, f"{key}_hi") or 0.0)


def _extent(row: dict, key: str) -> tuple[float, float]:
    """How far the interval reaches below and above the value (0, 0 without one; never negative)."""
    value = _num(row, key)
    if value is None:
        return 0.0, 0.0
    lo, hi = _num(row, f"{key}_lo"), _num(row, f"{key}_hi")
    return max(value - (value if lo is None else lo), 0.0), max((value if hi is None else hi) - value, 0.0)


def _bars(ax, row: dict, keys: list[str], offset: float, width: float, colour, *, rotate: bool) -> None:
    """One model's bars in a panel, each with its interval as an error bar and its value above that."""
    values = [_num(row, k) for k in keys]
    below, above = zip(*(_extent(row, k) for k in keys), strict=True)
    xs = [j + offset for j in range(len(keys))]
    heights = [v or 0.0 for v in values]
    bars = any(_num(row, f"{k}_lo") is not None for k in keys)  # no interval: no error bar, not a flat one
    ax.bar(xs, heights, width, color=colour, yerr=[below, above] if bars else None, capsize=2, error_kw={"lw": 0.8})
    for x, value, height, up, key in zip(xs, values, heights, above, keys, strict=True):
        label = "n/a" if value is None else format(value, ".2f" if key == "perplexity" else ".3f")
        ax.annotate(
            label,
            (x, height + up),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=90 if rotate else 0,
        )


def _chart(rows: list[dict], name: str) -> bytes:
    """Bar chart: one row of panels per evaluation set, one colour per model, a value label on every bar."""
    # A bare Figure on an Agg canvas, not pyplot: no GUI, and no change to the backend of the caller's process.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    panels = [(t, y, [k for k in ks if any(_num(r, k) is not None for r in rows)]) for t, y, ks in _PANELS]
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
            shared = max(_top(r, k) for r in rows for k in keys) or 1.0  # same scale for every dataset
            for ax, (dataset, group) in zip(axes[:, col], groups.items(), strict=True):
                # perplexity differs by orders of magnitude between data sets: scale it per data set
                top = (max(_top(r, k) for r in group for k in keys) or 1.0) if keys == ["perplexity"] else shared
                for model, offset in zip(models, offsets, strict=True):
                    row = next((r for r in group if str(r.get("model")) == model), {})
                    _bars(ax, row, keys, offset, width, colours[model], rotate=len(models) > 4)
                if len(keys) > 1:
                    ax.set_xticks(range(len(keys)), [_HEADERS[k] for k in keys])
                else:  # one metric: name each bar by its model, so the panel reads without the legend
                    ax.set_xticks(offsets, models, rotation=30, ha="right", fontsize=8)
                ax.set_ylim(0, top * 1.3)
                ax.set_ylabel(ylabel, fontsize=9)
                n = sorted({str(r["examples"]) for r in group if r.get("examples") is not None})
                about = f" (n={', '.join(n)})" if n and col == 0 else ""  # once per data set: narrow panels
                ax.set_title(title + (f" — {dataset}" if dataset is not None else "") + about, fontsize=10)
                ax.grid(axis="y", alpha=0.3)
                ax.set_axisbelow(True)
        handles = [Rectangle((0, 0), 1, 1, color=colours[m]) for m in models]
        references = {str(r.get("reference")) for r in rows}
        names = [f"{m} (ref)" if m in references else m for m in models]
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(models), 6), frameon=False)
        bars = any(key.endswith("_lo") for row in rows for key in row)
        fig.suptitle(
            f"Model comparison: {name}" + ("\nerror bars: 95% bootstrap intervals over the n items" * bars), fontsize=13
        )
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
