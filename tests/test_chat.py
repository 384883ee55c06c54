"""The chat loop: instructions answered by the active adapter, commands to switch, clean exits."""

from __future__ import annotations

import pytest
import torch

from peft_gpt2 import chat
from peft_gpt2.adapter_set import AdapterSet
from peft_gpt2.chat import chat_main, run_chat
from peft_gpt2.generation import Completion, GenerationSettings
from peft_gpt2.models import config_fingerprint
from peft_gpt2.run_folder import Provenance

FAST = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_path):
    """Two LoRA adapters with random non-zero weights (no training needed here), with real provenance."""
    from peft import LoraConfig, get_peft_model

    from peft_gpt2.models import load_base

    root = tmp_path_factory.mktemp("chat")
    out = {}
    for seed, name in enumerate(("alpha", "beta")):
        model, _ = load_base(tiny_path)
        config = LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(root / name)
        fingerprint = config_fingerprint(model.config)
        Provenance(name, "lora", tiny_path, base_config_fingerprint=fingerprint, template="short").write(root / name)
        out[name] = root / name
    return out


@pytest.fixture()
def m(folders, tiny):
    model, tokenizer = tiny
    return AdapterSet(model, tokenizer, dict(folders))


def script(*lines):
    """An ``input_fn`` that returns ``lines`` in order, then raises EOFError (Ctrl-D); it records the prompts."""
    pending = list(lines)
    prompts = []

    def input_fn(prompt):
        prompts.append(prompt)
        if not pending:
            raise EOFError
        return pending.pop(0)

    input_fn.prompts = prompts
    return input_fn


def run(m, *lines):
    """Chat through ``lines``; returns (printed messages, answers given, prompts shown)."""
    out = []
    input_fn = script(*lines)
    count = run_chat(m, settings=FAST, input_fn=input_fn, print_fn=lambda *a: out.append(" ".join(map(str, a))))
    return out, count, input_fn.prompts


def fake_generate(monkeypatch, m):
    """Answers name the adapter that would answer."""
    answer = lambda prompts, **kw: [Completion(f"{m.active or 'base'}: {prompts[0]}", 3, "stop")]  # noqa: E731
    monkeypatch.setattr(m, "generate", answer)


def test_switching_changes_who_answers(m, monkeypatch):
    fake_generate(monkeypatch, m)
    out, count, prompts = run(m, "hello", "/adapter beta", "hello", "/base", "hello", "/adapter alpha", "hello")
    answers = [line for line in out if line.endswith(": hello")]
    assert answers == ["alpha: hello", "beta: hello", "base: hello", "alpha: hello"]
    assert count == 4
    assert prompts[:3] == ["[alpha]> ", "[alpha]> ", "[beta]> "]  # the prompt shows who answers


def test_real_answers_differ_by_adapter(m):
    out, count, _ = run(m, "Say hi.", "/adapter beta", "Say hi.", "/base", "Say hi.")
    answers = [out[1], out[3], out[5]]  # HELP, answer, switch message, answer, switch message, answer
    assert count == 3 and all(isinstance(a, str) and a for a in answers) and len(set(answers)) == 3
    assert answers == [
        m.generate(["Say hi."], adapters=[name], settings=FAST)[0].text or "(empty answer)"
        for name in ("alpha", "beta", None)
    ]


def test_listing_unknown_adapter_and_help(m, monkeypatch):
    fake_generate(monkeypatch, m)
    out, count, _ = run(m, "/adapters", "/adapter nope", "/adapter", "/frobnicate", "/help", "", "hi")
    assert "* alpha\n  beta\n  (base)" in out
    assert any("no adapter named 'nope'; loaded: alpha, beta" in line for line in out)
    assert any(line.startswith("usage: /adapter NAME") for line in out)
    assert any("unknown command /frobnicate" in line for line in out)
    assert sum(line.startswith("Type an instruction") for line in out) == 2  # at start and on /help
    assert m.active == "alpha" and count == 1 and out[-2] == "alpha: hi"  # the loop went on after each


def test_quit_ends_and_eof_ends(m, monkeypatch):
    fake_generate(monkeypatch, m)
    out, count, prompts = run(m, "one", "/quit", "never read")
    assert count == 1 and len(prompts) == 2 and not any("never read" in line for line in out)
    out, count, prompts = run(m, "one")
    assert count == 1 and len(prompts) == 2  # EOF after the last line ends the loop


def test_base_only_set_chats(tiny, monkeypatch):
    model, tokenizer = tiny
    m = AdapterSet(model, tokenizer)
    fake_generate(monkeypatch, m)
    out, count, prompts = run(m, "/adapters", "/adapter x", "hi")
    assert "* (base)" in out and prompts[0] == "[base]> " and out[-2] == "base: hi"
    assert any("loaded: none" in line for line in out)


def test_chat_main_loads_the_recorded_base_and_all_adapters(folders, monkeypatch):
    seen = {}
    monkeypatch.setattr(chat, "run_chat", lambda adapter_set, settings: seen.update(m=adapter_set, s=settings))
    assert chat_main(None, dict(folders), FAST, "alpaca") == 0
    assert seen["m"].names == ["alpha", "beta"] and seen["m"].active == "alpha"
    assert seen["m"].template == "alpaca" and seen["s"] is FAST
