"""What the trainer sees: tokenized prompt/completion pairs or text blocks, checked before any model loads.

    python -c "from peft_gpt2.config import load_recipe; from peft_gpt2.models import load_tokenizer; \
from peft_gpt2.training_data import training_data; r = load_recipe('recipes/quickstart.yaml'); \
print(training_data(r, load_tokenizer(r.model.name)).stats)"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from peft_gpt2.config import Recipe
from peft_gpt2.data import Splits, prepare_splits
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.prompts import TEMPLATES

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def tokenized_pairs(
    pairs: list[dict], tokenizer: PreTrainedTokenizerBase, max_length: int, overlong: str, split: str
) -> tuple[list[dict], dict]:
    """Check the completion mask will be exact and apply the over-long policy; count what it did.

    TRL finds the completion by tokenizing the prompt alone and prompt+completion; if BPE merges across
    the join it only logs a warning and trains on a shifted mask, so here that is an error.
    """
    prompts = tokenizer([p["prompt"] for p in pairs], add_special_tokens=False)["input_ids"]
    full = tokenizer([p["prompt"] + p["completion"] for p in pairs], add_special_tokens=False)["input_ids"]
    kept, truncated, dropped = [], 0, 0
    for i, (pair, p_ids, f_ids) in enumerate(zip(pairs, prompts, full, strict=True)):
        if f_ids[: len(p_ids)] != p_ids:
            raise PeftGpt2Error(
                f"{split} record {i}: the tokenized prompt is not a prefix of prompt+completion, so the loss mask "
                f"would be shifted; check the template and the record's output {pair['completion'][:40]!r}"
            )
        length = len(f_ids) + 1  # + eos
        if length <= max_length:
            kept.append(pair)
        elif overlong == "drop" or len(p_ids) >= max_length:  # a prompt alone that fills max_length: no loss
            dropped += 1
        else:
            truncated += 1
            kept.append(pair)
    return kept, {f"{split}_overlong_truncated": truncated, f"{split}_overlong_dropped": dropped}


@dataclass
class TrainingData:
    """Rows for the trainer, how to score the validation split, and the held-out test records."""

    train: list[dict]
    validation: list[dict]
    validation_loss: Callable[[PreTrainedModel, int], dict] | None
    test: list[dict]
    stats: dict


def training_data(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> TrainingData:
    """Load, clean, split and check the recipe's data; needs only the tokenizer, never the model.

    Instructions become ``{"prompt", "completion"}`` pairs (loss on the completion and its eos); a text corpus
    becomes eos-separated blocks of ``data.max_length`` tokens (loss on every token), with validation text
    taken from the end of each document rather than from random blocks.
    """
    from peft_gpt2.evaluation import completion_loss, token_loss

    d = recipe.data
    if d.format == "text":
        from peft_gpt2.corpus import corpus_blocks, load_corpus, split_by_position

        train_docs, val_docs = split_by_position(load_corpus(d.path), d.split[1])
        train_blocks, train_stats = corpus_blocks(train_docs, tokenizer, d.max_length)
        val_blocks, val_stats = corpus_blocks(val_docs, tokenizer, d.max_length) if val_docs else ([], {})
        if not train_blocks:
            raise PeftGpt2Error(f"{d.path}: fewer than data.max_length={d.max_length} tokens of training text")
        stats = {
            "documents": len(train_docs),
            **{f"train_{k}": v for k, v in train_stats.items()},
            **{f"validation_{k}": v for k, v in val_stats.items()},
        }

        def score_blocks(model: PreTrainedModel, batch_size: int) -> dict:
            pad = tokenizer.pad_token_id
            return token_loss(model, val_blocks, [0] * len(val_blocks), pad_token_id=pad, batch_size=batch_size)

        return TrainingData(
            [{"input_ids": b} for b in train_blocks],
            [{"input_ids": b} for b in val_blocks],
            score_blocks if val_blocks else None,
            [],
            stats,
        )

    splits: Splits = prepare_splits(d.path, limit=d.limit, fraction=d.fraction, fractions=d.split, seed=d.seed)
    template = TEMPLATES[d.template]
    train_pairs, stats = tokenized_pairs(
        [template.render(r) for r in splits.train], tokenizer, d.max_length, d.overlong, "train"
    )
    val_pairs, val_stats = tokenized_pairs(
        [template.render(r) for r in splits.validation], tokenizer, d.max_length, d.overlong, "validation"
    )
    if not train_pairs:
        raise PeftGpt2Error(f"{d.path}: every training example is longer than data.max_length={d.max_length}")

    def score_pairs(model: PreTrainedModel, batch_size: int) -> dict:
        return completion_loss(model, tokenizer, val_pairs, batch_size=batch_size, max_length=d.max_length)

    return TrainingData(
        train_pairs, val_pairs, score_pairs if val_pairs else None, splits.test, {**splits.stats, **stats, **val_stats}
    )
