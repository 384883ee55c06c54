"""Evaluation: token-weighted completion loss checked by hand, record loading, and the evaluate_model wiring.

A random-init GPT-2 greedily repeats one token, so tests that need varied output scale the position
embeddings up (as in ``test_generation``).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import peft_gpt2.evaluation.evaluate as evaluation
from peft_gpt2.data.templates import TEMPLATES
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.evaluate import evaluate_model, load_eval_records
from peft_gpt2.inference.generation import Completion, generate
from peft_gpt2.inference.scoring import completion_loss
from peft_gpt2.inference.settings import GenerationSettings

PAIRS = [  # completions of clearly different lengths
    {"prompt": "### Instruction:\nName a colour.\n\n### Response:\n", "completion": "Red"},
    {
        "prompt": "### Instruction:\nTell a story.\n\n### Response:\n",
        "completion": "Once upon a time a fox lived in a wood near a river, and every morning it ran to the water "
        "to drink, watch the fish and wait for the sun to come up over the hills.",
    },
    {"prompt": "Q: two plus two?\nA:", "completion": " four, of course"},
]
RECORDS = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris"},
    {"instruction": "Translate to German.", "input": "good morning", "output": "Guten Morgen"},
    {"instruction": "Who wrote Hamlet?", "input": "", "output": "William Shakespeare"},
]


def scale_positions(model):
    with torch.no_grad():
        model.transformer.wpe.weight.mul_(10)
    return model


def by_hand(model, tokenizer, pairs) -> tuple[float, int, int]:
    """(NLL sum, tokens, argmax hits) over completion + eos, one unpadded example and one position at a time."""
    nll, count, hits = 0.0, 0, 0
    for pair in pairs:
        prompt = tokenizer(pair["prompt"], add_special_tokens=False)["input_ids"]
        ids = tokenizer(pair["prompt"] + pair["completion"], add_special_tokens=False)["input_ids"]
        ids = ids + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0]
        logits = logits.double()
        for t in range(len(prompt), len(ids)):
            log_probs = torch.log_softmax(logits[t - 1], dim=-1)
            nll -= log_probs[ids[t]].item()
            hits += int(logits[t - 1].argmax().item() == ids[t])
            count += 1
    return nll, count, hits


@pytest.fixture()
def positional(tiny):
    model, tokenizer = tiny
    return scale_positions(model), tokenizer


def greedy_pair(model, tokenizer, prompt: str, n: int = 5) -> dict:
    """A pair whose completion is the model's own greedy continuation: argmax hits on all but its eos."""
    batch = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return {"prompt": prompt, "completion": tokenizer.decode(out[0, batch["input_ids"].shape[1] :])}


def test_perplexity_and_accuracy_match_a_hand_computation(positional):
    model, tokenizer = positional
    pairs = [*PAIRS, greedy_pair(model, tokenizer, PAIRS[2]["prompt"])]
    nll, count, hits = by_hand(model, tokenizer, pairs)
    result = completion_loss(model, tokenizer, pairs, batch_size=3)
    assert result.tokens == count
    assert result.nll_sum == pytest.approx(nll, rel=1e-4)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert result.loss == pytest.approx(nll / count, rel=1e-4)
    assert result.correct == hits
    assert result.token_accuracy == pytest.approx(hits / count)
    assert 5 <= hits < count  # the greedy pair's tokens are hits, so accuracy is really checked
    assert result.truncated == result.dropped == 0


def test_loss_is_token_weighted_whatever_the_batching(positional):
    model, tokenizer = positional
    results = [completion_loss(model, tokenizer, PAIRS, batch_size=b) for b in (1, 2, 3)]
    for result in results[1:]:
        assert result.tokens == results[0].tokens
        assert result.correct == results[0].correct
        assert result.perplexity == pytest.approx(results[0].perplexity, rel=1e-5)
    # A mean of per-example (batch_size=1) means weights the 1-token answer like the 40-token one: it differs.
    per_example = [completion_loss(model, tokenizer, [pair]).loss for pair in PAIRS]
    naive = sum(per_example) / len(per_example)
    assert abs(naive - results[0].loss) > 100 * 1e-5 * results[0].loss


def test_prompt_and_padding_are_not_counted(positional):
    model, tokenizer = positional
    completion_tokens = [len(tokenizer(p["completion"], add_special_tokens=False)["input_ids"]) for p in PAIRS]
    assert completion_loss(model, tokenizer, PAIRS).tokens == sum(n + 1 for n in completion_tokens)
    short, long = PAIRS[0], PAIRS[1]
    alone = completion_loss(model, tokenizer, [short])
    long_alone = completion_loss(model, tokenizer, [long])
    together = completion_loss(model, tokenizer, [short, long], batch_size=2)  # short is padded by ~40 tokens
    assert together.tokens == alone.tokens + long_alone.tokens
    assert together.correct == alone.correct + long_alone.correct
    assert together.nll_sum - long_alone.nll_sum == pytest.approx(alone.nll_sum, rel=1e-4)


def test_final_eos_counts_although_pad_is_eos(positional):
    model, tokenizer = positional
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    empty = {"prompt": "### Instruction:\nSay nothing.\n\n### Response:\n", "completion": ""}
    result = completion_loss(model, tokenizer, [empty, PAIRS[1]], batch_size=2)  # empty is padded with eos
    nll, count, _ = by_hand(model, tokenizer, [empty])
    assert count == 1
    long_alone = completion_loss(model, tokenizer, [PAIRS[1]])
    assert result.tokens == long_alone.tokens + 1  # its eos counts; the eos padding after it does not
    assert result.nll_sum - long_alone.nll_sum == pytest.approx(nll, rel=1e-4)


def test_truncation_keeps_the_start_and_counts(positional):
    model, tokenizer = positional
    prompt_len = len(tokenizer(PAIRS[1]["prompt"])["input_ids"])
    result = completion_loss(model, tokenizer, PAIRS[1:2], max_length=prompt_len + 5)
    assert result.truncated == 1 and result.tokens == 5
    with pytest.raises(PeftGpt2Error, match="max_length"):
        completion_loss(model, tokenizer, PAIRS[1:2], max_length=prompt_len)  # prompt fills it: dropped


def test_bpe_merge_across_the_join_is_an_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(PeftGpt2Error, match="prefix"):
        completion_loss(model, tokenizer, [{"prompt": "Answer: ", "completion": "yes"}])  # " yes" is one token


def write(path, records, jsonl=False):
    text = "\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records)
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_load_qa_and_alpaca_files(tmp_path):
    qa = write(
        tmp_path / "qa.json",
        [{"question": " Who? ", "answer": "Holmes", "source": "x"}, {"question": "Q", "answer": "A"}],
    )
    records, task = load_eval_records(qa)
    assert task == "qa"
    assert records == [
        {"instruction": " Who? ", "input": "", "output": "Holmes"},
        {"instruction": "Q", "input": "", "output": "A"},
    ]
    alpaca = write(tmp_path / "a.jsonl", RECORDS[:2], jsonl=True)
    assert load_eval_records(alpaca) == (RECORDS[:2], "instructions")
    assert load_eval_records(alpaca, task="instructions")[1] == "instructions"
    no_input = write(tmp_path / "b.json", [{"instruction": "I", "output": "O"}])
    assert load_eval_records(no_input)[0] == [{"instruction": "I", "input": "", "output": "O"}]


@pytest.mark.parametrize(
    ("records", "task", "match"),
    [
        (
            [{"question": "a", "answer": "b"}, {"question": "c", "answer": "d"}, {"question": "e"}],
            None,
            "record 2.*'answer'",
        ),
        ([{"question": "a", "answer": "b"}, {"question": "c", "answer": 3}], None, "record 1.*'answer'.*int"),
        ([{"question": "a", "answer": "b"}, ["c", "d"]], None, "record 1"),
        ([{"question": "a", "answer": " "}], None, "record 0.*'answer' is empty"),
        (RECORDS, "qa", "record 0.*'question'.*task='instructions'"),
        ([{"question": "a", "answer": "b"}], "instructions", "record 0.*'instruction'"),
        ([RECORDS[0], {"instruction": "x", "output": None}], None, "record 1.*'output'"),
        ([{"prompt": "a", "completion": "b"}], None, "record 0.*cannot tell"),
        ([], None, "no records"),
    ],
)
def test_bad_records_name_file_and_index(tmp_path, records, task, match):
    path = write(tmp_path / "bad.json", records)
    with pytest.raises(PeftGpt2Error, match=match) as info:
        load_eval_records(path, task=task)
    assert "bad.json" in str(info.value)


def test_unknown_task_or_template(tmp_path, tiny):
    with pytest.raises(PeftGpt2Error, match="task"):
        load_eval_records(write(tmp_path / "a.json", RECORDS), task="nope")
    with pytest.raises(PeftGpt2Error, match="template"):
        evaluate_model(*tiny, RECORDS, template="nope")


def test_evaluate_model_wiring(tiny, monkeypatch):
    model, tokenizer = tiny
    seen = {}

    def fake_generate(model, tokenizer, prompts, settings):
        seen.update(prompts=prompts, settings=settings)
        return [Completion(r["output"], 3, "stop") for r in RECORDS]

    monkeypatch.setattr(evaluation, "generate", fake_generate)
    result = evaluate_model(model, tokenizer, RECORDS, template="short", settings=GenerationSettings(stop=["END"]))
    assert seen["prompts"] == [TEMPLATES["short"].render(r)["prompt"] for r in RECORDS]
    assert seen["settings"].stop == ["END", "### "]  # the template's stop strings reach generation
    m = result.metrics
    assert m["exact_match"] == m["f1"] == m["rouge_l"] == 1.0
    assert m["examples"] == 3 and m["mean_answer_words"] == pytest.approx(5 / 3)
    assert [a["expected"] for a in result.answers] == [r["output"] for r in RECORDS]
    assert [a["f1"] for a in result.answers] == [1.0, 1.0, 1.0]
    assert result.answers[1] == {
        "instruction": "Translate to German.",
        "input": "good morning",
        "expected": "Guten Morgen",
        "generated": "Guten Morgen",
        "f1": 1.0,
    }
    assert m["loss"] == pytest.approx(math.log(m["perplexity"]))
    evaluate_model(model, tokenizer, RECORDS, settings=GenerationSettings(stop=[]))
    assert seen["settings"].stop == ["### "]


def test_evaluate_model_real_generation_in_input_order(positional):
    model, tokenizer = positional
    settings = GenerationSettings(max_new_tokens=8)
    result = evaluate_model(model, tokenizer, RECORDS, settings=settings, batch_size=2)
    prompts = [TEMPLATES["alpaca"].render(r)["prompt"] for r in RECORDS]
    assert [a["generated"] for a in result.answers] == [
        generate(model, tokenizer, [p], settings)[0].text for p in prompts
    ]
    assert [a["instruction"] for a in result.answers] == [r["instruction"] for r in RECORDS]
    m = result.metrics
    for key in ("f1", "precision", "recall", "exact_match", "bleu", "sentence_bleu", "rouge_l", "token_accuracy"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["perplexity"] > 1 and m["completion_tokens"] > len(RECORDS)
    assert m["generation_time_s"] > 0 and m["loss_time_s"] > 0


def test_merged_and_unmerged_adapter_agree(positional):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = positional
    base = copy.deepcopy(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    settings = GenerationSettings(max_new_tokens=8)
    runs = [evaluate_model(m, tokenizer, RECORDS, settings=settings) for m in (peft_model, merged, base)]
    (adapter, merged_run, bare) = runs
    assert merged_run.metrics["perplexity"] == pytest.approx(adapter.metrics["perplexity"], rel=1e-4)
    assert [a["generated"] for a in merged_run.answers] == [a["generated"] for a in adapter.answers]
    assert bare.metrics["perplexity"] != pytest.approx(adapter.metrics["perplexity"], rel=1e-3)
    assert [a["generated"] for a in bare.answers] != [a["generated"] for a in adapter.answers]
