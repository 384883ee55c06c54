"""The OpenAI-compatible server, over real HTTP on 127.0.0.1: right adapter per request under concurrency, errors
in OpenAI's shape, bounded queue."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from conftest import serving, train_toy_adapter
from openai import OpenAI

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.inference.generation import Completion
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.serving import app as server_module
from peft_gpt2.serving.app import create_app

TOKENS = 6
GREEDY = GenerationSettings(max_new_tokens=TOKENS, stop=[])
PROMPTS = [
    "### Instruction:\nDouble it.\n\n### Input:\n7\n\n### Response:\n",
    "### Instruction:\nShout it.\n\n### Input:\ncat3\n\n### Response:\n",
    "Once upon a time",
    "### Instruction:\nDouble it.\n\n### Input:\n12\n\n### Response:\n",
]
MODELS = ["A", "B", "base"]


@pytest.fixture(scope="module")
def adapter_set(tmp_path_factory) -> AdapterSet:
    """The tiny GPT-2 with two LoRA adapters trained 2 steps on different data, so all three answer differently."""
    root = tmp_path_factory.mktemp("served")
    paths = {name: train_toy_adapter(root, name, steps=2, lr=5e-2, records=16) for name in ("A", "B")}
    return AdapterSet.from_paths("tiny-gpt2", paths)


@pytest.fixture(scope="module")
def expected(adapter_set) -> dict[tuple[str, str], Completion]:
    """Each (model, prompt)'s greedy completion, generated directly, one request at a time."""
    return {
        (m, p): adapter_set.generate([p], adapters=[None if m == "base" else m], settings=GREEDY, raw=True)[0]
        for m in MODELS
        for p in PROMPTS
    }


@pytest.fixture(scope="module")
def url(adapter_set) -> Iterator[str]:
    with serving(create_app(adapter_set)) as url:
        yield url


@pytest.fixture()
def http(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


def body(**fields) -> dict:
    return {"model": "A", "prompt": PROMPTS[0], "max_tokens": TOKENS, "temperature": 0, **fields}


def test_openai_client_gets_each_models_own_answer(url, expected, adapter_set):
    prompt_tokens = len(adapter_set.tokenizer(PROMPTS[0])["input_ids"])
    assert len({expected[m, PROMPTS[0]].text for m in MODELS}) == 3  # the adapters matter, so the test can tell
    client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
    for model in MODELS:
        out = client.completions.create(model=model, prompt=PROMPTS[0], max_tokens=TOKENS, temperature=0)
        assert out.object == "text_completion" and out.model == model and out.id.startswith("cmpl-")
        want = expected[model, PROMPTS[0]]
        assert [(c.text, c.finish_reason) for c in out.choices] == [(want.text, want.finish_reason)]
        assert out.choices[0].index == 0
        usage = out.usage
        assert usage.prompt_tokens == prompt_tokens and usage.completion_tokens == want.tokens
        assert usage.total_tokens == prompt_tokens + usage.completion_tokens
    out = client.completions.create(model="B", prompt=PROMPTS[:3], max_tokens=TOKENS, temperature=0, stop=["\n\n"])
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.text for c in out.choices] == [expected["B", p].text.split("\n\n")[0].strip() for p in PROMPTS[:3]]
    models = client.models.list()
    assert [m.id for m in models.data] == ["base", "A", "B"] and {m.owned_by for m in models.data} == {"peft-gpt2"}


@pytest.mark.parametrize("mode", ["batch", "lock"])
def test_200_concurrent_mixed_requests_each_get_their_adapters_answer(adapter_set, expected, mode, monkeypatch):
    sizes: list[int] = []
    generate = adapter_set.generate

    def spy(prompts, **kwargs):
        sizes.append(len(prompts))
        return generate(prompts, **kwargs)

    monkeypatch.setattr(adapter_set, "generate", spy)
    cases = [(MODELS[i % 3], PROMPTS[(i // 3) % len(PROMPTS)]) for i in range(200)]
    with serving(create_app(adapter_set, mode=mode)) as url, httpx.Client(base_url=url, timeout=60) as http:

        def ask(case: tuple[str, str]) -> tuple[int, str]:
            r = http.post("/v1/completions", json=body(model=case[0], prompt=case[1]))
            return r.status_code, r.json()["choices"][0]["text"] if r.status_code == 200 else r.text

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(ask, cases, timeout=120))
    assert [status for status, _ in results] == [200] * len(cases)
    assert [text for _, text in results] == [expected[case].text for case in cases]
    assert sum(sizes) == len(cases) and (max(sizes) > 1 if mode == "batch" else max(sizes) == 1)


def test_models_and_health(http):
    models = http.get("/v1/models").json()
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in models["data"]] == [
        (n, "model", "peft-gpt2") for n in ("base", "A", "B")
    ]
    assert http.get("/health").json() == {"status": "ok", "base": "base", "adapters": ["A", "B"], "mode": "step"}


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("name", ["nope", "../x", "/etc/passwd", "A/../B", "default", "folder of A"])
def test_unknown_model_is_404_listing_the_models_and_a_path_loads_nothing(http, adapter_set, name):
    name = str(adapter_set.info["A"].path) if name == "folder of A" else name  # a real adapter folder, by path
    error = error_of(http.post("/v1/completions", json=body(model=name)), 404)
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert repr(name) in error["message"] and "base, A, B" in error["message"]
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["base", "A", "B"]


def test_bad_requests_are_422_in_openais_shape(http):
    malformed = http.post(
        "/v1/completions", content=b'{"model": "A", "prompt": ', headers={"content-type": "application/json"}
    )
    assert "JSON" in error_of(malformed, 422)["message"]
    assert error_of(http.post("/v1/completions", json=body(max_tokens="ten")), 422)["param"] == "max_tokens"
    missing = {"model": "A", "max_tokens": 3}
    assert error_of(http.post("/v1/completions", json=missing), 422)["param"] == "prompt"
    assert error_of(http.post("/v1/completions", json=body(prompt=[1.5])), 422)["param"].startswith("prompt")
    assert error_of(http.get("/v1/nothing"), 404)["message"] == "Not Found"
    assert error_of(http.get("/v1/completions"), 405)["message"] == "Method Not Allowed"


def test_limits_are_400_naming_them(http):
    error = error_of(http.post("/v1/completions", json=body(prompt="word " * 1100)), 400)
    assert "limit of 1018 prompt tokens" in error["message"] and error["code"] == "context_length_exceeded"
    error = error_of(http.post("/v1/completions", json=body(max_tokens=513)), 400)
    assert error["param"] == "max_tokens" and "between 1 and 512" in error["message"]
    error = error_of(http.post("/v1/completions", json=body(n=2)), 400)
    assert error["param"] == "n" and "one completion per prompt" in error["message"]
    for field, value, param in [
        ("logprobs", 21, "logprobs"),
        ("top_p", 0, "top_p"),  # while sampling
        ("top_p", 1.5, "top_p"),
        ("stop", [""], "stop.0"),
        ("stop", "", "stop.0"),
        ("max_tokens", 0, "max_tokens"),
        ("temperature", 2.5, "temperature"),
        ("temperature", -1, "temperature"),
    ]:
        sent = {"temperature": 1, field: value}
        assert error_of(http.post("/v1/completions", json=body(**sent)), 400)["param"] == param, (field, value)
    assert error_of(http.post("/v1/completions", json=body(prompt="")), 400)["message"] == "empty prompt"
    for prompts in ([PROMPTS[0]] * 17, []):
        assert error_of(http.post("/v1/completions", json=body(prompt=prompts)), 400)["param"] == "prompt"


def test_null_means_the_default_and_greedy_ignores_top_p(http, adapter_set):
    """null means the default (clients may send it); top_p is unused when greedy, so 0 is accepted there."""
    for sent, settings in [
        (body(max_tokens=None, stop=None, n=None, echo=None, top_p=0), GenerationSettings(max_new_tokens=16, stop=[])),
        (body(max_tokens=1, stop="\n\n"), GenerationSettings(max_new_tokens=1, stop=["\n\n"])),
    ]:
        out = http.post("/v1/completions", json=sent)
        assert out.status_code == 200, out.text
        want = adapter_set.generate([PROMPTS[0]], adapters=["A"], settings=settings, raw=True)[0]
        choice, tokens = out.json()["choices"][0], out.json()["usage"]["completion_tokens"]
        assert (choice["text"], choice["finish_reason"], tokens) == (want.text, want.finish_reason, want.tokens)


def test_an_oversized_body_is_413_before_it_is_read(http):
    error = error_of(http.post("/v1/completions", json=body(prompt="x" * 1_100_000)), 413)
    assert "over 1000000 bytes" in error["message"]
    assert http.get("/health").status_code == 200  # the server is unharmed


def test_sampling_with_a_seed_repeats_and_template_renders_the_instruction(http, adapter_set):
    sample = body(temperature=1.5, top_p=0.9, seed=7, max_tokens=8)
    texts = [http.post("/v1/completions", json=sample).json()["choices"][0]["text"] for _ in range(2)]
    assert texts[0] == texts[1]
    out = http.post("/v1/completions", json=body(prompt="Double it.", template=True)).json()
    settings = GenerationSettings(max_new_tokens=TOKENS)
    assert out["choices"][0]["text"] == adapter_set.generate(["Double it."], adapters=["A"], settings=settings)[0].text


@pytest.mark.parametrize("mode", ["batch", "lock"])
def test_a_full_queue_answers_429_with_retry_after(adapter_set, monkeypatch, mode):
    entered, release = threading.Event(), threading.Event()
    generate = adapter_set.generate

    def blocked(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return generate(*args, **kwargs)

    monkeypatch.setattr(adapter_set, "generate", blocked)
    with (
        serving(create_app(adapter_set, max_queue=1, mode=mode)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(http.post, "/v1/completions", json=body())
            assert entered.wait(30)  # the one slot is taken, by a request stuck in generate
            refused = http.post("/v1/completions", json=body())
            error = error_of(refused, 429)
            assert refused.headers["retry-after"] == "1" and error["code"] == "rate_limit_exceeded"
            release.set()
            assert first.result(timeout=30).status_code == 200
        assert http.post("/v1/completions", json=body()).status_code == 200  # the slot was given back


def test_serve_warns_off_loopback(monkeypatch):
    calls = []
    monkeypatch.setattr(AdapterSet, "from_paths", classmethod(lambda cls, base, adapters, **kw: calls.append(kw)))
    monkeypatch.setattr(server_module, "create_app", lambda adapter_set, **kw: calls.append(kw))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    with pytest.warns(UserWarning, match="no authentication"):
        server_module.serve("tiny-gpt2", {}, host="0.0.0.0", port=9, force=True, max_queue=3)
    assert len(calls) == 3  # loaded, built, served: warned, not refused
    assert server_module.is_loopback("127.0.0.1") and server_module.is_loopback("::1")
    assert server_module.is_loopback("localhost") and not server_module.is_loopback("example.com")


def test_a_failing_request_in_a_batch_fails_alone(adapter_set, monkeypatch):
    entered, release, calls = threading.Event(), threading.Event(), []
    generate = adapter_set.generate

    def flaky(prompts, **kwargs):
        calls.append(list(prompts))
        if len(calls) == 1:  # hold the worker until the others are all queued
            entered.set()
            assert release.wait(30)
        if "BOOM" in prompts:
            raise RuntimeError("boom")
        return generate(prompts, **kwargs)

    monkeypatch.setattr(adapter_set, "generate", flaky)
    app = create_app(adapter_set, mode="batch")  # step mode: tests/serving/test_server_openai.py
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http, ThreadPoolExecutor(8) as pool:
        first = pool.submit(http.post, "/v1/completions", json=body())
        assert entered.wait(30)
        prompts = [PROMPTS[1], "BOOM", PROMPTS[2], PROMPTS[3]]
        rest = [pool.submit(http.post, "/v1/completions", json=body(prompt=p)) for p in prompts]
        deadline = time.monotonic() + 30
        while app.state.served.engine.queue.qsize() < len(prompts):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        release.set()
        responses = [f.result(timeout=30) for f in [first, *rest]]
    assert [r.status_code for r in responses] == [200, 200, 500, 200, 200]
    assert "RuntimeError: boom" in error_of(responses[2], 500)["message"]
    assert sorted(calls[1]) == sorted(prompts)  # one batch (in arrival order), which failed; then each alone
    assert sorted(map(tuple, calls[2:])) == sorted((p,) for p in prompts)


def test_a_chunked_body_without_length_is_bounded_too(http):
    """No Content-Length (chunked transfer): refused once the bytes read pass the limit; a small one still works."""

    def chunks(total: int):
        piece = b'{"model": "A", "prompt": "' + b"x" * 10_000
        yield piece
        sent = len(piece)
        while sent < total:
            yield b"x" * 65_536
            sent += 65_536
        yield b'", "max_tokens": 1}'

    error_of(http.post("/v1/completions", content=chunks(5_000_000)), 413)
    small = json.dumps(body()).encode()
    headers = {"Content-Type": "application/json"}
    reply = http.post("/v1/completions", content=iter([small[:10], small[10:]]), headers=headers)
    assert reply.status_code == 200, reply.text


def raw_body(**fields: str) -> bytes:
    """A body from JSON texts per field, sent as-is: NaN, Infinity and lone-surrogate escapes (which ``json=``
    would refuse or re-escape) reach the server."""
    fields = {"model": '"A"', "prompt": json.dumps(PROMPTS[2]), "max_tokens": "2", "temperature": "1", **fields}
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()


def post_raw(http: httpx.Client, content: bytes) -> httpx.Response:
    return http.post("/v1/completions", content=content, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [
        ("seed", str(2**70), 400),  # past torch's 64 bits: was a 500
        ("seed", str(2**64), 400),
        ("seed", "-1", 400),  # torch wraps it to 2**64 - 1: one seed, two names
        ("seed", "1.5", 422),
        ("temperature", "NaN", 400),
        ("temperature", "Infinity", 400),
        ("temperature", "true", 422),  # a boolean is not a number (was read as 1)
        ("top_p", "NaN", 400),
        ("max_tokens", str(2**70), 400),
        ("max_tokens", str(-(2**70)), 400),
        ("max_tokens", "1e300", 422),
        ("max_tokens", "true", 422),
        ("max_tokens", '"3"', 422),
        ("n", "true", 422),
        ("n", str(2**70), 400),
        ("best_of", "-1", 400),
        ("logprobs", str(2**70), 400),
        ("logprobs", "-1", 400),
        ("presence_penalty", "NaN", 400),
        ("template", '"yes"', 422),
        ("stop", json.dumps(list("abcde")), 400),  # at most 4, as OpenAI
        ("stop", json.dumps(["x" * 65]), 400),  # at most 64 characters each
        ("stop", '"\\ud800"', 400),  # a lone surrogate is not text
        ("prompt", '"\\ud800"', 400),  # was a 500 for it and for every request batched with it
        ("prompt", '["fine", "lone \\udfff"]', 400),
        ("model", '"\\udc00"', 400),
        ("suffix", '"\\ud800"', 400),
    ],
)
def test_extreme_values_are_4xx_naming_the_field(http, field, value, status):
    error = error_of(post_raw(http, raw_body(**{field: value})), status)
    assert error["param"] == field or error["param"].startswith(f"{field}."), error
    assert http.post("/v1/completions", json=body()).status_code == 200  # the server is unharmed


def test_a_tiny_temperature_is_greedy(http, expected):
    """Sampling at 1e-230 divided the logits into infinities: NaN probabilities, a 500 (found by the fuzz test).
    Greedy, it takes top_p=0 as greedy does."""
    for temperature, top_p in [(1e-230, 1), (9e-6, 0.5), (9e-6, 0)]:
        reply = http.post("/v1/completions", json=body(temperature=temperature, seed=3, top_p=top_p))
        assert [c["text"] for c in reply.json()["choices"]] == [expected["A", PROMPTS[0]].text], reply.text


def test_the_largest_values_accepted_work(http):
    """The bounds are where the server's limits are: the largest seed and a full stop list are answered."""
    fields = dict(seed=str(2**64 - 1), stop=json.dumps(["x" * 64, "y" * 64, "é" * 64, "😀" * 64]), max_tokens="3")
    reply = post_raw(http, raw_body(**fields))
    assert reply.status_code == 200, reply.text


def test_a_prompt_the_tokenizer_cannot_take_fails_alone(adapter_set, expected):
    """Past validation (a caller of the engine, or text validation misses): its batch-mates get their answers."""
    from peft_gpt2.serving.adapter_ref import AdapterRef
    from peft_gpt2.serving.api_errors import ApiError
    from peft_gpt2.serving.jobs import Job, Request
    from peft_gpt2.serving.whole_runner import WholeRunner

    a = AdapterRef.of(adapter_set, "A")
    jobs = [Job(Request((p,), a, GREEDY, 1000)) for p in (PROMPTS[0], "lone \ud800", PROMPTS[1])]
    WholeRunner(adapter_set).run(jobs)  # what batch and lock modes run a group with
    assert [c.text for c in jobs[0].future.result(0)] == [expected["A", PROMPTS[0]].text]
    assert [c.text for c in jobs[2].future.result(0)] == [expected["A", PROMPTS[1]].text]
    error = jobs[1].future.exception(0)
    assert isinstance(error, ApiError) and (error.status, error.param) == (400, "prompt")


def test_a_panic_in_generate_fails_its_batch_with_500_and_the_worker_lives_on(adapter_set, monkeypatch):
    """A Rust panic (pyo3's PanicException) is no ``Exception``: it ended the worker, and every later request
    waited forever. Any other bug answers 500 in OpenAI's shape too."""

    class Panic(BaseException):
        pass

    generate = adapter_set.generate

    def panicking(prompts, **kwargs):
        if "PANIC" in prompts:
            raise Panic("tokenizer panicked")
        return generate(prompts, **kwargs)

    monkeypatch.setattr(adapter_set, "generate", panicking)
    app = create_app(adapter_set, mode="batch")
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        assert (
            "Panic: tokenizer panicked"
            in error_of(http.post("/v1/completions", json=body(prompt="PANIC")), 500)["message"]
        )
        assert http.post("/v1/completions", json=body()).status_code == 200
        monkeypatch.setattr(app.state.served, "completion_request", lambda body: 1 / 0)  # a bug outside the engine
        error = error_of(http.post("/v1/completions", json=body()), 500)
        assert error["type"] == "server_error" and "ZeroDivisionError" in error["message"]


def test_an_error_quoting_a_lone_surrogate_can_still_be_sent():
    from peft_gpt2.serving.api_errors import ApiError

    message = ApiError(400, "bad 'x\ud800'").body()["error"]["message"]
    assert json.dumps(message, ensure_ascii=False).encode("utf-8") and "x\\ud800" in message
