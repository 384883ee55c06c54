"""Teacher-forced scoring: how likely a model finds given tokens (perplexity, token accuracy), no generation.

    python -c "from peft_gpt2.models.loading import load_base; from peft_gpt2.inference.scoring import \
completion_loss; m, t = load_base('tiny-gpt2'); \
print(completion_loss(m, t, [{'prompt': 'Q: hi\\n', 'completion': 'hello'}]))"

The loss is over the same tokens training learns (completion + eos, never prompt or padding), summed per token
over the whole set, so the perplexity does not depend on batch size or on how rows of different lengths are
grouped. Training (validation loss) and evaluation both score through here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from peft_gpt2.data.templates import tokenize_pairs
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.loading import max_positions

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class TokenLoss:
    """Teacher-forced loss over the scored tokens: sums over the set, the same three sums per row (in input order; 0
    for a dropped row, for bootstrapping over items), and how many rows the length limit cut or dropped."""

    nll_sum: float
    tokens: int
    correct: int  # argmax hits
    nll_per_row: list[float]
    tokens_per_row: list[int]
    correct_per_row: list[int]
    truncated: int = 0
    dropped: int = 0

    @property
    def loss(self) -> float:
        """Mean NLL per scored token: the number a trainer's eval loss is."""
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf

    @property
    def token_accuracy(self) -> float:
        return self.correct / self.tokens


def completion_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[dict],
    *,
    batch_size: int = 16,
    max_length: int = 1024,
) -> TokenLoss:
    """Teacher-forced NLL of each completion and its eos given the prompt, summed per token over all pairs.

    Sums, not per-batch means, so perplexity is ``exp(total NLL / total completion tokens)`` for any batching.
    Labels are masked by position (prompt length, right padding), never by token id: GPT-2's pad is its eos,
    and the eos that ends each completion is scored as in training.

    Args:
        model (`PreTrainedModel` or `PeftModel`): A causal LM; run in eval mode (restored afterwards).
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer, with a pad token and an eos token.
        pairs (`list[dict]`): ``{"prompt", "completion"}`` as `Template.render` makes them, or tokenized
            conversations ``{"input_ids", "assistant_masks"}`` (`peft_gpt2.data.conversations`): only the tokens their
            mask marks (assistant turns and their end-of-turn) are scored.
        batch_size (`int`, defaults to 16): Sequences per forward pass, grouped by length to cut padding.
        max_length (`int`, defaults to 1024): Tokens kept per sequence (from the start; capped at the model's
            positions). A pair whose prompt alone fills it is dropped, as in training.

    Returns:
        `TokenLoss`: over the scored completion + eos tokens, with ``truncated`` and ``dropped`` pair counts.

    Raises:
        `PeftGpt2Error`: If there are no pairs, none is left to score, or BPE merges a prompt into its completion.
    """
    if not pairs:
        raise PeftGpt2Error("no pairs to score")
    if batch_size < 1:
        raise PeftGpt2Error(f"batch_size={batch_size} must be >= 1")
    max_length = min(max_length, max_positions(model.config) or max_length)
    if "assistant_masks" in pairs[0]:  # tokenized conversations (peft_gpt2.data.conversations): scored by their masks
        rows, masks = [r["input_ids"][:max_length] for r in pairs], [r["assistant_masks"][:max_length] for r in pairs]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        result = token_loss(model, rows, [0] * len(rows), pad_token_id=pad, batch_size=batch_size, masks=masks)
        cut = [len(r["input_ids"]) > max_length for r in pairs]  # dropped: the cut left none of its masked tokens
        dropped = sum(c and 1 not in m for c, m in zip(cut, masks, strict=True))
        return replace(result, truncated=sum(cut) - dropped, dropped=dropped)
    kept = tokenize_pairs(pairs, tokenizer, max_length, "truncate", "eval")
    if not kept.pairs:
        raise PeftGpt2Error(f"every prompt fills max_length={max_length}: no completion tokens to score")
    rows = [(f + [tokenizer.eos_token_id])[:max_length] for f in kept.full_ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    result = token_loss(model, rows, [len(p) for p in kept.prompt_ids], pad_token_id=pad, batch_size=batch_size)
    return replace(_in_input_order(result, kept.pairs, pairs), truncated=kept.truncated, dropped=kept.dropped)


def _in_input_order(result: TokenLoss, kept: list[dict], pairs: list[dict]) -> TokenLoss:
    """``result``'s per-row sums, which follow the ``kept`` pairs, moved to the pairs' input positions (0 for a
    dropped pair)."""
    position = {id(pair): i for i, pair in enumerate(pairs)}

    def placed(per_row: list, empty: float | int) -> list:
        values = [empty] * len(pairs)
        for pair, value in zip(kept, per_row, strict=True):
            values[position[id(pair)]] = value
        return values

    return replace(
        result,
        nll_per_row=placed(result.nll_per_row, 0.0),
        tokens_per_row=placed(result.tokens_per_row, 0),
        correct_per_row=placed(result.correct_per_row, 0),
    )


def unscore(labels, starts: list[int], masks: list[list[int]] | None) -> None:
    """Set ``labels`` to -100, row by row, before ``starts`` and (with ``masks``) where the mask is 0."""
    import torch

    for row, start in enumerate(starts):
        labels[row, :start] = -100
        if masks is not None:
            labels[row, : len(masks[row])][torch.tensor(masks[row], device=labels.device) == 0] = -100


def _score_batch(model, rows: list[list[int]], starts: list[int], masks: list[list[int]] | None, pad_token_id: int):
    """One right-padded batch: each scored position's NLL and argmax hit, row-major, and how many per row."""
    import torch
    import torch.nn.functional as F

    width = len(rows[0])  # the longest: rows come longest first
    ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], device=model.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
    labels = ids.masked_fill(mask == 0, -100)
    unscore(labels, starts, masks)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits
    logits = logits[:, logits.shape[1] - width :]  # prompt tuning prepends its virtual tokens' logits
    labels = labels[:, 1:]
    keep = labels != -100  # upcast only the scored positions: full float32 logits can be gigabytes
    scored = logits[:, :-1][keep].float()
    targets = labels[keep]
    losses = F.cross_entropy(scored, targets, reduction="none")
    return losses, scored.argmax(-1) == targets, keep.sum(1).tolist()


def token_loss(
    model: PreTrainedModel,
    rows: list[list[int]],
    starts: list[int],
    *,
    pad_token_id: int,
    batch_size: int = 16,
    masks: list[list[int]] | None = None,
) -> TokenLoss:
    """Summed next-token NLL and argmax hits over the labelled positions of token rows.

    Row ``i`` is scored from its token ``starts[i]`` on (0 for plain text: every token after the first; the
    prompt length for a prompt+completion row), and with ``masks`` only where ``masks[i]`` is 1 (a conversation's
    assistant tokens). Padding is masked by position, never by token id.

    Returns:
        `TokenLoss`: the sums, and the three sums per row in input order (the totals are their sums).
    """
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    nll, tokens, correct = 0.0, 0, 0
    row_nll, row_tokens, row_correct = [0.0] * len(rows), [0] * len(rows), [0] * len(rows)
    was_training = model.training
    model.eval()  # dropout off: the same model must score the same
    try:
        for begin in range(0, len(order), batch_size):
            idx = order[begin : begin + batch_size]
            batch_masks = [masks[i] for i in idx] if masks is not None else None
            losses, hits, counts = _score_batch(
                model, [rows[i] for i in idx], [starts[i] for i in idx], batch_masks, pad_token_id
            )
            nll += losses.sum().item()
            correct += int(hits.sum())
            tokens += sum(counts)
            for i, part_nll, part_hits, count in zip(
                idx, losses.split(counts), hits.split(counts), counts, strict=True
            ):
                row_nll[i], row_correct[i], row_tokens[i] = part_nll.sum().item(), int(part_hits.sum()), count
    finally:
        model.train(was_training)
    if tokens == 0:
        raise PeftGpt2Error("no labelled tokens to score")
    return TokenLoss(nll, tokens, correct, row_nll, row_tokens, row_correct)
