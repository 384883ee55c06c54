"""ServerMetrics: every metric is exposed with the values recorded, parsed back as a Prometheus server would.

    python -m pytest tests/serving/test_serving_metrics.py -q
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from peft_gpt2.serving import metrics as serving_metrics
from peft_gpt2.serving.metrics import ServerMetrics


def scrape(metrics: ServerMetrics) -> dict[tuple[str, tuple], float]:
    """Every sample of a render, keyed by (sample name, sorted labels)."""
    body, _ = metrics.render()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode("utf-8"))
        for s in family.samples
    }


def families(metrics: ServerMetrics) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(metrics.render()[0].decode("utf-8"))}


STATE = {"queue": 4, "rows": 3, "adapters": 2}


@pytest.fixture
def recorded() -> ServerMetrics:
    """A few of each event, the numbers chosen so every bucket boundary below is crossed."""
    state = dict(STATE)
    m = ServerMetrics(lambda: state["queue"], lambda: state["rows"], lambda: state["adapters"])
    m.state = state  # the tests change it to see the gauges read at scrape time
    m.request("completions", "base", 200, 0.2)
    m.request("completions", "base", 200, 0.4)
    m.request("chat_completions", "unknown", 404, 0.003)
    m.first_token("base", 0.03)
    m.first_token("base", 0.07)
    m.finished("base", prompt_tokens=5, completion_tokens=11, seconds=0.5)  # 0.05 s per token after the first
    m.finished("base", prompt_tokens=7, completion_tokens=1, seconds=0.0)  # one token: no per-token time
    for rows in (1, 3, 3, 64):
        m.step(rows)
    m.adapter_event("load")
    m.adapter_event("load")
    m.adapter_event("evict")
    return m


def test_every_metric_is_exposed_with_its_type(recorded):
    expected = {
        "peft_gpt2_requests": "counter",
        "peft_gpt2_request_duration_seconds": "histogram",
        "peft_gpt2_time_to_first_token_seconds": "histogram",
        "peft_gpt2_time_per_output_token_seconds": "histogram",
        "peft_gpt2_prompt_tokens": "counter",
        "peft_gpt2_generation_tokens": "counter",
        "peft_gpt2_decode_batch_rows": "histogram",
        "peft_gpt2_adapter_events": "counter",
        "peft_gpt2_queued_requests": "gauge",
        "peft_gpt2_running_rows": "gauge",
        "peft_gpt2_loaded_adapters": "gauge",
    }
    assert expected.items() <= families(recorded).items()


def test_requests_and_latency(recorded):
    got = scrape(recorded)

    def req(endpoint, model, status):
        return got[("peft_gpt2_requests_total", (("endpoint", endpoint), ("model", model), ("status", status)))]

    assert req("completions", "base", "200") == 2
    assert req("chat_completions", "unknown", "404") == 1
    lat = "peft_gpt2_request_duration_seconds"
    assert got[(f"{lat}_count", (("endpoint", "completions"),))] == 2
    assert got[(f"{lat}_sum", (("endpoint", "completions"),))] == pytest.approx(0.6)
    assert got[(f"{lat}_bucket", (("endpoint", "completions"), ("le", "0.3")))] == 1
    assert got[(f"{lat}_bucket", (("endpoint", "completions"), ("le", "0.5")))] == 2
    assert got[(f"{lat}_bucket", (("endpoint", "chat_completions"), ("le", "0.005")))] == 1


def test_generation_timings_and_tokens(recorded):
    got = scrape(recorded)
    ttft = "peft_gpt2_time_to_first_token_seconds"
    assert got[(f"{ttft}_count", (("model", "base"),))] == 2
    assert got[(f"{ttft}_sum", (("model", "base"),))] == pytest.approx(0.1)
    assert got[(f"{ttft}_bucket", (("le", "0.04"), ("model", "base")))] == 1
    assert got[(f"{ttft}_bucket", (("le", "0.08"), ("model", "base")))] == 2
    tpot = "peft_gpt2_time_per_output_token_seconds"
    assert got[(f"{tpot}_count", (("model", "base"),))] == 1
    assert got[(f"{tpot}_sum", (("model", "base"),))] == pytest.approx(0.05)
    assert got[(f"{tpot}_bucket", (("le", "0.025"), ("model", "base")))] == 0
    assert got[(f"{tpot}_bucket", (("le", "0.05"), ("model", "base")))] == 1
    assert got[("peft_gpt2_prompt_tokens_total", (("model", "base"),))] == 12
    assert got[("peft_gpt2_generation_tokens_total", (("model", "base"),))] == 12


def test_batch_rows_and_adapter_events(recorded):
    got = scrape(recorded)
    rows = "peft_gpt2_decode_batch_rows"
    by_le = [got[(f"{rows}_bucket", (("le", le),))] for le in ("1.0", "2.0", "4.0", "32.0", "64.0", "+Inf")]
    assert by_le == [1, 1, 3, 3, 4, 4]
    assert (got[(f"{rows}_count", ())], got[(f"{rows}_sum", ())]) == (4, 71)
    events = {e: got[("peft_gpt2_adapter_events_total", (("event", e),))] for e in ("load", "unload", "evict")}
    assert events == {"load": 2, "unload": 0, "evict": 1}


def test_gauges_are_read_at_scrape_time(recorded):
    names = ("peft_gpt2_queued_requests", "peft_gpt2_running_rows", "peft_gpt2_loaded_adapters")
    got = scrape(recorded)
    assert [got[(n, ())] for n in names] == [4, 3, 2]
    recorded.state.update(queue=0, rows=9, adapters=5)
    got = scrape(recorded)
    assert [got[(n, ())] for n in names] == [0, 9, 5]


def test_two_instances_share_nothing():
    a = ServerMetrics(lambda: 1, lambda: 0, lambda: 0)
    b = ServerMetrics(lambda: 7, lambda: 0, lambda: 0)
    a.request("models", "", 200, 0.001)
    a.adapter_event("unload")
    got_a, got_b = scrape(a), scrape(b)
    assert got_a[("peft_gpt2_requests_total", (("endpoint", "models"), ("model", ""), ("status", "200")))] == 1
    assert not any(name == "peft_gpt2_requests_total" for name, _ in got_b)
    assert got_b[("peft_gpt2_adapter_events_total", (("event", "unload"),))] == 0
    assert (got_a[("peft_gpt2_queued_requests", ())], got_b[("peft_gpt2_queued_requests", ())]) == (1, 7)


def test_model_label_values_are_capped(monkeypatch):
    monkeypatch.setattr(serving_metrics, "MAX_MODELS", 3)
    m = ServerMetrics(lambda: 0, lambda: 0, lambda: 0)
    for name in ("a", "b", "c", "d", "e", "a"):
        m.first_token(name, 0.01)
        m.finished(name, 1, 1, 0.0)
        m.request("completions", name, 200, 0.01)
    got = scrape(m)
    models = {dict(labels)["model"] for name, labels in got if name == "peft_gpt2_prompt_tokens_total"}
    assert models == {"a", "b", "c", "other"}
    assert got[("peft_gpt2_prompt_tokens_total", (("model", "other"),))] == 2  # "d" and "e"
    assert got[("peft_gpt2_prompt_tokens_total", (("model", "a"),))] == 2  # a name seen before keeps its label
    ttft = "peft_gpt2_time_to_first_token_seconds_count"
    assert {dict(labels)["model"] for name, labels in got if name == ttft} == {"a", "b", "c", "other"}


def test_default_cap_bounds_random_names():
    m = ServerMetrics(lambda: 0, lambda: 0, lambda: 0)
    for i in range(1000):
        m.request("completions", f"random-{i}", 404, 0.001)
    got = scrape(m)
    models = {dict(labels)["model"] for name, labels in got if name == "peft_gpt2_requests_total"}
    assert len(models) == serving_metrics.MAX_MODELS + 1 and "other" in models


def test_unknown_endpoint_or_event_is_a_programming_error():
    m = ServerMetrics(lambda: 0, lambda: 0, lambda: 0)
    with pytest.raises(ValueError, match="endpoint"):
        m.request("v1/completions", "base", 200, 0.1)
    with pytest.raises(ValueError, match="adapter event"):
        m.adapter_event("loaded")


def test_render_content_type_is_prometheus_text():
    body, content_type = ServerMetrics(lambda: 0, lambda: 0, lambda: 0).render()
    assert content_type.startswith("text/plain; version=") and "charset=utf-8" in content_type
    assert b"# TYPE peft_gpt2_queued_requests gauge" in body


def test_no_metrics_takes_every_event_server_metrics_records():
    """The engine and adapter loader get ``NO_METRICS`` where no ``/metrics`` is served: it must take each event."""
    import inspect

    from peft_gpt2.serving.metrics import NO_METRICS, NoMetrics

    events = {n for n, f in vars(ServerMetrics).items() if inspect.isfunction(f) and not n.startswith("_")}
    events -= {"render"}
    for name in events:
        assert inspect.signature(getattr(NoMetrics, name)) == inspect.signature(getattr(ServerMetrics, name)), name
    NO_METRICS.step(3)  # records nothing, raises nothing
