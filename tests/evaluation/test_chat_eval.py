"""Chat evaluation: a messages run's test.json scored by eval and compare on each conversation's last assistant turn."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import write_recipe

from peft_gpt2.cli.main import main
from peft_gpt2.config.recipe import load_recipe
from peft_gpt2.data.conversations import end_of_turn_ids, with_chat_template
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.chat_eval import chat_loss_rows
from peft_gpt2.evaluation.compare import Run, compare, shared_template
from peft_gpt2.evaluation.evaluate import answer_records, evaluate_model, load_eval_records
from peft_gpt2.inference.generation import Completion, end_ids
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.run_folder import Provenance

FAST = GenerationSettings(max_new_tokens=4)
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "2 plus 3 is 5."},
        {"role": "user", "content": "And 7 times 8?"},
        {"role": "assistant", "content": "7 times 8 is 56."},
        {"role": "user", "content": "Thanks!"},  # after the last assistant turn: dropped
    ]
}
SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "Say hi in French."},
        {"from": "gpt", "value": "Bonjour !"},
        {"from": "human", "value": "And goodbye?"},
        {"from": "gpt", "value": "Au revoir."},
    ]
}


def conversation(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Add {i} and 1."},
            {"role": "assistant", "content": f"{i + 1}."},
            {"role": "user", "content": f"And {i} and 2?"},
            {"role": "assistant", "content": f"{i + 2}."},
        ]
    }


def write(tmp_path, records, name="chat.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return str(path)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, tiny_path):
    """A LoRA run of the tiny GPT-2 trained 3 steps on conversations, with a held-out test.json of messages."""
    from peft_gpt2.training.train import train

    root = tmp_path_factory.mktemp("chat")
    write(root, [conversation(i) for i in range(12)], "data.json")
    recipe = write_recipe(
        root / "chat.yaml",
        data={"format": "messages", "template": None, "max_length": 96, "split": [0.5, 0.25, 0.25]},
    )
    return train(load_recipe(recipe)).path


def test_eval_and_compare_score_a_chat_runs_test_split(chat_run, capsys, tmp_path):
    test = json.loads((chat_run / "test.json").read_text())
    assert len(test) == 3 and all("messages" in r for r in test)
    code = main(["eval", "--adapter", str(chat_run), "--data", str(chat_run / "test.json"), "--max-new-tokens", "4",
                 "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "chat" and out["examples"] == 3
    for metric in ("f1", "exact_match", "bleu", "rouge_l", "perplexity", "token_accuracy"):
        assert out[metric] >= 0
    assert out["perplexity"] > 1 and out["completion_tokens"] > 0
    answers = [json.loads(line) for line in (tmp_path / f"{chat_run.name}.test.answers.jsonl").read_text().splitlines()]
    assert [a["expected"] for a in answers] == [r["messages"][-1]["content"] for r in test]

    rows = compare([str(chat_run)], data=["test"], settings=FAST)
    assert [(r["model"], r["dataset"]) for r in rows] == [("base", "test"), (chat_run.name, "test")]
    for row in rows:
        assert row["examples"] == 3 and 0 <= row["f1"] <= 1 and row["perplexity"] > 1
    assert rows[0]["perplexity"] != rows[1]["perplexity"]  # the adapter is on in its row


def test_chat_records_are_detected_and_cut_at_the_last_assistant_turn(tmp_path):
    records, task = load_eval_records(write(tmp_path, [CHAT, SHAREGPT]))
    assert task == "chat"
    assert records[0]["messages"] == CHAT["messages"][:5]
    assert (records[0]["instruction"], records[0]["input"], records[0]["output"]) == ("And 7 times 8?", "",
                                                                                      "7 times 8 is 56.")
    assert records[1]["messages"][-1] == {"role": "assistant", "content": "Au revoir."}
    assert load_eval_records(write(tmp_path, [SHAREGPT]), task="chat")[1] == "chat"


def test_the_prompt_is_the_earlier_turns_and_the_generation_prompt(tmp_path, tiny, monkeypatch):
    import peft_gpt2.evaluation.chat_eval as chat_eval

    model, tokenizer = tiny
    records, _ = load_eval_records(write(tmp_path, [CHAT, SHAREGPT]))
    seen = []

    def fake_generate(model, tokenizer, prompts, settings):
        seen.append(prompts)
        return [Completion("x", 1, "stop") for _ in prompts]

    monkeypatch.setattr(chat_eval, "generate", fake_generate)
    assert answer_records(model, tokenizer, records, "no-such-template", FAST) == ["x", "x"]  # the template is unused
    chat = with_chat_template(copy.deepcopy(tokenizer))
    assert seen[0] == [chat.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
                       for r in records]
    assert seen[0][0] == (
        "### System:\nBe brief.<|endoftext|>\n### User:\nWhat is 2 plus 3?<|endoftext|>\n"
        "### Assistant:\n2 plus 3 is 5.<|endoftext|>\n### User:\nAnd 7 times 8?<|endoftext|>\n### Assistant:\n"
    )
    chat = with_chat_template(copy.deepcopy(tokenizer))
    assert end_of_turn_ids(chat, chat.chat_template) == [tokenizer.eos_token_id]  # GPT-2's turns end with eos


def test_an_end_of_turn_that_is_not_eos_stops_generation_too(tmp_path, tiny, monkeypatch):
    import peft_gpt2.evaluation.chat_eval as chat_eval

    model, tokenizer = tiny
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]})
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    before = model.generation_config.eos_token_id
    seen = []
    monkeypatch.setattr(chat_eval, "generate", lambda model, tokenizer, prompts, settings: seen.append(
        (prompts, end_ids(model, tokenizer, settings))) or [Completion("x", 1, "stop")])
    records, _ = load_eval_records(write(tmp_path, [SHAREGPT]))
    answer_records(model, tokenizer, records, "alpaca", FAST)
    assert seen == [(["<user>Say hi in French.<|im_end|><assistant>Bonjour !<|im_end|><user>And goodbye?<|im_end|>"
                      "<assistant>"], [tokenizer.eos_token_id, end])]
    assert model.generation_config.eos_token_id == before  # the model is not changed: the settings carry the stop


def test_the_loss_counts_exactly_the_last_assistant_turn(tmp_path, tiny):
    import torch
    import torch.nn.functional as F

    model, tokenizer = tiny
    records, _ = load_eval_records(write(tmp_path, [CHAT, SHAREGPT, conversation(3)]))
    result = evaluate_model(model, tokenizer, records, settings=GenerationSettings(max_new_tokens=2), batch_size=2)
    chat = with_chat_template(copy.deepcopy(tokenizer))
    nll, tokens = [], []
    for r in records:  # one row at a time, no padding: the earlier turns + generation prompt, then the answer + eos
        prompt = chat(chat.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"]
        answer = chat(r["output"], add_special_tokens=False)["input_ids"] + [chat.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
        nll.append(F.cross_entropy(logits, torch.tensor(answer), reduction="sum").item())
        tokens.append(len(answer))
    assert result.items["tokens"] == tokens
    assert result.items["nll"] == pytest.approx(nll, rel=1e-4)
    assert result.metrics["completion_tokens"] == sum(tokens)
    row = chat_loss_rows(tokenizer, records)[0]  # the whole conversation is context; only the last turn is scored
    assert chat.decode(row["input_ids"]) == chat.apply_chat_template(records[0]["messages"], tokenize=False)
    masked = [t for t, m in zip(row["input_ids"], row["assistant_masks"], strict=True) if m]
    assert chat.decode(masked) == "7 times 8 is 56.<|endoftext|>"


BAD = [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     r"record 1: field messages\[1\]\.role: unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]},
     r"record 1: field messages\[1\]\.content must be a non-empty string"),
    ({"messages": [{"role": "user", "content": "a"}]}, "record 1: field 'messages' has no assistant turn"),
    ({"instruction": "a", "output": "b"}, "record 1: expected exactly one of 'messages'"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=["role", "empty", "no-assistant", "alpaca"])
def test_a_bad_chat_record_is_named_by_file_record_and_field(tmp_path, bad, message):
    with pytest.raises(PeftGpt2Error, match=f"bad.json: {message}"):
        load_eval_records(write(tmp_path, [CHAT, bad], "bad.json"))


def test_eval_cli_refuses_a_bad_chat_record_before_loading(tmp_path, capsys, monkeypatch):
    from peft_gpt2.models import loading as models

    monkeypatch.setattr(models, "load_base", lambda *a, **k: pytest.fail("model loaded before data was checked"))
    path = write(tmp_path, [CHAT, BAD[0][0]], "bad.json")
    assert main(["eval", "--model", "tiny-gpt2", "--data", path]) == 2
    assert "bad.json: record 1: field messages[1].role" in capsys.readouterr().err


def test_chat_runs_take_no_part_in_choosing_the_prompt_template():
    def run(template: str, data_format: str) -> Run:
        return Run(data_format, "adapter", None, Provenance(template=template, data_format=data_format))

    assert shared_template([run("alpaca", "messages"), run("short", "instructions")]) == "short"
    assert shared_template([run("alpaca", "messages")]) == Provenance().template


def test_a_conversation_cut_by_max_length_is_counted(tiny):
    from peft_gpt2.inference.scoring import completion_loss

    model, tokenizer = tiny
    ids = list(range(100, 110))
    rows = [
        {"input_ids": ids, "assistant_masks": [0] * 7 + [1] * 3},  # its answer lies past the cut: nothing scored
        {"input_ids": ids, "assistant_masks": [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]},  # cut, its answer kept
        {"input_ids": ids[:6], "assistant_masks": [0, 0, 0, 1, 1, 1]},  # not cut
    ]
    result = completion_loss(model, tokenizer, rows, max_length=7)
    assert (result.truncated, result.dropped) == (1, 1)
    assert result.tokens_per_row == [0, 3, 3]
