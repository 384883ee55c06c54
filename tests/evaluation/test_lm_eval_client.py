"""A real third-party client against our server: EleutherAI's lm-evaluation-harness, ``local-completions``.

lm_eval scores ``recipes/lm_eval/peft_gpt2_choices.yaml`` (the shipped ``data/sample_choices.jsonl``, offline) through
``/v1/completions`` with token-id prompts, ``echo``, ``logprobs`` and ``max_tokens=1``, once for the bare base and
once for an adapter; its acc, acc_norm and every choice's log-likelihood must equal what ``peft-gpt2 eval`` computes
in-process (`peft_gpt2.evaluation.multiple_choice`) for the same model. lm_eval is in the ``test`` extra: no skip.
"""

from __future__ import annotations

import pytest
from conftest import REPO, serving, train_toy_adapter

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.evaluation.evaluate import evaluate_model, load_eval_records
from peft_gpt2.models.loading import load_base
from peft_gpt2.serving.app import create_app

TASK = "peft_gpt2_choices"
LIMIT = 8  # items (about 32 choices): enough for ties and merges at the join, fast on 2 cores


def lm_eval_scores(url: str, model: str, tokenizer: str) -> tuple[dict, list[dict]]:
    """lm_eval's ``local-completions`` on the shipped task against `url`: ``(results, samples)`` for `TASK`."""
    import lm_eval  # the harness is in the test extra: missing, this fails
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": model,
            "base_url": f"{url}/v1/completions",
            "tokenizer": tokenizer,  # a local folder: no hub
            "tokenizer_backend": "huggingface",
            "batch_size": 4,  # prompts per request
            "max_retries": 1,  # a server error is a failure here, not something to retry
        },
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(REPO / "recipes" / "lm_eval"), include_defaults=False),
        limit=LIMIT,
        bootstrap_iters=0,
        log_samples=True,
    )
    return out["results"][TASK], sorted(out["samples"][TASK], key=lambda s: s["doc_id"])


def test_lm_eval_scores_base_and_adapter_as_eval_does(tmp_path, tiny_path):
    adapter = train_toy_adapter(tmp_path, "A", steps=3, lr=5e-2)
    model, tokenizer = load_base(tiny_path)
    adapter_set = AdapterSet(model, tokenizer, {"toy": str(adapter)})
    records = load_eval_records(str(REPO / "data" / "sample_choices.jsonl"))[0][:LIMIT]
    expected = {}
    for name in ("base", "toy"):
        with adapter_set.using(None if name == "base" else name):
            expected[name] = evaluate_model(adapter_set.model, tokenizer, records, batch_size=4)
    flat = {name: sum((a["loglikelihoods"] for a in r.answers), []) for name, r in expected.items()}
    assert flat["base"] != pytest.approx(flat["toy"], abs=1e-3)  # the adapter changes the scores it is tested on

    with serving(create_app(adapter_set)) as url:
        for name in ("base", "toy"):
            results, samples = lm_eval_scores(url, name, tiny_path)
            ours = expected[name]
            assert [s["doc_id"] for s in samples] == list(range(LIMIT))
            theirs = [[float(resp[0]) for resp in s["filtered_resps"]] for s in samples]
            assert sum(theirs, []) == pytest.approx(flat[name], abs=1e-4), name  # every choice's log-likelihood
            assert [s["acc"] for s in samples] == ours.items["acc"], name
            assert [s["acc_norm"] for s in samples] == ours.items["acc_norm"], name
            assert results["acc,none"] == pytest.approx(ours.metrics["acc"], abs=1e-12), name
            assert results["acc_norm,none"] == pytest.approx(ours.metrics["acc_norm"], abs=1e-12), name
