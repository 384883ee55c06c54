r"""Multiple-choice scoring, the way lm-evaluation-harness scores its ``multiple_choice`` tasks, in-process.

    peft-gpt2 eval --model smollm2-135m --data data/sample_choices.jsonl

Records are ``{"question": str, "choices": [str, ...], "answer": int}``. Each choice is scored by the summed
log-probability of its tokens given the question (teacher-forced, no generation), and the item counts as right
when the gold choice scores highest: ``acc``; ``acc_norm`` divides each choice's log-probability by its length in
characters first. Both follow lm_eval 0.4's definitions exactly, so ``recipes/lm_eval/peft_gpt2_choices.yaml``
run by lm_eval against ``peft-gpt2 serve`` gives the same numbers:

- the continuation is ``" " + choice`` (lm_eval's default ``target_delimiter``);
- trailing whitespace of the question moves to the continuation, and the continuation's tokens are
  ``tokens(question + continuation)[len(tokens(question)):]`` (lm_eval's ``_encode_pair``; no special tokens);
- a row longer than ``max_length`` loses tokens from the left of the question;
- ties go to the first choice (``numpy.argmax``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.metrics.table import MULTIPLE_CHOICE, scores_from_items, select
from peft_gpt2.evaluation.result import EvalResult
from peft_gpt2.inference.scoring import token_loss
from peft_gpt2.models.loading import max_positions

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TASK = "multiple_choice"
TARGET_DELIMITER = " "  # lm_eval's default target_delimiter, between the question and each choice


def is_choices(records: list) -> bool:
    """Whether `records` are multiple-choice records (their first has ``choices``)."""
    return bool(records) and isinstance(records[0], dict) and "choices" in records[0]


def choice_records(raw: list, source: str) -> list[dict]:
    """Check multiple-choice records and return them as ``{"question", "choices", "answer"}`` dicts.

    Raises:
        `PeftGpt2Error`: Naming the record and field: a question that is not a non-empty string, fewer than two
            choices or one that is not a non-empty string, or an ``answer`` that is not an index into ``choices``.
    """
    records = []
    for i, record in enumerate(raw):
        where = f"{source}: record {i}"
        if not isinstance(record, dict):
            raise PeftGpt2Error(f"{where}: expected an object with 'question', 'choices' and 'answer'")
        question, choices, answer = record.get("question"), record.get("choices"), record.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise PeftGpt2Error(f"{where}: field 'question' must be a non-empty string")
        if not isinstance(choices, list) or len(choices) < 2:
            raise PeftGpt2Error(f"{where}: field 'choices' must be a list of at least two strings")
        if not all(isinstance(c, str) and c.strip() for c in choices):
            raise PeftGpt2Error(f"{where}: field 'choices' must hold non-empty strings only")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise PeftGpt2Error(
                f"{where}: field 'answer' must be the index (0 to {len(choices) - 1}) of the right choice, "
                f"got {answer!r}"
            )
        records.append({"question": question, "choices": choices, "answer": answer})
    return records


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm_eval's ``_encode_pair`` for a causal model: the context's trailing whitespace moves to the continuation,
    whose tokens are those of the whole text past the context's (so a BPE merge across the join is scored as the
    whole text tokenizes)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids) :]


def choice_loglikelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    *,
    batch_size: int = 16,
    max_length: int = 2047,
) -> list[list[float]]:
    """Per record, the summed log-probability of each choice's tokens given the question, in choice order.

    Rows are cut from the left to ``max_length`` tokens (lm_eval's API models default: 2048 minus the one token
    they generate; capped at the model's positions), then batched and right-padded by
    `peft_gpt2.inference.scoring.token_loss`.
    """
    max_length = min(max_length, max_positions(model.config) or max_length)
    rows, starts, owners = [], [], []
    for i, record in enumerate(records):
        for j, choice in enumerate(record["choices"]):
            context, continuation = encode_pair(tokenizer, record["question"], TARGET_DELIMITER + choice)
            if not continuation or len(continuation) >= max_length:
                raise PeftGpt2Error(
                    f"record {i}: choice {j} is {len(continuation)} tokens; it must be 1 to {max_length - 1}"
                )
            row = (context + continuation)[-max_length:]
            rows.append(row)
            starts.append(len(row) - len(continuation))
            owners.append(i)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    nll = token_loss(model, rows, starts, pad_token_id=pad, batch_size=batch_size).nll_per_row
    out: list[list[float]] = [[] for _ in records]
    for owner, value in zip(owners, nll, strict=True):
        out[owner].append(-value)
    return out


def score_choices(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    *,
    batch_size: int = 16,
    max_length: int = 2047,
) -> EvalResult:
    """Score multiple-choice records: ``evaluate_model``'s result for this task.

    Returns:
        `EvalResult`: ``metrics`` (``acc``, ``acc_norm``, ``examples``, ``loss_time_s``), ``answers`` (per record: the
        question, choices, gold ``answer``, ``loglikelihoods``, ``pred``, ``pred_norm``) and ``items`` (``acc``,
        ``acc_norm`` per record, 0 or 1, for `peft_gpt2.evaluation.uncertainty`'s bootstrap; their means are the
        metrics).
    """
    import time

    if not records:
        raise PeftGpt2Error("no records to evaluate")
    start = time.perf_counter()
    lls = choice_loglikelihoods(model, tokenizer, records, batch_size=batch_size, max_length=max_length)
    elapsed = time.perf_counter() - start
    items: dict[str, list] = {"acc": [], "acc_norm": []}
    answers = []
    for record, ll in zip(records, lls, strict=True):
        pred = int(np.argmax(ll))
        pred_norm = int(np.argmax([v / len(c) for v, c in zip(ll, record["choices"], strict=True)]))  # characters
        items["acc"].append(float(pred == record["answer"]))
        items["acc_norm"].append(float(pred_norm == record["answer"]))
        answers.append({**record, "loglikelihoods": ll, "pred": pred, "pred_norm": pred_norm})
    metrics = scores_from_items(items, select(MULTIPLE_CHOICE))
    metrics.update(examples=len(records), loss_time_s=elapsed)
    return EvalResult(metrics, answers, items)


__all__ = ["TASK", "choice_loglikelihoods", "choice_records", "encode_pair", "is_choices", "score_choices"]
