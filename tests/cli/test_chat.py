"""The chat loop: messages answered by the active adapter with the conversation so far, commands to switch, reset
and set a system message, clean exits."""

from __future__ import annotations

import pytest
import torch

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.cli import chat
from peft_gpt2.cli.chat import chat_main, run_chat
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.inference.generation import Completion
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.models.loading import config_fingerprint
from peft_gpt2.run_folder import Provenance

FAST = GenerationSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_path):
    """Two LoRA adapters with random non-zero weights (no training needed here), with real provenance."""
    from peft import LoraConfig, get_peft_model

    from peft_gpt2.models.loading import load_base

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


def fake_generate(monkeypatch, m, answers=None):
    """Answers name the adapter that would answer and the message (the prompt's last instruction); returns the
    calls seen, ``(prompt, settings, raw)`` each. ``answers``, if given, are answered in turn instead."""
    calls = []
    pending = list(answers or [])

    def answer(prompts, settings=None, raw=False):
        calls.append((prompts[0], settings, raw))
        said = prompts[0].rsplit("### Instruction:\n", 1)[-1].split("\n")[0]
        text = pending.pop(0) if pending else f"{m.active or 'base'}: {said}"
        if isinstance(text, BaseException):
            raise text
        return [Completion(text, 3, "stop")]

    monkeypatch.setattr(m, "generate", answer)
    return calls


def test_switching_changes_who_answers(m, monkeypatch):
    fake_generate(monkeypatch, m)
    out, count, prompts = run(m, "hello", "/adapter beta", "hello", "/base", "hello", "/adapter alpha", "hello")
    answers = [line for line in out if line.endswith(": hello")]
    assert answers == ["alpha: hello", "beta: hello", "base: hello", "alpha: hello"]
    assert count == 4
    assert prompts[:3] == ["[alpha]> ", "[alpha]> ", "[beta]> "]  # the prompt shows who answers


def test_real_answers_differ_by_adapter(m):
    out, count, _ = run(m, "Say hi.", "/adapter beta", "/reset", "Say hi.", "/base", "/reset", "Say hi.")
    answers = [out[1], out[4], out[7]]  # HELP, answer, switch message, reset message, answer, ...
    assert count == 3 and all(isinstance(a, str) and a for a in answers) and len(set(answers)) == 3
    # a first turn is exactly the instruction through the adapter's template, as generate renders it
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
    assert sum(line.startswith("Type a message") for line in out) == 2  # at start and on /help
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


def test_history_goes_with_every_turn_across_adapter_switches(m, monkeypatch):
    calls = fake_generate(monkeypatch, m)
    out, count, _ = run(m, "hello", "/adapter beta", "again")
    assert count == 2 and out[-2] == "beta: again"
    assert [prompt for prompt, _, _ in calls] == [
        "### Instruction:\nhello\n\n### Response:\n",
        "### Instruction:\nhello\n\n### Response:\nalpha: hello\n\n### Instruction:\nagain\n\n### Response:\n",
    ]
    _, settings, raw = calls[-1]
    assert raw and settings.stop == ["### "] and settings.stop_token_ids == []
    assert settings.max_new_tokens == FAST.max_new_tokens  # the rest of the settings are the user's
    assert "the conversation is kept" in chat.HELP


def test_reset_and_system(m, monkeypatch):
    calls = fake_generate(monkeypatch, m)
    out, _, _ = run(m, "one", "/system Be brief.", "two", "/reset", "three", "/system", "four")
    assert "system message set" in out and "system message removed" in out
    assert any(line.startswith("conversation forgotten") for line in out)
    assert [prompt for prompt, _, _ in calls] == [
        "### Instruction:\none\n\n### Response:\n",
        "Be brief.\n\n### Instruction:\none\n\n### Response:\nalpha: one\n\n### Instruction:\ntwo\n\n### Response:\n",
        "Be brief.\n\n### Instruction:\nthree\n\n### Response:\n",  # reset forgot the turns, kept the system
        "### Instruction:\nthree\n\n### Response:\nalpha: three\n\n### Instruction:\nfour\n\n### Response:\n",
    ]


def test_empty_answers_and_errors_leave_no_turn_behind(m, monkeypatch):
    calls = fake_generate(monkeypatch, m, answers=["", "kept", PeftGpt2Error("no room"), KeyboardInterrupt()])
    out, count, _ = run(m, "lost", "first", "failed", "interrupted", "second")
    assert "(empty answer)" in out and "error: no room" in out and "(interrupted)" in out
    assert calls[1][0] == "### Instruction:\nfirst\n\n### Response:\n"
    kept = "### Instruction:\nfirst\n\n### Response:\nkept\n\n"
    assert calls[-1][0] == kept + "### Instruction:\nsecond\n\n### Response:\n" and count == 3  # the empty one counts
    monkeypatch.undo()  # the real generate refuses a prompt that leaves no room
    settings = GenerationSettings(max_new_tokens=1024)  # the tiny model's 1024 positions: no room for any prompt
    out = []
    run_chat(m, settings=settings, input_fn=script("too long", "/adapters"), print_fn=out.append)
    assert any(line.startswith("error: a prompt of") for line in out) and "* alpha\n  beta\n  (base)" in out


def test_oldest_turns_dropped_to_fit_the_model(m, monkeypatch):
    calls = fake_generate(monkeypatch, m)
    one_turn = len(m.tokenizer("### Instruction:\nthree\n\n### Response:\n")["input_ids"])
    settings = GenerationSettings(max_new_tokens=1024 - 2 * one_turn - 8)  # room for about two exchanges
    out = []
    run_chat(m, settings=settings, input_fn=script("one", "two", "three", "four"), print_fn=out.append)
    dropped = [line for line in out if "dropped" in line]
    assert dropped and dropped[0].startswith("(the conversation outgrew the model's positions: dropped the 1 oldest")
    assert len(calls) == 4 and "one" not in calls[-1][0].split("### Response:")[0]
    assert calls[-1][0].endswith("### Instruction:\nfour\n\n### Response:\n")
    for prompt, _, _ in calls:  # every prompt sent fitted
        assert len(m.tokenizer(prompt)["input_ids"]) + settings.max_new_tokens <= 1024
