"""Training: the completion-only mask, LoRA parameter counts, learning, 8-bit, save -> plain PEFT load."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import addition_records, make_recipe, write_recipe

from peft_gpt2.cli.main import main
from peft_gpt2.data.templates import TEMPLATES, tokenize_pairs
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.training.train import train
from peft_gpt2.training.trainer import make_trainer, peft_config, sft_config


def toy_trainer(recipe, model, tokenizer, pairs: list[dict], tmp_path: Path):
    """``make_trainer`` on training pairs only, fp32, checkpoints (none are written) under ``tmp_path``."""
    return make_trainer(recipe, model, tokenizer, sft_config(recipe, tmp_path / "ck", "fp32"), pairs, [])


def test_prompt_masked_completion_and_final_eos_learned(tmp_path, tiny, caplog):
    """On the real GPT-2 tokenizer: every prompt token is -100; every completion token and the final eos
    carries its label, even though pad == eos and the batch is padded."""
    model, tokenizer = tiny
    recipe = make_recipe(tmp_path)
    records = addition_records(3) + [
        {"instruction": "Name a colour.", "input": "", "output": "Blue, like the sky.\nAnd the sea."},
        {"instruction": "Quote it.", "input": "(with brackets)", "output": '"Elementary," he said.'},
    ]
    pairs = [TEMPLATES["alpaca"].render(r) for r in records]
    with caplog.at_level(logging.WARNING):
        trainer = toy_trainer(recipe, model, tokenizer, pairs, tmp_path)
    assert "not a prefix" not in caplog.text  # TRL's shifted-mask warning, treated as an error
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos  # GPT-2 has no pad token: the case that hides the bug
    rows = [trainer.train_dataset[i] for i in range(len(pairs))]
    for pair, row in zip(pairs, rows, strict=True):
        n_prompt = len(tokenizer(pair["prompt"])["input_ids"])
        ids, labels = row["input_ids"], row["labels"]
        assert labels[:n_prompt] == [-100] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:]
        assert ids[-1] == eos and labels[-1] == eos
        assert tokenizer.decode(ids[n_prompt:-1]) == pair["completion"]
    batch = trainer.data_collator(rows)
    for row, labels, mask in zip(rows, batch["labels"], batch["attention_mask"], strict=True):
        n = len(row["input_ids"])
        assert labels[:n].tolist() == row["labels"]  # the final eos keeps its label
        assert (labels[n:] == -100).all() and (mask[n:] == 0).all()  # padding carries none


@pytest.mark.parametrize("method", ["lora", "full"])
def test_cpu_loss_equals_trl_fused_loss_and_a_hand_loss(tmp_path, tiny_path, method):
    """Off CUDA our trainer takes the model's own loss instead of TRL's fused LM head: same value and
    gradients, and both equal completion-token NLL summed over the batch / its label count."""
    from trl import SFTTrainer

    from peft_gpt2.models.loading import load_base

    model, tokenizer = load_base(tiny_path)
    recipe = make_recipe(tmp_path, f"method={method}")
    pairs = [TEMPLATES["short"].render(r) for r in addition_records(6)]
    pairs[0]["completion"] = "a much longer answer than the others, so the batch is padded"
    trainer = toy_trainer(recipe, model, tokenizer, pairs, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    n_labels = int((batch["labels"][:, 1:] != -100).sum())
    model = trainer.model.eval()  # no dropout: both losses see the same network

    def loss_and_grads(compute_loss) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss = compute_loss(trainer, model, dict(batch), num_items_in_batch=torch.tensor(n_labels))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    ours, ours_grads = loss_and_grads(type(trainer).compute_loss)
    trl, trl_grads = loss_and_grads(SFTTrainer.compute_loss)
    hand = sum(per_example_nll(model, batch)) / n_labels
    assert ours == pytest.approx(trl, rel=1e-5) and ours == pytest.approx(hand, rel=1e-5)
    for a, b in zip(ours_grads, trl_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def per_example_nll(model, batch) -> list[float]:
    """Summed completion NLL of each example, whether the batch is padded rows or one padding-free row."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logprobs = torch.log_softmax(model(**inputs, use_cache=False).logits.double(), -1)
    labels = batch["labels"][:, 1:]
    nll = -logprobs[:, :-1].gather(-1, labels.clamp(min=0)[..., None])[..., 0] * (labels != -100)
    if "position_ids" not in batch:
        return nll.sum(1).tolist()
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    # the token before each start predicts the next example's first token: TRL masks that label
    return [nll[0, a : b - 1].sum().item() for a, b in itertools.pairwise(starts)]


def test_padding_free_batches_keep_examples_apart(tmp_path, tiny_path):
    """Padding-free (one row, no padding) gives each example the loss it has in a padded batch, and the
    same batch loss; with a mask that lets examples see each other, the recipe is refused."""
    import transformers.masking_utils
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from peft_gpt2.models.loading import load_base

    model, tokenizer = load_base(tiny_path)
    recipe = make_recipe(tmp_path, "method=full", "train.padding_free=true")
    pairs = [TEMPLATES["short"].render(r) for r in addition_records(5)]
    pairs[1]["completion"] = "a longer answer than the others, so the padded batch has padding"
    trainer = toy_trainer(recipe, model, tokenizer, pairs, tmp_path)
    rows = [trainer.train_dataset[i] for i in range(len(pairs))]
    packed = trainer.data_collator(rows)
    padded = DataCollatorForLanguageModeling(tokenizer.pad_token_id)(rows)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))  # no padding at all
    model = trainer.model.eval()
    torch.testing.assert_close(per_example_nll(model, packed), per_example_nll(model, padded), rtol=1e-6, atol=1e-6)
    n = torch.tensor(int((padded["labels"][:, 1:] != -100).sum()))
    with torch.no_grad():
        losses = [trainer.compute_loss(model, dict(b), num_items_in_batch=n).item() for b in (packed, padded)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)

    # The same check refuses attention that crosses example boundaries (as without transformers 5's
    # packed-sequence mask).
    def no_packing_detected(position_ids):
        return None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.masking_utils, "find_packed_sequence_indices", no_packing_detected)
        model, tokenizer = load_base(tiny_path)
        with pytest.raises(PeftGpt2Error, match="padding_free.*attend to each other"):
            toy_trainer(recipe, model, tokenizer, pairs, tmp_path)


def test_shifted_mask_is_an_error(gpt2_tokenizer):
    pairs = [{"prompt": "The answer is wor", "completion": "ld"}]  # BPE merges "world" across the join
    with pytest.raises(PeftGpt2Error, match="train record 0: the tokenized prompt is not a prefix"):
        tokenize_pairs(pairs, gpt2_tokenizer, 64, "truncate", "train")


def test_overlong_examples_are_counted(gpt2_tokenizer):
    pairs = [
        {"prompt": "Q:\n", "completion": "short"},
        {"prompt": "Q:\n", "completion": "long " * 40},
        {"prompt": "word " * 40 + "\n", "completion": "x"},
    ]
    kept = tokenize_pairs(pairs, gpt2_tokenizer, 20, "truncate", "train")
    assert kept.pairs == pairs[:2] and (kept.truncated, kept.dropped) == (1, 1)
    for prompt, full in zip(kept.prompt_ids, kept.full_ids, strict=True):
        assert full[: len(prompt)] == prompt and len(full) > len(prompt)  # the completion mask starts after it
    kept = tokenize_pairs(pairs, gpt2_tokenizer, 20, "drop", "train")
    assert kept.pairs == pairs[:1] and (kept.truncated, kept.dropped) == (0, 2)


def test_rows_carry_the_ids_trl_would_make(tmp_path, tiny):
    """TRL skips tokenizing rows that come with input_ids (100,000 records: a minute of it): ours must be the ids and
    labels it makes of the bare pairs, incl. a truncated row and a completion that already ends in eos."""
    from peft_gpt2.data.instructions import instruction_rows

    model, tokenizer = tiny
    records = addition_records(20) + [
        {"instruction": "Count.", "input": "", "output": " ".join(str(i) for i in range(40))},
        {"instruction": "Stop.", "input": "", "output": "done<|endoftext|>"},
    ]
    recipe = make_recipe(
        tmp_path, "method=full", "data.split=[1.0, 0.0, 0.0]", records=records, data={"max_length": 32}
    )
    rows = instruction_rows(recipe.data, tokenizer).train
    assert len(rows) == 22 and all(len(r["input_ids"]) == len(r["completion_mask"]) <= 32 for r in rows)
    bare = [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    ours, theirs = (toy_trainer(recipe, model, tokenizer, x, tmp_path).train_dataset for x in (rows, bare))
    assert ours["input_ids"] == theirs["input_ids"] and ours["labels"] == theirs["labels"]


def test_a_tokenizer_that_adds_a_bos_leaves_tokenizing_to_trl(tmp_path, gpt2_tokenizer):
    """TRL tokenizes with the tokenizer's special tokens, our pairs without: such rows go to TRL bare, as before."""
    import copy

    from tokenizers.processors import TemplateProcessing

    from peft_gpt2.data.instructions import instruction_rows

    tokenizer = copy.deepcopy(gpt2_tokenizer)
    bos = TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tokenizer.eos_token_id)])
    tokenizer._tokenizer.post_processor = bos
    recipe = make_recipe(tmp_path)
    assert set(instruction_rows(recipe.data, gpt2_tokenizer).train[0]) == {
        "prompt",
        "completion",
        "input_ids",
        "completion_mask",
    }
    assert set(instruction_rows(recipe.data, tokenizer).train[0]) == {"prompt", "completion"}


def test_validation_loss_reports_its_progress_and_equals_one_pass(tmp_path, tiny, monkeypatch):
    """A long validation pass says how far it is (10,000 rows: minutes on a CPU); the parts add up to one pass."""
    from peft_gpt2.data.instructions import instruction_rows
    from peft_gpt2.inference.scoring import completion_loss
    from peft_gpt2.training import train as train_module

    model, tokenizer = tiny
    monkeypatch.setattr(train_module, "VALIDATION_PART_ROWS", 8)
    recipe = make_recipe(tmp_path, "data.split=[0.5, 0.5, 0.0]", records=addition_records(60))
    rows = instruction_rows(recipe.data, tokenizer).validation
    lines = []
    loss = train_module.validation_loss(recipe, model, tokenizer, rows, lambda line, flush: lines.append(line), "now")
    assert len(rows) == 30
    assert [line.split(" (")[0] for line in lines[:3]] == [f"validation loss now: {k} of 30 rows" for k in (8, 16, 24)]
    assert len(lines) == 4 and lines[3].startswith(f"validation loss now: {loss:.4f} on 30 rows (")
    assert loss == pytest.approx(completion_loss(model, tokenizer, rows, max_length=64).loss, rel=1e-6)


def test_lora_parameter_count_matches_formula_on_gpt2_small(tmp_path):
    """GPT-2 small, r=8 on c_attn: r * (768 + 2304) * 12 trainable parameters."""
    from peft import get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config())  # GPT-2 small's architecture, random weights
    recipe = make_recipe(tmp_path, "lora.r=8", "lora.target_modules=null")
    config = peft_config(recipe, model)
    assert config.target_modules == {"c_attn"} and config.fan_in_fan_out is True
    peft_model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == 8 * (768 + 2304) * 12 == 294_912
    assert all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)


def test_llama_targets_are_linear_not_conv1d(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=100,
        )
    )
    config = peft_config(make_recipe(tmp_path, "lora.target_modules=null"), model)
    assert config.target_modules == {"q_proj", "v_proj"} and config.fan_in_fan_out is False
    with pytest.raises(PeftGpt2Error, match="match no module"):
        peft_config(make_recipe(tmp_path, "lora.target_modules=[c_attn]"), model)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_toy_task_validation_loss_goes_down(tmp_path, method):
    run = train(make_recipe(tmp_path, f"method={method}"))
    p = run.provenance
    assert p.validation_loss_after < p.validation_loss_before - 1.5, p
    assert p.method == method and p.train_steps == 30
    files = {f.name for f in run.path.iterdir()}
    assert {"peft_gpt2.json", "recipe.yaml", "test.json", "train_log.json", "tokenizer.json"} <= files
    assert ("adapter_model.safetensors" if method == "lora" else "model.safetensors") in files
    assert not any(f.endswith(".bin") for f in files)
    assert len(json.loads((run.path / "test.json").read_text())) == p.data["test"] > 0
    if method == "lora":
        assert p.trainable_parameters < p.total_parameters / 10
    else:
        assert p.trainable_parameters == p.total_parameters


@pytest.mark.slow
def test_adapter_loads_with_plain_peft_and_gives_identical_logits(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = train(make_recipe(tmp_path, "train.max_steps=5"))
    config = json.loads((run.path / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])  # a plain folder
    loaded = PeftModel.from_pretrained(base, run.path).eval()
    ids = run.tokenizer(["### Instruction:\nAdd the two numbers.\n\n### Response:\n"], return_tensors="pt")
    with torch.no_grad():
        expected = run.model(**ids).logits
        got = loaded(**ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    lora_b = [p for n, p in loaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # training moved the adapter off its zero init


@pytest.mark.slow
def test_lora_8bit_loads_and_trains_on_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    run = train(make_recipe(tmp_path, "method=lora-8bit", "train.max_steps=15"))
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in run.model.modules())
    p = run.provenance
    assert p.method == "lora-8bit"
    assert p.validation_loss_after < p.validation_loss_before
    assert (run.path / "adapter_model.safetensors").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d.unlink(), "does not exist"),
        (lambda d: d.write_text('[{"instruction": "a", "output": "b"},\n{"instruction": }]'), "line 2"),
        (lambda d: d.write_text('[{"instruction": "a", "output": "b"}, {"output": "c"}]'), "record 1: missing"),
        (lambda d: d.write_text('[{"instruction": "a", "output": ""}]'), "no usable records"),
    ],
)
def test_bad_input_fails_before_loading_and_writes_nothing(tmp_path, capsys, setup, message):
    make_recipe(tmp_path)
    setup(tmp_path / "data.json")
    assert main(["train", str(tmp_path / "toy.yaml")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())


def test_unknown_key_fails_with_suggestion(tmp_path, capsys):
    make_recipe(tmp_path)
    assert main(["train", str(tmp_path / "toy.yaml"), "--set", "train.max_step=3"]) == 2
    assert "did you mean train.max_steps?" in capsys.readouterr().err
    assert not (tmp_path / "adapters").exists()


def test_existing_output_is_refused(tmp_path):
    recipe = make_recipe(tmp_path)
    (tmp_path / "adapters" / "toy").mkdir(parents=True)
    (tmp_path / "adapters" / "toy" / "keep.txt").write_text("mine")
    with pytest.raises(PeftGpt2Error, match="already exists.*--overwrite"):
        train(recipe)
    assert (tmp_path / "adapters" / "toy" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_text_corpus_trains_on_every_token_and_validates_by_position(tmp_path):
    book = "\n\n".join(f"Holmes looked at clue number {i}. Watson wrote it down in his notebook." for i in range(120))
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text(book)
    (tmp_path / "books" / "b.txt").write_text(book.replace("Holmes", "Lestrade"))
    corpus = {"format": "text", "path": str(tmp_path / "books"), "max_length": 32, "split": [0.9, 0.1, 0.0]}
    run = train(make_recipe(tmp_path, "train.max_steps=20", data=corpus))
    p = run.provenance
    assert p.data_format == "text" and p.data["documents"] == 2
    assert p.data["train_blocks"] > 20 and p.data["validation_blocks"] >= 2
    assert p.validation_loss_after < p.validation_loss_before - 1.0, p
    assert not (run.path / "test.json").exists()


def test_a_value_transformers_refuses_fails_before_loading(tmp_path, capsys, monkeypatch):
    def no_model(recipe):
        raise AssertionError("the model was loaded before the recipe's train section was checked")

    monkeypatch.setattr("peft_gpt2.training.train.load_model", no_model)
    make_recipe(tmp_path)
    assert main(["train", str(tmp_path / "toy.yaml"), "--set", "train.lr_scheduler_type=cosin"]) == 2
    err = capsys.readouterr().err
    assert "cosin is not a valid SchedulerType" in err and "Traceback" not in err
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())


def test_optimizer_keys_of_sft_config_reach_the_optimizer(tmp_path, tiny):
    model, tokenizer = tiny
    recipe = make_recipe(tmp_path, "train.optim=adamw_torch", "train.adam_beta2=0.99", "train.weight_decay=0.1")
    pairs = [TEMPLATES["short"].render(r) for r in addition_records(4)]
    optimizer = toy_trainer(recipe, model, tokenizer, pairs, tmp_path).create_optimizer()
    assert type(optimizer).__name__ == "AdamW" and optimizer.defaults["betas"] == (0.9, 0.99)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.1}  # none on biases and norms


def test_fp16_on_cpu_fails_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    make_recipe(tmp_path)
    assert main(["train", str(tmp_path / "toy.yaml"), "--set", "train.precision=fp16"]) == 2
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "adapters").exists()


def test_8bit_without_bitsandbytes_names_the_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    make_recipe(tmp_path)
    assert main(["train", str(tmp_path / "toy.yaml"), "--set", "method=lora-8bit"]) == 2
    assert "pip install 'peft-gpt2[8bit]'" in capsys.readouterr().err
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").iterdir())


def test_allocator_settings_of_the_user_are_left_alone(monkeypatch):
    from peft_gpt2.training.trainer import keep_freed_memory

    for key in ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_ARENA_MAX"):
        with monkeypatch.context() as m:
            m.setenv(key, "x")
            assert keep_freed_memory() is False


def test_provenance_records_the_training_tokens_seen(tmp_path):
    """Equal-budget comparisons need the tokens trained on: the Trainer's count of non-padding tokens."""
    from conftest import train_toy_adapter

    from peft_gpt2.run_folder import Provenance

    record = Provenance.read(train_toy_adapter(tmp_path, "A", steps=2, records=16))
    assert record.train_steps == 2 and 0 < record.tokens_seen <= 2 * 8 * 48  # 2 steps x batch 8 x max_length


@pytest.mark.slow
def test_two_runs_into_one_new_name_one_wins_the_other_is_refused(tmp_path):
    """Both start before either has published: the first rename wins, the second is told, nothing is replaced."""
    import os
    import subprocess
    import sys

    from conftest import TOY_DATA

    (tmp_path / "data.json").write_text(json.dumps(TOY_DATA["A"]))
    recipe = write_recipe(tmp_path / "race.yaml", train={"max_steps": 6})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "peft_gpt2", "train", str(recipe)]
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((run.wait(timeout=600), run.stderr.read()) for run in runs)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "already exists" in outcomes[1][1] or "written by another run" in outcomes[1][1]
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["race"]  # one folder, no leftovers
    assert (tmp_path / "adapters" / "race" / "adapter_model.safetensors").exists()


def test_publishing_without_overwrite_never_replaces_a_finished_folder(tmp_path):
    from peft_gpt2.run_folder import publish_folder

    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "weights").write_text("first")
    (tmp_path / "out").mkdir()
    publish_folder(tmp_path / "first", tmp_path / "out", overwrite=False)  # an empty leftover folder is replaced
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "weights").write_text("second")
    with pytest.raises(PeftGpt2Error, match="written by another run"):
        publish_folder(tmp_path / "second", tmp_path / "out", overwrite=False)
    assert (tmp_path / "out" / "weights").read_text() == "first"
    publish_folder(tmp_path / "second", tmp_path / "out")  # --overwrite replaces it
    assert (tmp_path / "out" / "weights").read_text() == "second"
