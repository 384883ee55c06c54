"""The step-wise engine: rows that join and leave a running batch answer exactly what they would alone; echo
log-probabilities are the model's own; streamed text adds up to the answer; an abandoned row frees its slot."""

from __future__ import annotations

import random
import time
from dataclasses import replace

import pytest
import torch
from conftest import train_toy_adapter

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.serving.adapter_ref import AdapterRef
from peft_gpt2.serving.api_errors import ApiError
from peft_gpt2.serving.jobs import Job, Request
from peft_gpt2.serving.scheduler import make_engine

PROMPTS = [
    "### Instruction:\nDouble it.\n\n### Input:\n7\n\n### Response:\n",
    "### Instruction:\nShout it.\n\n### Input:\ncat3\n\n### Response:\n",
    "Once upon a time",
    "The",
]


@pytest.fixture(scope="module")
def adapter_set(tmp_path_factory) -> AdapterSet:
    root = tmp_path_factory.mktemp("stepped")
    paths = {name: train_toy_adapter(root, name, steps=2, lr=5e-2, records=16) for name in ("A", "B")}
    return AdapterSet.from_paths("tiny-gpt2", paths)


def job(adapter_set, prompts, adapter, settings, on_text=None, **asked) -> Job:
    """A job for ``adapter`` (a name, resolved here as the server's routes resolve it)."""
    prompts = tuple(p if isinstance(p, str) else tuple(p) for p in prompts)
    return Job(Request(prompts, AdapterRef.of(adapter_set, adapter), settings, 1000, **asked), on_text=on_text)


def test_rows_joining_and_leaving_answer_as_they_would_alone(adapter_set):
    """48 jobs of mixed adapters, prompt lengths and max_tokens arrive while others run: every answer equals the
    same prompt generated alone by ``AdapterSet.generate`` (greedy)."""
    rng = random.Random(0)
    cases = [(rng.choice(["A", "B", None]), rng.choice(PROMPTS), rng.choice([1, 3, 9, 17])) for _ in range(48)]
    engine = make_engine(adapter_set, "step", max_batch=6, wait_s=0.001, max_queue=64)
    try:
        jobs = []
        for k, (adapter, prompt, tokens) in enumerate(cases):
            settings = GenerationSettings(max_new_tokens=tokens, stop=["###"] if k % 3 else [])
            jobs.append(job(adapter_set, [prompt], adapter, settings))
            engine.submit(jobs[-1])
            if k % 5 == 0:
                time.sleep(0.01)  # let a few steps run, so later jobs join a running batch
        got = [j.future.result(timeout=120)[0] for j in jobs]
    finally:
        engine.close()
    for (adapter, prompt, _), j, answer in zip(cases, jobs, got, strict=True):
        alone = adapter_set.generate([prompt], adapters=[adapter], settings=j.request.settings, raw=True)[0]
        assert (answer.text, answer.tokens, answer.finish_reason) == (alone.text, alone.tokens, alone.finish_reason)


def test_echo_logprobs_are_the_models_own_log_softmax(adapter_set):
    ids = adapter_set.tokenizer(PROMPTS[0])["input_ids"]
    engine = make_engine(adapter_set, "step", max_batch=4, wait_s=0.001, max_queue=8)
    try:
        scored = job(adapter_set, [ids], "A", GenerationSettings(max_new_tokens=2, stop=[]), echo=True, logprobs=3)
        engine.submit(scored)
        answer = scored.future.result(timeout=60)[0]
    finally:
        engine.close()
    with adapter_set.using("A"), torch.inference_mode():
        full = ids + [t for t, _, _ in answer.logprobs[len(ids) :]]
        lp = adapter_set.model(torch.tensor([full])).logits[0].float().log_softmax(-1)
    assert [t for t, _, _ in answer.logprobs] == full and answer.logprobs[0][1] is None
    for position, (token, logprob, top) in enumerate(answer.logprobs[1:], start=1):
        assert logprob == pytest.approx(float(lp[position - 1, token]), abs=1e-4)
        best = lp[position - 1].topk(3)
        assert [t for t, _ in top] == best.indices.tolist()
        assert [v for _, v in top] == pytest.approx(best.values.tolist(), abs=1e-4)


def test_streamed_text_adds_up_to_the_answer_and_a_cancelled_row_leaves(adapter_set):
    engine = make_engine(adapter_set, "step", max_batch=4, wait_s=0.001, max_queue=8)
    try:
        pieces: list[str] = []
        settings = GenerationSettings(max_new_tokens=24, stop=["###", "e"])
        streamed = job(adapter_set, [PROMPTS[2]], "B", settings, on_text=lambda i, text: pieces.append(text))
        engine.submit(streamed)
        answer = streamed.future.result(timeout=60)[0]
        assert answer.text.startswith("".join(pieces))
        endless = replace(settings, max_new_tokens=500, stop=[])
        long = job(adapter_set, [PROMPTS[3]], None, endless, on_text=lambda i, t: None)
        engine.submit(long)
        while long.first_token_at is None:
            time.sleep(0.005)
        long.cancelled.set()
        assert long.future.result(timeout=30)[0].tokens < 100  # it left the batch at the next step
        assert engine.slots._value == engine.max_queue  # its slot is free again
    finally:
        engine.close()


def test_retired_adapter_queued_requests_get_404(adapter_set):
    engine = make_engine(adapter_set, "step", max_batch=1, wait_s=0.001, max_queue=8)
    try:
        first = job(adapter_set, [PROMPTS[3]], "B", GenerationSettings(max_new_tokens=40, stop=[]))
        queued = job(adapter_set, [PROMPTS[0]], "B", GenerationSettings(max_new_tokens=4, stop=[]))
        engine.submit(first)
        while first.first_token_at is None:
            time.sleep(0.002)
        engine.submit(queued)  # waits: max_batch=1
        path = adapter_set.info["B"].path
        engine.retire("B")
        assert first.future.result(timeout=60)[0].tokens == 40  # running: it finishes
        with pytest.raises(ApiError) as err:  # queued: refused, never answered by another adapter
            queued.future.result(timeout=60)
        assert err.value.status == 404
        deadline = time.monotonic() + 10
        while "B" in adapter_set.names and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "B" not in adapter_set.names  # freed once its last row ended
    finally:
        engine.close()
        if "B" not in adapter_set.names:
            adapter_set.add("B", path)


@pytest.mark.parametrize("method", ["ia3", "dora", "prefix"])
def test_methods_peft_cannot_route_per_row_step_in_their_own_batches(tmp_path, tiny, method):
    """IA3 and DoRA rows step in batches of one adapter; prefix tuning is generated whole: each answer is still
    the one generated alone."""
    from conftest import make_adapter

    model, tokenizer = tiny
    m = AdapterSet(model, tokenizer, {n: make_adapter(tmp_path, method, s) for n, s in (("a", 1), ("b", 2))})
    engine = make_engine(m, "step", max_batch=4, wait_s=0.01, max_queue=16)
    settings = GenerationSettings(max_new_tokens=6, stop=[])
    cases = [(a, p) for a in ("a", "b", None) for p in PROMPTS[:2]]
    try:
        jobs = [job(m, [p], a, settings) for a, p in cases]
        for j in jobs:
            engine.submit(j)
        got = [j.future.result(timeout=120)[0] for j in jobs]
    finally:
        engine.close()
    want = [m.generate([p], adapters=[a], settings=settings, raw=True)[0] for a, p in cases]
    assert [c.text for c in got] == [c.text for c in want]
    assert len({c.text for c in want[::2]}) == 3  # each adapter changes the answer


@pytest.mark.parametrize(
    "settings",
    [
        GenerationSettings(stop=[]),
        GenerationSettings(do_sample=True, temperature=1.5, top_k=0, top_p=0.9, stop=[]),
        GenerationSettings(do_sample=True, temperature=0.7, top_k=5, top_p=0.5, stop=[]),
        GenerationSettings(repetition_penalty=1.3, no_repeat_ngram_size=2, stop=[]),
    ],
)
def test_step_rows_score_with_the_processors_generate_uses(adapter_set, settings):
    """Step mode's logits processors are the ones ``generate`` builds for the same settings (batch mode): same
    classes, in the same order, with the same parameters, turning the same logits into the same scores."""
    from peft_gpt2.serving.sampling import logits_processors

    eos, pad = [50256], 50256
    ours = logits_processors(settings, eos, pad)
    theirs = adapter_set.model._get_logits_processor(settings.generation_config(eos, pad), input_ids_seq_length=4)

    def described(processors):
        return [(type(p), {k: v for k, v in vars(p).items() if not torch.is_tensor(v)}) for p in processors]

    assert described(ours) == described(theirs)
    ids, logits = torch.tensor([[11, 12, 11, 13]]), torch.randn(1, 50257, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours(ids, logits.clone()), theirs(ids, logits.clone()))


def test_a_seeded_sample_does_not_depend_on_its_batch_mates(adapter_set):
    seeded = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.5, top_k=0, seed=7, stop=[])
    engine = make_engine(adapter_set, "step", max_batch=8, wait_s=0.05, max_queue=16)
    try:
        alone = job(adapter_set, [PROMPTS[2]], "A", seeded)
        engine.submit(alone)
        want = alone.future.result(timeout=60)[0]
        mates = [job(adapter_set, [p], a, replace(seeded, seed=None)) for a, p in (("B", PROMPTS[0]), (None, "The"))]
        again = job(adapter_set, [PROMPTS[2]], "A", seeded)
        for j in [mates[0], again, mates[1]]:
            engine.submit(j)
        got = again.future.result(timeout=60)[0]
        [m.future.result(timeout=60) for m in mates]
    finally:
        engine.close()
    assert (got.text, got.tokens) == (want.text, want.tokens)
