"""The server as OpenAI's client and vLLM's adapter endpoints see it: chat, streaming, log-probabilities, adapters
loaded and unloaded at run time, metrics, and a client that goes away mid-stream."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from conftest import serving, train_toy_adapter
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.adapters.chat_prompts import chat_prompt
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.serving.app import create_app

PROMPT = "### Instruction:\nDouble it.\n\n### Input:\n7\n\n### Response:\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """An adapter folder "A" and copies of it in ``allowed/`` to load at run time (same weights: same answers)."""
    root = tmp_path_factory.mktemp("runtime")
    a = train_toy_adapter(root, "A", steps=2, lr=5e-2, records=16)
    for name in ("A2", "X", "Y"):
        shutil.copytree(a, root / "allowed" / name)
    return root, a


@pytest.fixture(scope="module")
def adapter_set(root) -> AdapterSet:
    return AdapterSet.from_paths("tiny-gpt2", {"A": root[1]})


@pytest.fixture(scope="module")
def url(adapter_set, root):
    app = create_app(adapter_set, adapter_dirs=[root[0] / "allowed"], max_loras=2, max_batch=4)
    with serving(app) as url:
        yield url, app


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def alone(adapter_set, prompt, adapter, tokens, stop=(), stop_token_ids=()):
    settings = GenerationSettings(max_new_tokens=tokens, stop=list(stop), stop_token_ids=list(stop_token_ids))
    return adapter_set.generate([prompt], adapters=[adapter], settings=settings, raw=True)[0]


def test_chat_single_and_multi_turn_is_the_adapters_own_format(url, adapter_set):
    client = OpenAI(base_url=url[0] + "/v1", api_key="none")
    one = [{"role": "user", "content": "Double it: 7"}]
    many = [
        {"role": "system", "content": "You double numbers."},
        {"role": "user", "content": "Double it: 3"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "Double it: 7"},
    ]
    for model, adapter in (("A", "A"), ("base", None)):
        for messages in (one, many):
            out = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
            rendered = chat_prompt(adapter_set, adapter, messages)
            want = alone(adapter_set, rendered.text, adapter, 8, rendered.stop, rendered.stop_token_ids)
            assert out.choices[0].message.content == want.text and out.choices[0].message.role == "assistant"
            assert out.choices[0].finish_reason == want.finish_reason and out.usage.completion_tokens == want.tokens
    assert adapter_set.template_for("A").prompt("Double it: 7") == chat_prompt(adapter_set, "A", one).text
    bad = httpx.post(url[0] + "/v1/chat/completions", json={"model": "A", "messages": [{"role": "robot"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


def test_streamed_text_equals_the_answer_for_both_endpoints(url):
    client = OpenAI(base_url=url[0] + "/v1", api_key="none")
    for prompt, tokens in ((PROMPT, 12), ("Once upon a time", 30), (" The", 5)):
        whole = client.completions.create(model="A", prompt=prompt, max_tokens=tokens, temperature=0)
        chunks = list(
            client.completions.create(
                model="A", prompt=prompt, max_tokens=tokens, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    messages = [{"role": "user", "content": "Say something long."}]
    whole = client.chat.completions.create(model="A", messages=messages, max_tokens=20, temperature=0)
    asked = dict(model="A", messages=messages, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(**asked, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    with httpx.stream("POST", url[0] + "/v1/completions", json={"model": "A", "prompt": "Hi", "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert [line for line in r.iter_lines() if line][-1] == "data: [DONE]"


def test_logprobs_are_the_models_log_softmax(url, adapter_set):
    ids = adapter_set.tokenizer(PROMPT)["input_ids"]
    body = {"model": "A", "prompt": ids, "max_tokens": 3, "temperature": 0, "logprobs": 2, "echo": True}
    out = httpx.post(url[0] + "/v1/completions", json=body, timeout=30).json()["choices"][0]
    lp = out["logprobs"]
    assert out["text"].startswith(PROMPT) and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert len(lp["tokens"]) == len(ids) + 3 and lp["text_offset"][1] == len(lp["tokens"][0])
    full = list(ids)
    with adapter_set.using("A"), torch.inference_mode():
        for _ in range(3):  # greedy: each generated token is the argmax after the ones before it
            want = adapter_set.model(torch.tensor([full])).logits[0].float().log_softmax(-1)
            full.append(int(want[-1].argmax()))
        want = adapter_set.model(torch.tensor([full])).logits[0].float().log_softmax(-1)
    for k in range(1, len(full)):
        assert lp["token_logprobs"][k] == pytest.approx(float(want[k - 1, full[k]]), abs=1e-4)
        assert max(lp["top_logprobs"][k].values()) == pytest.approx(float(want[k - 1].max()), abs=1e-4)
    scored = httpx.post(url[0] + "/v1/completions", json={**body, "max_tokens": 0}, timeout=30).json()["choices"][0]
    assert scored["logprobs"]["token_logprobs"] == pytest.approx(lp["token_logprobs"][: len(ids)], abs=1e-5)
    assert scored["text"] == PROMPT
    refused = httpx.post(url[0] + "/v1/completions", json={**body, "prompt": [10**7]})
    assert refused.status_code == 400 and "vocabulary" in refused.json()["error"]["message"]


def test_load_use_unload_and_confinement(url, root, adapter_set):
    base, app = url
    allowed = root[0] / "allowed"
    with httpx.Client(base_url=base, timeout=60) as http:
        for path in (root[1], allowed / ".." / "A", "/etc"):  # outside, by any spelling
            refused = http.post("/v1/load_lora_adapter", json={"lora_name": "Z", "lora_path": str(path)})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "path_not_allowed"
        (allowed / "link").symlink_to(root[1])
        linked = http.post("/v1/load_lora_adapter", json={"lora_name": "Z", "lora_path": str(allowed / "link")})
        assert linked.json()["error"]["code"] == "path_not_allowed"  # a symlink inside pointing outside
        assert http.post("/v1/load_lora_adapter", json={"lora_name": "A2", "lora_path": str(allowed / "A2")}).is_success
        request = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0}
        a = http.post("/v1/completions", json={"model": "A", **request}).json()["choices"][0]["text"]
        assert http.post("/v1/completions", json={"model": "A2", **request}).json()["choices"][0]["text"] == a
        assert http.post("/v1/unload_lora_adapter", json={"lora_name": "A2"}).is_success
        assert "A2" not in [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert http.post("/v1/completions", json={"model": "A2", **request}).status_code == 404
        for name in ("X", "Y", "A2"):  # max_loras=2: loading a third unloads the least recently used, X
            load = {"lora_name": name, "lora_path": str(allowed / name)}
            assert http.post("/v1/load_lora_adapter", json=load).is_success
        served = [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert "X" not in served and {"Y", "A2", "A"} <= set(served)
        metrics = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
        samples = metrics["peft_gpt2_adapter_events"].samples
        events = {s.labels["event"]: s.value for s in samples if s.name.endswith("_total")}
        assert events == {"load": 4, "unload": 1, "evict": 1}
    deadline = time.monotonic() + 10
    while "X" in adapter_set.names and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "X" not in adapter_set.names  # its weights are gone too


def test_unload_while_requests_are_queued_never_answers_with_another_adapter(root, adapter_set):
    """max_batch=1: one long request for A2 runs while more for A2 and A wait; unloading A2 lets the running one
    finish, refuses the queued ones with 404, and A's requests get A's answer."""
    allowed = root[0] / "allowed"
    if "A2" in adapter_set.names:  # loaded by the test before, through the other app
        adapter_set.unload("A2")
    app = create_app(adapter_set, adapter_dirs=[allowed], max_batch=1)
    request = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as http, ThreadPoolExecutor(8) as pool:
        assert http.post("/v1/load_lora_adapter", json={"lora_name": "A2", "lora_path": str(allowed / "A2")}).is_success
        want = http.post("/v1/completions", json={"model": "A", **request}).json()["choices"][0]["text"]
        engine = app.state.served.engine
        long = pool.submit(http.post, "/v1/completions", json={"model": "A2", **request, "max_tokens": 300})
        wait_for(lambda: engine.running)
        queued = [pool.submit(http.post, "/v1/completions", json={"model": m, **request}) for m in ("A2", "A") * 3]
        wait_for(lambda: engine.queued == len(queued))
        assert http.post("/v1/unload_lora_adapter", json={"lora_name": "A2"}).is_success
        assert long.result().status_code == 200 and long.result().json()["usage"]["completion_tokens"] == 300
        for k, future in enumerate(queued):
            response = future.result()
            if k % 2:
                assert response.status_code == 200 and response.json()["choices"][0]["text"] == want
            else:
                assert response.status_code == 404 and "unloaded" in response.json()["error"]["message"]
    assert "A2" not in adapter_set.names


def test_a_client_leaving_mid_stream_frees_its_slot(url):
    base, app = url
    engine = app.state.served.engine
    body = {"model": "A", "prompt": "The", "max_tokens": 500, "temperature": 0, "stream": True}
    start = time.monotonic()
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as response:
        next(line for line in response.iter_lines() if line.startswith("data: "))
    deadline = time.monotonic() + 20
    while (engine.running or engine.slots._value < engine.max_queue) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.running == 0 and engine.slots._value == engine.max_queue
    leaving = time.monotonic() - start
    whole = httpx.post(base + "/v1/completions", json={**body, "stream": False}, timeout=120)
    assert whole.json()["usage"]["completion_tokens"] == 500
    assert leaving < time.monotonic() - start - leaving  # gone well before 500 tokens would have taken


def test_metrics_parse_with_prometheus_own_parser(url):
    base, _ = url
    with httpx.Client(base_url=base, timeout=60) as http:
        http.post("/v1/completions", json={"model": "A", "prompt": PROMPT, "max_tokens": 3})
        http.post("/v1/completions", json={"model": "nope", "prompt": PROMPT})
        text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["endpoint"], s.labels["model"], s.labels["status"]): s.value
        for s in families["peft_gpt2_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("completions", "A", "200")] >= 1 and requests[("completions", "unknown", "404")] >= 1
    for name in ("peft_gpt2_time_to_first_token_seconds", "peft_gpt2_request_duration_seconds"):
        counts = [s.value for s in families[name].samples if s.name.endswith("_count")]
        assert sum(counts) >= 1
    rows = [s.value for s in families["peft_gpt2_decode_batch_rows"].samples if s.name.endswith("_count")]
    assert rows and rows[0] >= 2  # one step per generated token after the first
    assert {"peft_gpt2_queued_requests", "peft_gpt2_running_rows", "peft_gpt2_loaded_adapters"} <= set(families)


def test_runtime_loading_is_off_unless_folders_are_named(adapter_set):
    with serving(create_app(adapter_set)) as base:
        for path in ("load", "unload"):
            response = httpx.post(f"{base}/v1/{path}_lora_adapter", json={"lora_name": "A2", "lora_path": "/tmp"})
            assert response.status_code == 404 and "--adapter-dir" in response.json()["error"]["message"]
