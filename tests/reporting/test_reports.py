"""Comparison reports: every format says the same thing, None stays visible, and nothing is half-written."""

from __future__ import annotations

import csv
import json

import pytest

from peft_gpt2.reporting import charts
from peft_gpt2.reporting.reports import COLUMNS, OPTIONAL, markdown_table, terminal_table, write_report

METRICS = ("f1", "precision", "recall", "exact_match", "bleu", "rouge_l", "perplexity", "token_accuracy")
COSTS = ("trainable_parameters", "adapter_size_mb", "train_time_s", "peak_memory_mb", "eval_time_s")


def row(model: str, method: str, dataset: str = "alpaca-test", **values) -> dict:
    base = {
        "model": model,
        "method": method,
        "dataset": dataset,
        "f1": 2 / 3,
        "precision": 0.38,
        "recall": 0.52,
        "exact_match": 0.1,
        "bleu": 0.12,
        "sentence_bleu": 0.15,
        "rouge_l": 0.33,
        "perplexity": 7.2,
        "token_accuracy": 0.55,
        "trainable_parameters": 921600,
        "adapter_size_mb": 3.5,
        "train_time_s": 164.8,
        "peak_memory_mb": 2100.0,
        "eval_time_s": 33.1,
    }
    return base | values


@pytest.fixture
def rows() -> list[dict]:
    untrained = dict.fromkeys(("trainable_parameters", "adapter_size_mb", "train_time_s"))
    return [
        row("gpt2", "base", f1=0.2, perplexity=38.41, **untrained),
        row("lora", "lora"),
        row("gpt2", "base", "sherlock-qa", f1=0.1, **untrained),
        row("lora", "lora", "sherlock-qa", f1=0.3),
    ]


@pytest.mark.parametrize("render", [markdown_table, terminal_table])
def test_tables_show_every_header_and_formatted_values(render, rows):
    text = render(rows)
    for key, header, _ in COLUMNS:
        assert (header in text) == (key not in OPTIONAL)  # multi-reference metrics only where measured
    with_nist = [{**row, "nist": 3.1415} for row in rows]
    assert "NIST" in render(with_nist) and "3.14" in render(with_nist) and "METEOR" not in render(with_nist)
    assert "0.667" in text  # 2/3 at 3 decimals
    assert "38.41" in text and "7.20" in text  # perplexity at 2 decimals
    assert "921,600" in text  # thousands separator
    assert "—" in text  # None, e.g. the base model's train time
    assert "None" not in text


def test_terminal_table_columns_line_up(rows):
    lines = terminal_table(rows).splitlines()
    assert len(lines) == 2 * 3 + len(rows) + 1  # per data set: title, header, rule, rows; a blank line between
    assert lines[0] == "alpaca-test" and lines[6] == "sherlock-qa" and lines[5] == ""
    f1_end = lines[1].index(" F1 ") + len(" F1")  # numbers are right-aligned under their header, in every table
    assert lines[7].index(" F1 ") + len(" F1") == f1_end
    body = lines[3:5] + lines[9:11]
    assert [line[f1_end - 5 : f1_end + 1] for line in body] == ["0.200 ", "0.667 ", "0.100 ", "0.300 "]


def measured(rows: list[dict]) -> list[dict]:
    """`rows` as ``compare`` returns them: n, the reference row, an interval per metric, a test per other row."""
    out = []
    for r in rows:
        extra = {"examples": 15, "reference": "lora", "tokens_seen": 123456 if r["method"] == "lora" else None}
        for key in METRICS:
            extra |= {f"{key}_lo": r[key] * 0.9, f"{key}_hi": r[key] * 1.1}
            if r["model"] != "lora":
                extra |= {f"{key}_diff": -0.01, f"{key}_diff_lo": -0.05, f"{key}_diff_hi": 0.03, f"{key}_p": 0.4}
                extra[f"{key}_within_noise"] = key != "f1"  # F1 differs, the rest are noise
        out.append(r | extra)
    return out


def test_intervals_markers_n_and_budget_in_every_format(rows, tmp_path):
    rows = measured(rows)
    text = terminal_table(rows)
    assert "0.200 [0.180, 0.220]" in text and "38.41 [34.57, 42.25]" in text  # value [lo, hi], the metric's format
    assert "≈ 0.120 [0.108, 0.132]" in text and "≈ 0.200 [" not in text  # the marker: within noise, F1 is not
    assert "lora (ref)" in text and "gpt2 (ref)" not in text and "123,456" in text
    assert "alpaca-test: n = 15 items; reference row: lora" in text
    assert "95% percentile bootstrap interval" in text and "≈ = within noise of the reference row" in text
    paths = write_report(rows, tmp_path, "cmp")
    md = paths["md"].read_text()
    assert "| gpt2 | base | 0.200 [0.180, 0.220] | ≈ 0.100 [0.090, 0.110] |" in md
    assert md.count("n = 15 items; reference row: lora.") == 2 and "≈ = within noise" in md
    assert json.loads(paths["json"].read_text())["rows"] == rows  # every number kept
    with paths["csv"].open(newline="", encoding="utf-8") as f:
        first = next(csv.DictReader(f))
    assert first["f1_lo"] == str(0.2 * 0.9) and first["f1_p"] == "0.4" and first["bleu_within_noise"] == "True"
    assert paths["png"].read_bytes().startswith(b"\x89PNG")


def test_a_reference_row_alone_and_missing_bounds_read_plainly():
    alone = measured([row("lora", "lora")])[0] | {"bleu_lo": None, "perplexity_lo": float("nan")}
    text = terminal_table([alone])
    assert "0.120 " in text and "0.120 [" not in text  # no lower bound: the value alone
    assert "lora (ref)" in text and "≈" not in text.split("\n\n")[0]  # the reference is never marked


def test_write_report_formats_round_trip(rows, tmp_path):
    meta = {"command": "peft-gpt2 compare recipes/quickstart.yaml", "date": "2025-01-01", "machine": "1x H100"}
    out = tmp_path / "new" / "dir"
    paths = write_report(rows, out, "cmp", meta=meta)
    assert set(paths) == {"md", "json", "csv", "png"}
    assert all(path.parent == out and path.is_file() for path in paths.values())

    assert json.loads(paths["json"].read_text()) == {"meta": meta, "rows": rows}

    with paths["csv"].open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        read = list(reader)
    assert set(reader.fieldnames) == set(rows[0])  # every key, including extras such as sentence_bleu
    assert read == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]

    md = paths["md"].read_text()
    assert md.startswith("# ") and meta["command"] in md and meta["machine"] in md
    assert md.count("| model |") == 2  # one table per dataset
    assert "## alpaca-test" in md and "## sherlock-qa" in md
    alpaca, sherlock = md.split("## sherlock-qa")
    assert "sherlock-qa" not in alpaca.split("## alpaca-test")[1] and "alpaca-test" not in sherlock

    png = paths["png"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert sorted(p.name for p in out.iterdir()) == ["cmp.csv", "cmp.json", "cmp.md", "cmp.png"]  # no temp files


def test_single_dataset_is_one_table_titled_by_its_dataset(tmp_path):
    paths = write_report([row("lora", "lora")], tmp_path, "one")
    md = paths["md"].read_text()
    assert md.count("| model |") == 1 and "## " in md  # titled by its dataset
    assert json.loads(paths["json"].read_text())["meta"] == {}


def test_all_none_metrics_do_not_crash(tmp_path):
    empty = row("broken", "lora", **dict.fromkeys(METRICS + COSTS))
    paths = write_report([empty], tmp_path, "empty")
    assert paths["png"].read_bytes().startswith(b"\x89PNG")
    assert json.loads(paths["json"].read_text())["rows"] == [empty]
    assert "—" in paths["md"].read_text() and "—" in terminal_table([empty])
    with paths["csv"].open(newline="") as f:
        assert next(csv.DictReader(f))["f1"] == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv", "empty.json", "empty.md", "empty.png"]


def test_missing_keys_and_non_finite_values(tmp_path):
    rows = [{"model": "gpt2", "f1": 0.5}, {"model": "lora", "perplexity": float("inf"), "bleu": None}]
    paths = write_report(rows, tmp_path, "partial")
    assert json.loads(paths["json"].read_text())["rows"][1]["perplexity"] is None  # strict JSON: no Infinity
    assert "0.500" in terminal_table(rows)
    assert paths["png"].stat().st_size > 1_000


def test_rewrite_replaces_report_and_leaves_no_temp_files(rows, tmp_path):
    write_report(rows, tmp_path, "cmp")
    write_report(rows[:1], tmp_path, "cmp")
    assert len(json.loads((tmp_path / "cmp.json").read_text())["rows"]) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_failed_render_leaves_previous_report_untouched(rows, tmp_path, monkeypatch):
    write_report(rows, tmp_path, "cmp")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr("peft_gpt2.reporting.charts.bar_chart", boom)
    with pytest.raises(RuntimeError):
        write_report(rows[:1], tmp_path, "cmp")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_crash_mid_write_keeps_old_file_and_removes_temp(rows, tmp_path, monkeypatch):
    write_report(rows, tmp_path, "cmp")
    before = (tmp_path / "cmp.md").read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("peft_gpt2.run_folder.os.replace", crash)
    with pytest.raises(OSError):
        write_report(rows[:1], tmp_path, "cmp")
    assert (tmp_path / "cmp.md").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.csv", "cmp.json", "cmp.md", "cmp.png"]


def test_a_sweep_gets_quality_against_trainable_parameters(tmp_path, monkeypatch):
    """Runs of different sizes add ``<name>-tradeoff.png``; BLEU on multi-reference (E2E) data, else F1."""
    sweep = [
        row("base", "base", trainable_parameters=None, bleu=0.1, nist=1.0),
        row("ia3", "ia3", trainable_parameters=8_000, bleu=0.4, bleu_lo=0.35, bleu_hi=0.45, nist=5.0),
        row("lora", "lora", trainable_parameters=300_000, bleu=0.55, bleu_lo=0.5, bleu_hi=0.6, nist=7.0),
        row("full", "full", trainable_parameters=124_000_000, bleu=0.6, nist=7.5),
    ]
    drawn = []
    original = charts.tradeoff_chart

    def spy(groups, name, metric):
        drawn.append((metric, [r["model"] for g in groups.values() for r in g]))
        return original(groups, name, metric)

    monkeypatch.setattr(charts, "tradeoff_chart", spy)
    paths = write_report(sweep, tmp_path, "sweep")
    assert paths["tradeoff"] == tmp_path / "sweep-tradeoff.png"
    assert paths["tradeoff"].read_bytes().startswith(b"\x89PNG") and paths["tradeoff"].stat().st_size > 10_000
    assert drawn == [("bleu", ["base", "ia3", "lora", "full"])]
    same_size = [row("a", "lora"), row("b", "lora", f1=0.1)]
    assert "tradeoff" not in write_report(same_size, tmp_path, "pair")
