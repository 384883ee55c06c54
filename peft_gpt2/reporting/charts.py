"""The report's charts, as PNG bytes: metrics per model as bars, and quality against trainable parameters.

Drawn on a bare ``Figure`` with an Agg canvas, not pyplot: no GUI, and no change to the caller's backend. A missing
value is drawn as "n/a"; a metric with ``<metric>_lo``/``_hi`` gets an error bar (its bootstrap interval).
"""

from __future__ import annotations

import io
import math
import numbers
from typing import Any

from peft_gpt2.evaluation.metrics.table import BY_NAME, METRICS, PANELS


def _panels() -> list[tuple[str, str, list[str]]]:
    """``(title, y label, metric keys)`` per chart panel, from the metric table: perplexity gets its own panel
    because its scale is not 0..1."""
    panels = []
    for title, axis in PANELS.items():
        metrics = [m for m in METRICS if m.panel == title]
        panels.append((title, axis.format(better=metrics[0].better), [m.name for m in metrics]))
    return panels


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


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
        label = "n/a" if value is None else format(value, BY_NAME[key].fmt)
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


def bar_chart(groups: dict[Any, list[dict]], name: str) -> bytes:
    """Bar chart of ``groups`` (rows by evaluation set): a row of panels per set, a colour per model, a value label
    on every bar."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rows = [row for group in groups.values() for row in group]
    panels = [(t, y, [k for k in ks if any(_num(r, k) is not None for r in rows)]) for t, y, ks in _panels()]
    panels = [p for p in panels if p[2]]
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
                    ax.set_xticks(range(len(keys)), [BY_NAME[k].label for k in keys])
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
    return _png(fig)


def tradeoff_chart(groups: dict[Any, list[dict]], name: str, metric: str) -> bytes:
    """``metric`` (with its interval) against trainable parameters on a log scale: a panel per evaluation set, a
    labelled point per trained model (rows without a parameter count, such as the base, are left out)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * len(groups), 4.5), dpi=120, layout="constrained")
    for ax, (dataset, group) in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups.items(), strict=True):
        points = [r for r in group if _num(r, "trainable_parameters") and _num(r, metric) is not None]
        for row in points:
            x, y = _num(row, "trainable_parameters"), _num(row, metric)
            below, above = _extent(row, metric)
            ax.errorbar([x], [y], yerr=[[below], [above]], fmt="o", capsize=3, lw=0.8)
            ax.annotate(str(row.get("model")), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"{BY_NAME[metric].label} ({BY_NAME[metric].better})")
        n = sorted({str(r["examples"]) for r in points if r.get("examples") is not None})
        ax.set_title((f"{dataset}" if dataset is not None else name) + (f" (n={', '.join(n)})" if n else ""))
        ax.grid(alpha=0.3, which="both")
    bars = any(_num(r, f"{metric}_lo") is not None for group in groups.values() for r in group)
    note = "\nerror bars: 95% bootstrap intervals over the n items" if bars else ""
    fig.suptitle(f"Quality against trainable parameters: {name}{note}", fontsize=12)
    return _png(fig)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def loss_series(log_history: list[dict], before: float | None = None, after: float | None = None) -> dict:
    """The loss curve's data from ``trainer.state.log_history``: ``{"train", "eval"}``, lists of ``(step, loss)``,
    and ``"validation"``, ``{"before": (step, loss), "after": (step, loss)}``.

    ``train`` is the Trainer's loss per ``logging_steps``; ``eval`` its ``eval_loss`` (per ``train.eval_steps``, a mean
    of per-batch means); ``validation`` our token-weighted validation loss before (step 0) and after training (the
    last step), the two numbers the run's provenance records. Non-finite values are left out.
    """
    def points(key: str) -> list[tuple[int, float]]:
        return [(int(e["step"]), float(e[key])) for e in log_history if "step" in e and _finite(e.get(key))]

    last = max((int(e["step"]) for e in log_history if "step" in e), default=0)
    validation = {k: (s, float(v)) for k, s, v in (("before", 0, before), ("after", last, after)) if _finite(v)}
    return {"train": points("loss"), "eval": points("eval_loss"), "validation": validation}


def loss_chart(series: dict, name: str) -> bytes:
    """Loss against optimizer step: the train loss as a line, the Trainer's eval loss as a dashed line, the
    validation loss before and after training as labelled points."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    styles = {"train": ("train loss (per logging step)", "-", "."), "eval": ("eval loss (Trainer)", "--", "s")}
    for key, (label, line, marker) in styles.items():
        if series[key]:
            steps, losses = zip(*series[key], strict=True)
            ax.plot(steps, losses, line, marker=marker, label=label, lw=1.2)
    for when, (step, loss) in series["validation"].items():
        ax.plot([step], [loss], "o", color="black", zorder=3)
        left = when == "after"  # the last step is the right edge: label it inwards
        ax.annotate(
            f"{when}: {loss:.3f}", (step, loss), xytext=(-4 if left else 4, 4), textcoords="offset points",
            ha="right" if left else "left", fontsize=8,
        )
    if series["validation"]:
        ax.plot([], [], "o", color="black", label="validation loss (token-weighted)")
    if not series["train"]:
        note = "no train loss logged: fewer steps than train.logging_steps"
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="grey")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"Loss: {name}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _png(fig)
