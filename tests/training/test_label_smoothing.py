"""Label smoothing scores each logit against the NEXT token, for every method (the CPU loss path is ours)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TOY_DATA, write_recipe


@pytest.mark.parametrize("method", ["lora", "prefix_tuning", "prompt_tuning"])
def test_smoothed_training_loss_is_next_token_cross_entropy(tmp_path, method):
    """transformers shifts labels only for class names it knows as causal LMs; a prompt-learning PEFT model hid
    it, so prefix tuning trained to repeat its input (training loss fell, held-out loss rose)."""
    import torch
    import torch.nn.functional as F

    from peft_gpt2.config.recipe import load_recipe
    from peft_gpt2.models.loading import load_base, load_tokenizer
    from peft_gpt2.training.train import training_rows
    from peft_gpt2.training.trainer import make_trainer, resolve_precision, trainer_args

    (tmp_path / "data.json").write_text(json.dumps(TOY_DATA["A"]))
    recipe = load_recipe(
        write_recipe(tmp_path / "r.yaml", method=method, lora=None, train={"label_smoothing_factor": 0.1})
    )
    tokenizer = load_tokenizer(recipe.model.name)
    rows = training_rows(recipe.data, tokenizer)
    args = trainer_args(recipe, Path(tmp_path / "ckpt"), resolve_precision("fp32"))
    model, _ = load_base(recipe.model.name)
    trainer = make_trainer(recipe, model, tokenizer, args, rows.train, rows.validation)
    batch = {k: v.to(trainer.model.device) for k, v in next(iter(trainer.get_train_dataloader())).items()}
    trainer.model.eval()
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, dict(batch)).item()
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -batch["labels"].shape[1] :]  # prompt tuning: its virtual tokens' logits come first
    expected = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100, label_smoothing=0.1
    ).item()
    assert ours == pytest.approx(expected, rel=1e-5)
