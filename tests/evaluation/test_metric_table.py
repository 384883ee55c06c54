"""The one table of metrics: consistent with itself, and the lists others read are its views."""

from __future__ import annotations

import pytest

from peft_gpt2.evaluation import uncertainty
from peft_gpt2.evaluation.metrics import item_scores, scores_from_items, table
from peft_gpt2.reporting import charts, reports


def test_rows_are_complete():
    assert len(set(table.names())) == len(table.METRICS)
    for m in table.METRICS:
        assert m.kind in (table.TEXT, table.MULTI_REFERENCE, table.MULTIPLE_CHOICE), m.name
        assert m.aggregate in (table.MEAN, table.RATIO, table.CORPUS, None), m.name
        assert (m.aggregate == table.CORPUS) <= (m.finish is not None), m.name  # a corpus statistic needs one
        assert m.panel is None or m.panel in table.PANELS, m.name
        assert m.item is None or m.kind == table.TEXT, m.name
    for title in table.PANELS:  # a panel draws metrics of one direction, so its axis can say which way is better
        assert len({m.higher_is_better for m in table.METRICS if m.panel == title}) == 1, title


def test_the_lists_elsewhere_are_views_of_the_table():
    metric_columns = [c for c in reports.COLUMNS if c[0] in table.BY_NAME]
    assert metric_columns == [(m.name, m.label, m.fmt) for m in table.METRICS if m.report]
    assert set(reports.OPTIONAL) == {"nist", "cider", "rouge_l_e2e", "meteor", "acc", "acc_norm"}
    resampled = uncertainty.METRICS + uncertainty.MULTI_REFERENCE_METRICS + uncertainty.CHOICE_METRICS
    assert sorted(resampled) == sorted(table.names(computed=True))
    assert [keys for _, _, keys in charts._panels()] == [
        ["f1", "exact_match", "bleu", "rouge_l"],
        ["perplexity"],
        ["token_accuracy"],
    ]
    assert charts._panels()[1][1] == "perplexity (lower is better)"


def test_per_item_metrics_are_scored_once_per_item_and_the_set_from_the_items():
    items = item_scores(["It was Irene Adler.", "Holmes"], ["Irene Adler", "Watson"])
    assert list(items) == [m.column for m in table.PER_ITEM]
    assert all(len(column) == 2 for column in items.values())
    scores = scores_from_items(items)
    assert list(scores) == [m.name for m in table.PER_ITEM]
    assert scores["f1"] == pytest.approx((2 / 3 + 0) / 2)
    with pytest.raises(ValueError, match="not scored from items"):
        scores_from_items({"nll": [1.0], "tokens": [1]}, [table.BY_NAME["perplexity"]])
