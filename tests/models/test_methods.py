"""Adapters of PEFT methods other than plain LoRA in one ``AdapterSet``: never silently wrong.

PEFT routes rows of a batch to their own adapters (``adapter_names``) for LoRA only: DoRA refuses it, and IA3,
VeRA and prefix tuning ignore it, running every row through the active adapter. The set must batch those per
adapter; a model holds one PEFT method at a time; and prompt-learning adapters have nothing to merge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_adapter, make_recipe
from peft import get_peft_model

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.adapters.merge import merge_adapter
from peft_gpt2.config.recipe import load_recipe
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.compare import compare
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.models import loading as models
from peft_gpt2.models.methods import adapter_config, drop_routing_hooks
from peft_gpt2.serving.adapter_ref import AdapterRef
from peft_gpt2.serving.jobs import Job, Request
from peft_gpt2.serving.scheduler import make_engine
from peft_gpt2.training.train import train
from peft_gpt2.training.trainer import peft_config

FAST = GenerationSettings(max_new_tokens=5, stop=["###"])
PROMPTS = ["Double it.", "Shout it.", "Name a color.", "Count to three."]




def one_by_one(m: AdapterSet, rows: list[str | None]) -> list:
    return [m.generate([p], adapters=[r], settings=FAST)[0] for p, r in zip(PROMPTS, rows, strict=True)]


@pytest.mark.parametrize("method", ["dora", "ia3", "vera", "prefix"])
def test_rows_of_a_method_peft_cannot_mix_are_batched_per_adapter(tmp_path, tiny, method):
    model, tokenizer = tiny
    m = AdapterSet(model, tokenizer, {n: make_adapter(tmp_path, method, s) for n, s in (("a", 1), ("b", 2))})
    rows = ["a", "b", None, "a"]
    batch = m.tokenizer(["### Instruction:\nDouble it.\n\n### Response:\n"] * 2, return_tensors="pt")
    with torch.inference_mode():  # why: PEFT's own mixed batch refuses or is wrong for this method
        try:
            mixed = m.model(**batch, adapter_names=["a", "b"]).logits
        except ValueError:  # DoRA; and PEFT leaves its routing hooks behind (see the last test)
            mixed = None
            drop_routing_hooks(m.model)
        with m.using("b"):  # "a" is active, so row 0 would be right by chance
            alone = m.model(**batch).logits
    assert mixed is None or not torch.allclose(mixed[1], alone[1], atol=1e-4)
    together = m.generate(PROMPTS, adapters=rows, settings=FAST)
    assert together == one_by_one(m, rows)
    assert len({c.text for c in one_by_one(m, ["a", "b", None, None])[:3]}) == 3  # each adapter matters


def full_forward_greedy(model, tokenizer, prompt: str, steps: int) -> list[int]:
    """Greedy tokens from one whole forward pass per token, no cache: PEFT's ``forward`` prepends a prompt-learning
    adapter's virtual tokens on every call, so this is the answer with the adapter certainly applied."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(steps):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_virtual_tokens_are_never_ignored(tmp_path, tiny, method):
    """A prompt-learning adapter's virtual tokens reach the model in training, ``generate``, mixed batches and the
    step engine: every greedy answer equals the one decoded by whole forward passes, and differs from the base's.

    transformers 5.24 renamed the model's ``past_key_values`` argument to ``cache``; PEFT 0.21's ``generate`` still
    puts the prefix under the old name, which the model then ignores, so prefix tuning became a silent no-op (and
    prompt tuning re-inserted its tokens at every step). ``pyproject.toml`` keeps transformers below 5.24 until PEFT
    follows; this test is what tells us when that changes.
    """
    model, tokenizer = tiny
    m = AdapterSet(model, tokenizer, {"a": make_adapter(tmp_path, method, 1)})
    steps, prompts = 6, PROMPTS[:2]
    settings = GenerationSettings(max_new_tokens=steps, stop=[])
    with m.using("a"):
        want = [full_forward_greedy(m.model, tokenizer, p, steps) for p in prompts]
        with m.model.disable_adapter():
            base = [full_forward_greedy(m.model, tokenizer, p, steps) for p in prompts]
    assert want != base  # the adapter matters, so ignoring it cannot pass

    # training: the loss sees the virtual tokens, and its gradient reaches them
    batch = tokenizer(prompts[0], return_tensors="pt")
    m.model.train()
    with m.using("a"):
        loss = m.model(**batch, labels=batch.input_ids).loss
        with m.model.disable_adapter(), torch.no_grad():
            base_loss = m.model(**batch, labels=batch.input_ids).loss
        loss.backward()
    m.model.eval()
    assert not torch.isclose(loss, base_loss)
    grads = [p.grad for n, p in m.model.named_parameters() if "prompt_encoder" in n and p.grad is not None]
    assert grads and all(g.abs().sum() > 0 for g in grads)
    m.model.zero_grad(set_to_none=True)

    def answers(completions) -> list[str]:
        return [c.text for c in completions]

    decoded, base_decoded = ([tokenizer.decode(ids).strip() for ids in answer] for answer in (want, base))
    assert [len(p) for p in tokenizer(prompts).input_ids] == [3, 4]  # one row is left-padded in a batch
    assert answers(m.generate(prompts, adapters=["a", "a"], settings=settings, raw=True)) == decoded
    mixed = m.generate(prompts + prompts, adapters=["a", None, None, "a"], settings=settings, raw=True)
    assert answers(mixed) == [decoded[0], base_decoded[1], base_decoded[0], decoded[1]]
    engine = make_engine(m, "step", max_batch=4, wait_s=0.01, max_queue=8)
    try:
        jobs = [Job(Request((p,), AdapterRef.of(m, "a"), settings, 1000)) for p in prompts]
        for j in jobs:
            engine.submit(j)
        assert answers(j.future.result(timeout=120)[0] for j in jobs) == decoded
    finally:
        engine.close()


def test_lora_and_dora_share_a_set(tmp_path, tiny):
    model, tokenizer = tiny
    m = AdapterSet(
        model, tokenizer, {"lora": make_adapter(tmp_path, "lora", 1), "dora": make_adapter(tmp_path, "dora", 2)}
    )
    rows = ["lora", "dora", None, "lora"]
    assert m.generate(PROMPTS, adapters=rows, settings=FAST) == one_by_one(m, rows)


def test_a_set_holds_one_peft_method(tmp_path, tiny, monkeypatch):
    model, tokenizer = tiny
    lora, ia3 = make_adapter(tmp_path, "lora", 1), make_adapter(tmp_path, "ia3", 2)
    m = AdapterSet(model, tokenizer, {"lora": lora})
    with pytest.raises(PeftGpt2Error, match="one method per model.*LORA.*IA3"):
        m.add("ia3", ia3)
    assert m.names == ["lora"]
    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("loaded the base before refusing"))
    with pytest.raises(PeftGpt2Error, match="one method per model"):
        AdapterSet.from_paths("tiny-gpt2", {"lora": lora, "ia3": ia3})


def test_a_prompt_learning_adapter_has_nothing_to_merge(tmp_path, monkeypatch):
    prefix = make_adapter(tmp_path, "prefix", 1)
    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("loaded the base before refusing"))
    with pytest.raises(PeftGpt2Error, match="PREFIX_TUNING adapter.*nothing to merge"):
        merge_adapter(prefix, tmp_path / "merged", base="tiny-gpt2")
    assert not (tmp_path / "merged").exists()


def test_a_failed_mixed_batch_leaves_no_routing_behind(tmp_path, tiny):
    """PEFT leaves its routing hooks on the model when a mixed batch raises (huggingface/peft#3475); the set
    removes them, so the next call is answered as if the failure never happened."""
    model, tokenizer = tiny
    m = AdapterSet(model, tokenizer, {n: make_adapter(tmp_path, "lora", s) for n, s in (("a", 1), ("b", 2))})
    rows = ["a", "b", None, "a"]
    expected = one_by_one(m, rows)

    def fail(*args):
        raise RuntimeError("out of memory (simulated)")

    handle = m.model.get_base_model().lm_head.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="simulated"):
        m.generate(PROMPTS, adapters=rows, settings=FAST)
    handle.remove()
    assert one_by_one(m, rows) == expected  # calls without adapter_names: stale hooks would inject the old rows
    assert m.generate(PROMPTS, adapters=rows, settings=FAST) == expected


@pytest.mark.parametrize(
    ("method", "options", "trainable"),
    [
        ("lora", {"r": 4, "use_dora": True}, None),
        ("lora", {"r": 4, "use_rslora": True, "init_lora_weights": "pissa"}, None),
        ("ia3", {}, None),
        ("vera", {"r": 4}, None),
        ("prefix_tuning", {"num_virtual_tokens": 4}, None),
        ("prompt_tuning", {"num_virtual_tokens": 4}, None),
    ],
)
def test_every_method_builds_for_gpt2_conv1d(tiny, method, options, trainable):
    model, _ = tiny
    config = adapter_config(method, options, model)
    if method in ("lora", "ia3", "vera"):
        assert config.fan_in_fan_out is True  # GPT-2's Conv1D stores weights transposed
    peft_model = get_peft_model(model, config)
    ours = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert ours == peft_model.get_nb_trainable_parameters()[0] > 0


def test_ia3_feedforward_modules_follow_the_targets(tiny):
    model, _ = tiny
    assert adapter_config("ia3", {}, model).feedforward_modules == {"mlp.c_proj"}
    assert adapter_config("ia3", {"target_modules": ["c_attn"]}, model).feedforward_modules == set()


@pytest.mark.parametrize("init", ["olora", "eva", "corda", "loftq"])
def test_lora_initialisations_peft_cannot_apply_here_are_refused(tiny, init):
    with pytest.raises(PeftGpt2Error, match=f"lora.init_lora_weights '{init}' is not supported: it"):
        adapter_config("lora", {"init_lora_weights": init}, tiny[0])


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("vera", {"layers_pattern": "h"}, "VeraConfig refused a value: When `layers_pattern`"),
        ("ia3", {"target_modules": ["c_attn"], "feedforward_modules": ["mlp.c_proj"]}, "should be a subset"),
        ("lora", {"use_dora": True, "lora_bias": True}, "not supported for DoRA"),
    ],
)
def test_a_value_peft_refuses_names_the_section(tiny, method, options, message):
    with pytest.raises(PeftGpt2Error, match=f"recipe section {method}: .*{message}"):
        adapter_config(method, options, tiny[0])


def test_compare_scores_adapters_of_different_methods_each_on_its_own_load(tmp_path, monkeypatch):
    """A model holds one PEFT method, so compare loads the base once per method; each row equals its solo run."""
    data = tmp_path / "qa.json"
    data.write_text(json.dumps([{"question": q, "answer": "red"} for q in PROMPTS]))
    paths = [make_adapter(tmp_path, "lora", 1), make_adapter(tmp_path, "ia3", 2), make_adapter(tmp_path, "vera", 3)]
    loads = []
    real = models.load_base
    monkeypatch.setattr(models, "load_base", lambda name, **k: loads.append(name) or real(name, **k))
    kwargs = dict(data=[str(data)], base="tiny-gpt2", settings=FAST)
    together = {row["model"]: row for row in compare(paths, **kwargs)}
    assert loads == ["tiny-gpt2"] * 3 and len(together) == 4  # base + three adapters
    for path in paths[1:]:
        alone = {row["model"]: row for row in compare([path], **kwargs)}
        name = Path(path).name
        assert together[name]["perplexity"] == alone[name]["perplexity"]
        assert together[name]["f1"] == alone[name]["f1"]
    assert len({row["perplexity"] for row in together.values()}) == 4  # every adapter matters


# Each method on the toy addition task (tests/training/test_train.py): the variant's overrides, and the validation loss
# drop it must reach in 30 steps (the tiny model starts at ~11 nats; LoRA reaches ~7.5, the smaller methods less).
VARIANTS = {
    "lora": ([], 3.0),
    "dora": (["lora.use_dora=true"], 3.0),
    "rslora": (["lora.use_rslora=true"], 3.0),
    "lora-pissa": (["lora.init_lora_weights=pissa"], 3.0),
    "lora-plus": (["train.loraplus_lr_ratio=4", "train.learning_rate=3e-3"], 3.0),
    "ia3": (["method=ia3", "train.learning_rate=3e-2"], 1.0),
    "vera": (["method=vera", "train.learning_rate=3e-2"], 1.0),
    "prefix_tuning": (["method=prefix_tuning", "train.learning_rate=3e-2"], 0.5),
    "prompt_tuning": (["method=prompt_tuning", "train.learning_rate=3e-2"], 0.5),
}
LABELS = {"lora-pissa": "lora", "lora-plus": "lora"}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_method_learns_and_its_folder_is_plain_peft(tmp_path, variant):
    """Trains (the loss falls on a task the random base cannot do), counts parameters as PEFT does, loads with plain
    PEFT with the same logits, and merges (where PEFT can) to the same logits within 1e-4."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    overrides, drop = VARIANTS[variant]
    run = train(make_recipe(tmp_path, *overrides))
    p = run.provenance
    assert p.validation_loss_after < p.validation_loss_before - drop, p
    assert p.method == LABELS.get(variant, variant)
    config = json.loads((run.path / "adapter_config.json").read_text())
    fresh = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    counted = get_peft_model(fresh, peft_config(load_recipe(run.path / "recipe.yaml"), fresh))
    assert p.trainable_parameters == counted.get_nb_trainable_parameters()[0] > 0
    if variant == "lora-pissa":  # saved as plain LoRA of twice the rank, against the original base
        assert config["init_lora_weights"] is True and config["r"] == 2 * 16
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    loaded = PeftModel.from_pretrained(base, run.path).eval()
    ids = run.tokenizer(
        ["### Instruction:\nAdd the two numbers.\n\n### Input:\n3 and 4\n\n### Response:\n"] * 2, return_tensors="pt"
    )
    with torch.inference_mode():
        expected, got = run.model.eval()(**ids).logits, loaded(**ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    if loaded.peft_config["default"].is_prompt_learning:
        return  # nothing to merge (see test_a_prompt_learning_adapter_has_nothing_to_merge)
    merged = AutoModelForCausalLM.from_pretrained(merge_adapter(run.path, tmp_path / "merged")).eval()
    with torch.inference_mode():
        torch.testing.assert_close(merged(**ids).logits, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_lora_over_a_4bit_base_trains_here(tmp_path):
    """QLoRA on CPU: bitsandbytes' NF4 layers, the loss falls, and the adapter reloads over a fresh 4-bit base."""
    import bitsandbytes as bnb
    from peft import PeftModel

    run = train(make_recipe(tmp_path, "model.quantization=4bit"))
    p = run.provenance
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in run.model.modules())
    assert p.method == "lora-4bit" and p.validation_loss_after < p.validation_loss_before - 3.0, p
    base, tokenizer = models.load_base("tiny-gpt2", quantization="4bit", compute_dtype=None)
    models.keep_training_layout(base)  # as the run did: bitsandbytes' CPU inference kernel differs slightly
    loaded = PeftModel.from_pretrained(base, run.path).eval()
    for name, param in loaded.named_parameters():  # TRL trains adapters over a quantized base in bf16 (as QLoRA
        if "lora_" in name:  # does); PEFT loads them as float32: compare like with like
            param.data = param.data.to(torch.bfloat16)
    ids = tokenizer(["### Instruction:\nAdd the two numbers.\n\n### Response:\n"], return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(loaded(**ids).logits, run.model.eval()(**ids).logits, rtol=0, atol=1e-5)


def test_an_adapter_that_would_rewrite_the_base_is_refused(tmp_path, tiny):
    """PEFT loads a PiSSA adapter saved without conversion by rewriting the base weights (the residual): every
    other adapter would then run on a different base. Refused, naming the fix; the base stays bitwise the same."""
    model, tokenizer = tiny
    m = AdapterSet(model, tokenizer, {"lora": make_adapter(tmp_path, "lora", 1)})
    before = {k: v.clone() for k, v in m.model.get_base_model().state_dict().items() if "lora_" not in k}
    with pytest.raises(PeftGpt2Error, match="saved straight from a 'pissa' initialisation.*plain LoRA"):
        m.add("pissa", make_adapter(tmp_path, "pissa", 2))
    after = {k: v for k, v in m.model.get_base_model().state_dict().items() if "lora_" not in k}
    assert m.names == ["lora"] and all(torch.equal(before[k], after[k]) for k in before)


def wrapped(model, config) -> set[str]:
    """The full names of the layers PEFT wraps for ``config``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    peft_model = get_peft_model(model, config)
    return {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, BaseTunerLayer)}


def test_all_linear_on_gpt2_is_its_three_conv1d_layers_not_the_head(tiny_path):
    """The recipes' ``all-linear`` adapts exactly what ``[c_attn, c_proj, c_fc]`` did on GPT-2 (Conv1D included,
    the tied LM head excluded), so runs of the old spelling reproduce."""
    model = models.load_base(tiny_path)[0]
    named = wrapped(model, adapter_config("lora", {"target_modules": ["c_attn", "c_proj", "c_fc"]}, model))
    model = models.load_base(tiny_path)[0]
    config = adapter_config("lora", {"target_modules": "all-linear"}, model)
    assert config.fan_in_fan_out is True
    assert wrapped(model, config) == named and len(named) == 8 and not any("lm_head" in n for n in named)


def test_all_linear_on_llama_is_every_projection_not_the_head():
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100)
    model = LlamaForCausalLM(LlamaConfig(**shape, num_key_value_heads=2))
    config = adapter_config("lora", {"target_modules": "all-linear"}, model)
    leaves = {n.split(".")[-1] for n in wrapped(model, config)}
    assert config.fan_in_fan_out is False
    assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
