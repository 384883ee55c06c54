"""Chat messages rendered in the format each adapter was trained with; OpenAI message checks."""

from __future__ import annotations

import shutil

import pytest
import torch

from peft_gpt2.adapters.adapter_set import AdapterSet
from peft_gpt2.adapters.chat_prompts import ChatPrompt, chat_prompt, check_messages, fit_history
from peft_gpt2.data.conversations import GPT2_CHAT_TEMPLATE, end_of_turn_ids, render_segments
from peft_gpt2.data.templates import ALPACA, DATA_TO_TEXT, SHORT
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.loading import config_fingerprint, load_tokenizer
from peft_gpt2.run_folder import Provenance

# SmolLM2's ChatML template, as its tokenizer ships it
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
FORMATS = {  # adapter name -> (data_format, template) recorded in its provenance
    "chat": ("messages", "alpaca"),
    "alpaca": ("instructions", "alpaca"),
    "short": (None, "short"),  # a folder trained elsewhere records no format
    "e2e": ("data_to_text", "data_to_text"),
    "lm": ("text", "alpaca"),
}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_path):
    """One random LoRA adapter, copied once per recorded data format and template."""
    from peft import LoraConfig, get_peft_model

    from peft_gpt2.models.loading import load_base

    root = tmp_path_factory.mktemp("chat-prompts")
    model, _ = load_base(tiny_path)
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(root / "lora")
    out = {}
    for name, (data_format, template) in FORMATS.items():
        shutil.copytree(root / "lora", root / name)
        fingerprint = config_fingerprint(model.config)
        Provenance(
            name, "lora", tiny_path, base_config_fingerprint=fingerprint, template=template, data_format=data_format
        ).write(root / name)
        out[name] = root / name
    return out


@pytest.fixture()
def m(folders, tiny):
    return AdapterSet(*tiny, dict(folders))


@pytest.fixture()
def chatml(tiny, tiny_path):
    """The tiny model with a GPT-2 tokenizer given ChatML's special tokens and template (rendering only)."""
    tokenizer = load_tokenizer(tiny_path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return AdapterSet(tiny[0], tokenizer)


@pytest.mark.parametrize(("adapter", "template"), [("alpaca", ALPACA), ("short", SHORT), ("e2e", DATA_TO_TEXT)])
def test_one_user_message_renders_exactly_the_training_prompt(m, adapter, template):
    prompt = chat_prompt(m, adapter, [user("  Name three colors. ")])
    assert prompt == ChatPrompt(template.prompt("Name three colors."), ["### "], [], f"{template.name} template")
    assert prompt.text == m.template_for(adapter).prompt("Name three colors.")


def test_turns_become_sections_and_system_replaces_the_preamble(m):
    turns = [user("Hi."), assistant("Hello."), user("Bye.")]
    sections = "### Instruction:\nHi.\n\n### Response:\nHello.\n\n### Instruction:\nBye.\n\n### Response:\n"
    preamble = ALPACA.without_input[: ALPACA.without_input.index("### ")]
    assert preamble.startswith("Below is an instruction") and preamble.endswith("request.\n\n")
    assert chat_prompt(m, "alpaca", turns).text == preamble + sections
    assert chat_prompt(m, "short", turns).text == sections
    system = {"role": "system", "content": "Be brief."}
    assert chat_prompt(m, "alpaca", [system, *turns]).text == "Be brief.\n\n" + sections
    assert chat_prompt(m, "short", [system, *turns]).text == "Be brief.\n\n" + sections  # SHORT has no preamble
    assert chat_prompt(m, "e2e", [user("name[Aromi]"), assistant("Aromi."), user("name[Bibimbap]")]).text == (
        "### Data:\nname[Aromi]\n\n### Text:\nAromi.\n\n### Data:\nname[Bibimbap]\n\n### Text:\n"
    )


def test_consecutive_turns_join_into_one_section(m):
    turns = [assistant("Welcome."), user("Hi."), user("Still there?")]
    assert chat_prompt(m, "short", turns).text == (
        "### Instruction:\n\n\n### Response:\nWelcome.\n\n### Instruction:\nHi.\n\nStill there?\n\n### Response:\n"
    )


def test_chat_adapter_renders_as_trained_and_leaves_the_tokenizer_alone(m):
    turns = [{"role": "system", "content": "Be brief."}, user("Hi."), assistant("Hello."), user("Bye.")]
    prompt = chat_prompt(m, "chat", turns)
    eos = m.tokenizer.eos_token
    assert prompt.text == (
        f"### System:\nBe brief.{eos}\n### User:\nHi.{eos}\n### Assistant:\nHello.{eos}\n### User:\nBye.{eos}\n"
        "### Assistant:\n"
    )
    assert prompt.stop == [] and prompt.stop_token_ids == [m.tokenizer.eos_token_id]
    assert prompt.source == "GPT-2 chat template (GPT2_CHAT_TEMPLATE)"
    assert m.tokenizer.chat_template is None  # the base still renders instructions
    assert chat_prompt(m, None, [user("Hi.")]).text == ALPACA.prompt("Hi.")
    # what training rendered: the prompt is the conversation up to where the trained answer starts
    m.tokenizer.chat_template = GPT2_CHAT_TEMPLATE
    pieces = render_segments([*turns, assistant("Bye!")], m.tokenizer, "test")
    assert "".join(text for text, _ in pieces[:-2]) == prompt.text and pieces[-2] == ("Bye!" + eos, 1)


def test_base_and_text_adapter_use_the_tokenizers_chat_template(chatml):
    prompt = chat_prompt(chatml, None, [user("Hi.")])
    assert prompt.text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.stop == [] and prompt.stop_token_ids == [chatml.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert prompt.stop_token_ids != [chatml.tokenizer.eos_token_id] and prompt.source == "tokenizer chat template"
    chatml.template = "short"  # a template named for the set wins over the tokenizer's, for the base
    assert chat_prompt(chatml, None, [user("Hi.")]).text == SHORT.prompt("Hi.")


def test_text_adapter_without_chat_template_takes_the_sets_template(m):
    assert chat_prompt(m, "lm", [user("Hi.")]).text == m.template_for(None).prompt("Hi.")


def test_combined_chat_adapters_stay_chat(m):
    m.combine("mixed", {"chat": 1.0, "alpaca": 1.0})
    assert chat_prompt(m, "mixed", [user("Hi.")]).source == "alpaca template"  # parts trained differently
    m.combine("chats", {"chat": 0.5})
    assert chat_prompt(m, "chats", [user("Hi.")]).source.startswith("GPT-2 chat template")


def test_template_errors_and_unknown_adapters(chatml, m):
    chatml.tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(PeftGpt2Error, match="tokenizer chat template refused them: roles must alternate"):
        chat_prompt(chatml, None, [user("Hi.")])
    with pytest.raises(PeftGpt2Error, match="no adapter named 'nope'"):
        chat_prompt(m, "nope", [user("Hi.")])


def test_end_of_turn_needs_a_special_token_after_the_answer(gpt2_tokenizer):
    assert end_of_turn_ids(gpt2_tokenizer, GPT2_CHAT_TEMPLATE) == [gpt2_tokenizer.eos_token_id]
    plain = "{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}"
    assert end_of_turn_ids(gpt2_tokenizer, plain) == []


def test_check_messages_normalises():
    got = check_messages(
        [
            {"role": "developer", "content": " Be brief. ", "name": "ops"},
            {"role": "user", "content": [{"type": "text", "text": "Line one."}, {"type": "text", "text": "Two."}]},
        ]
    )
    assert got == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Line one.\nTwo."}]


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        (None, "messages must be a non-empty list"),
        ([], "messages must be a non-empty list"),
        (["hi"], r"messages\[0\] must be an object .* got str"),
        ([{"content": "hi"}], r"messages\[0\]\.role: unsupported role None"),
        ([{"role": "tool", "content": "x"}, user("hi")], r"messages\[0\]\.role: unsupported role 'tool'"),
        ([{"role": ["user"], "content": "hi"}], r"messages\[0\]\.role: unsupported role \['user'\]"),
        ([user(None)], r"messages\[0\]\.content must be a non-empty string .* got a NoneType"),
        ([user(" \n")], r"messages\[0\]\.content must be a non-empty string .* got empty"),
        ([user([])], r"messages\[0\]\.content must be a non-empty string .* got empty"),
        ([user([{"type": "image_url", "image_url": {"url": "x"}}])], r"content\[0\]: only text parts .* 'image_url'"),
        ([user([{"type": "text", "text": "a"}, "b"])], r"messages\[0\]\.content\[1\]: only text parts .* got a str"),
        ([user([{"type": "text", "text": 3}])], r"messages\[0\]\.content\[0\]\.text must be a string, got int"),
        ([user("ok"), assistant("a\ud800b"), user("x")], r"messages\[1\]\.content: .* lone surrogate .* character 1"),
        ([user([{"type": "text", "text": "\udfff"}])], r"messages\[0\]\.content: not text: a lone surrogate"),
        ([user("hi"), assistant("hello")], r"messages\[1\]\.role: the last message must be the user's"),
    ],
)
def test_check_messages_refusals_name_the_field(messages, error):
    with pytest.raises(PeftGpt2Error, match=error):
        check_messages(messages)


def test_fit_history_drops_oldest_exchanges_and_keeps_the_system_message(m):
    system = {"role": "system", "content": "Be brief."}
    turns = [system, user("one"), assistant("1"), user("two"), assistant("2"), user("three")]
    prompt, kept, dropped = fit_history(m, "short", turns, 16)
    assert dropped == 0 and kept == turns and prompt == chat_prompt(m, "short", turns)
    full = len(m.tokenizer(prompt.text)["input_ids"])
    last_two = [system, user("two"), assistant("2"), user("three")]
    need = len(m.tokenizer(chat_prompt(m, "short", last_two).text)["input_ids"])
    assert need < full
    prompt, kept, dropped = fit_history(m, "short", turns, 1024 - need)  # room for the last two exchanges only
    assert (dropped, kept, prompt.text) == (1, last_two, chat_prompt(m, "short", last_two).text)
    prompt, kept, dropped = fit_history(m, "short", turns, 1024)  # nothing fits: the last user turn stays
    assert (dropped, kept) == (2, [system, user("three")])
