r"""Score a model (base, LoRA adapter or merged) on held-out records: generated answers and completion perplexity.

    python -c "from peft_gpt2.models.loading import load_base; from peft_gpt2.evaluation.evaluate import \
load_eval_records, evaluate_model; m, t = load_base('tiny-gpt2'); \
r, task = load_eval_records('data/sherlock_qa.json'); print(task, evaluate_model(m, t, r[:4]).metrics)"

Two views of one set: greedy answers scored against the references (F1, exact match, BLEU, ROUGE-L), and a
teacher-forced pass that measures how likely the model finds the reference completion. The loss is over the
same tokens training learns (completion + eos, never prompt or padding), summed per token over the whole
set, so the perplexity does not depend on batch size or on how answers of different lengths are grouped.
Each record is scored once; its share of every metric is kept (``items``), the set's values follow from those
(`peft_gpt2.evaluation.metrics.table`), and ``peft_gpt2.evaluation.uncertainty`` resamples them.
Conversations (``messages`` / ``conversations`` records, a chat run's ``test.json``) are scored on their last
assistant turn through the chat template instead of a prompt template (``peft_gpt2.evaluation.chat_eval``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from peft_gpt2.data.instructions import validate_records
from peft_gpt2.data.sources import read_source
from peft_gpt2.data.templates import DEFAULT_TEMPLATE, get_template
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.evaluation.chat_eval import CHAT_KEYS, answer_chats, chat_loss_rows, chat_records, is_chat
from peft_gpt2.evaluation.metrics.table import item_scores, scores_from_items
from peft_gpt2.evaluation.multiple_choice import TASK as CHOICE_TASK
from peft_gpt2.evaluation.multiple_choice import choice_records, is_choices, score_choices
from peft_gpt2.evaluation.result import EvalResult
from peft_gpt2.inference.generation import generate
from peft_gpt2.inference.scoring import TokenLoss, completion_loss
from peft_gpt2.inference.settings import GenerationSettings

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TASK_FIELDS: dict[str, tuple[str, ...]] = {"qa": ("question", "answer"), "instructions": ("instruction", "output")}
"""Fields each task's records must have; task detection looks for the first of each."""
# chat: the last assistant turn; multiple_choice: peft_gpt2.evaluation.multiple_choice
TASKS = (*TASK_FIELDS, "chat", CHOICE_TASK)


def _detect_task(first: object, source: str) -> str:
    keys = sorted(first) if isinstance(first, dict) else []
    if any(key in keys for key in CHAT_KEYS):
        return "chat"
    if "choices" in keys:
        return CHOICE_TASK
    for task, fields in TASK_FIELDS.items():
        if fields[0] in keys:
            return task
    raise PeftGpt2Error(
        f"{source}: record 0: cannot tell the task: expected {{'question', 'answer'}} (qa), "
        f"{{'instruction', 'input', 'output'}} (instructions), {{'messages'}} / {{'conversations'}} (chat) or "
        f"{{'question', 'choices', 'answer'}} (multiple_choice), got "
        + (f"keys {keys[:8]}" if isinstance(first, dict) else f"a {type(first).__name__}")
    )


def _qa_as_instructions(raw: list, source: str) -> list[dict]:
    """QA records checked (errors name the record and field) and rewritten as Alpaca records."""
    for i, record in enumerate(raw):
        if not isinstance(record, dict):
            raise PeftGpt2Error(f"{source}: record {i}: expected an object with 'question' and 'answer'")
        for key in TASK_FIELDS["qa"]:
            if key not in record:
                hint = "; it looks like an instructions file (task='instructions')" if "instruction" in record else ""
                raise PeftGpt2Error(f"{source}: record {i}: missing field {key!r} (has {sorted(record)}){hint}")
            if not isinstance(record[key], str):
                raise PeftGpt2Error(
                    f"{source}: record {i}: field {key!r} must be a string, got {type(record[key]).__name__}"
                )
    return [{"instruction": r["question"], "input": "", "output": r["answer"]} for r in raw]


def load_eval_records(source: str, task: str | None = None) -> tuple[list[dict], str]:
    """Read an evaluation set as Alpaca-shaped records, so generation and loss see one shape whatever the file.

    Args:
        source (`str`): A JSON or JSONL file (or anything `peft_gpt2.data.sources.read_source` reads) of QA records
            (``question``, ``answer``), Alpaca records (``instruction``, ``input``, ``output``) or conversations
            (OpenAI ``messages`` / ShareGPT ``conversations``, as ``data.format: messages`` reads them), or
            multiple-choice records (``question``, ``choices``, ``answer``: kept as they are).
        task (`str`, *optional*): ``"qa"``, ``"instructions"``, ``"chat"`` or ``"multiple_choice"``; detected from
            the first record's keys if unset.

    Returns:
        `tuple[list[dict], str]`: Records with ``instruction``, ``input``, ``output`` (QA: the question, ``""``,
        the answer; chat: the last user turn, ``""``, the last assistant turn, plus the ``messages``), and the task.

    Raises:
        `PeftGpt2Error`: If the file is unreadable or empty, or a record (named by index) lacks a field, holds a
        non-string, or has an empty question/instruction or answer/output.
    """
    if task is not None and task not in TASKS:
        raise PeftGpt2Error(f"unknown evaluation task {task!r}; choose one of: {', '.join(TASKS)}")
    if source.endswith(".csv"):  # E2E: one record per MR with all its references
        from peft_gpt2.data.data_to_text import as_eval_records, load_mrs

        return as_eval_records(load_mrs(source)), "data_to_text"
    raw = read_source(source)
    if not raw:
        raise PeftGpt2Error(f"{source}: no records to evaluate")
    task = task or _detect_task(raw[0], source)
    if task == "chat":
        return chat_records(raw, source), task
    if task == CHOICE_TASK:
        return choice_records(raw, source), task
    if task == "qa":
        raw = _qa_as_instructions(raw, source)
    records = validate_records(raw, source)
    for i, (record, original) in enumerate(zip(records, raw, strict=True)):
        if "references" in original:  # a data-to-text test split: every reference of the MR
            refs = original["references"]
            if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
                raise PeftGpt2Error(f"{source}: record {i}: field 'references' must be a list of non-empty strings")
            record["references"] = refs
    names = dict(zip(TASK_FIELDS["instructions"], TASK_FIELDS[task], strict=True))
    for i, record in enumerate(records):
        for key, name in names.items():
            if not record[key].strip():  # an empty reference scores 0 or 1 by accident, never meaningfully
                raise PeftGpt2Error(f"{source}: record {i}: field {name!r} is empty")
    return records, task


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    *,
    template: str = DEFAULT_TEMPLATE,
    settings: GenerationSettings | None = None,
    batch_size: int = 16,
    max_length: int = 1024,
) -> EvalResult:
    """Generate an answer per record and score it, plus completion perplexity: the one evaluation path.

    Training-time evaluation and model comparison call this, so their numbers are comparable. Multiple-choice
    records are scored instead by `peft_gpt2.evaluation.multiple_choice.score_choices` (``acc``, ``acc_norm``; no
    generation).

    Args:
        model (`PreTrainedModel` or `PeftModel`): The model to score, unmerged adapter or not.
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer, with a pad token.
        records (`list[dict]`): Alpaca-shaped records (`load_eval_records`).
        template (`str`, defaults to ``"alpaca"``): A `peft_gpt2.data.templates.TEMPLATES` name, as in training;
            conversations are rendered with the tokenizer's chat template instead (`peft_gpt2.evaluation.chat_eval`).
        settings (`GenerationSettings`, *optional*): Decoding; greedy with ``batch_size`` by default. The
            template's stop strings are always added, so answers end where the template's next section starts.
        batch_size (`int`, defaults to 16): Sequences per forward pass of the loss (and of generation by default).
        max_length (`int`, defaults to 1024): Tokens kept per sequence for the loss.

    Returns:
        `EvalResult`: ``metrics`` (`text_scores`' metrics, and loss, completion_tokens, examples,
        generation_time_s, loss_time_s, mean_answer_words, truncated, dropped), ``answers`` (``instruction``,
        ``input``, ``expected``, ``generated``, ``f1`` per record) and ``items`` (`text_scores`' columns plus the
        teacher-forced pass's ``nll``, ``tokens``, ``correct``).
    """
    if not records:
        raise PeftGpt2Error("no records to evaluate")
    if is_choices(records):  # scored by each choice's log-likelihood, as lm_eval does; nothing is generated
        return score_choices(model, tokenizer, records, batch_size=batch_size, max_length=max_length)
    # conversations are scored on their last assistant turn (its content + end-of-turn), given the turns before it
    chat = is_chat(records)
    pairs = chat_loss_rows(tokenizer, records) if chat else [get_template(template).render(r) for r in records]
    expected = [r["output"].strip() for r in records]  # what Template.render makes the completion

    settings = settings or GenerationSettings(batch_size=batch_size)
    start = time.perf_counter()
    generated = answer_records(model, tokenizer, records, template, settings)
    generation_time = time.perf_counter() - start
    start = time.perf_counter()
    loss = completion_loss(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length)
    loss_time = time.perf_counter() - start

    metrics, items = text_scores(records, generated, expected)
    items.update(nll=loss.nll_per_row, tokens=loss.tokens_per_row, correct=loss.correct_per_row)
    metrics.update(_loss_metrics(loss), examples=len(records), generation_time_s=generation_time)
    metrics.update(loss_time_s=loss_time, mean_answer_words=sum(len(g.split()) for g in generated) / len(generated))
    answers = [
        {"instruction": r["instruction"], "input": r.get("input") or "", "expected": e, "generated": g, "f1": f}
        for r, e, g, f in zip(records, expected, generated, items["f1"], strict=True)
    ]
    return EvalResult(metrics, answers, items)


def text_scores(records: list[dict], generated: list[str], expected: list[str]) -> tuple[dict, dict[str, list]]:
    """``(metrics, items)``: each answer scored once against its reference (`item_scores`), the set's values from
    the items (`scores_from_items`).

    Records with ``references`` (a data-to-text test split, an E2E CSV) are also scored against all of them:
    ``bleu`` and ``rouge_l`` become the multi-reference ones and ``nist``, ``cider``, ``rouge_l_e2e``, ``meteor``
    are added (`multi_reference`); F1 and exact match stay against the first reference.
    """
    items = item_scores(generated, expected)
    metrics = scores_from_items(items)
    if any("references" in r for r in records):
        metrics.update(multi_reference(generated, [r.get("references") or [r["output"]] for r in records], items))
    return metrics, items


def answer_records(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[dict], template: str, settings
) -> list[str]:
    """Each record's generated answer, in input order, through `template`; generation also stops where the
    template's next section starts (its stop strings are added to `settings`'). Conversations are answered
    through the chat template, which ends each turn itself (`peft_gpt2.evaluation.chat_eval.answer_chats`)."""
    if is_chat(records):
        return answer_chats(model, tokenizer, records, settings)
    tmpl = get_template(template)
    settings = replace(settings, stop=settings.stop + [s for s in tmpl.stop if s not in settings.stop])
    prompts = [tmpl.prompt(r["instruction"], r.get("input") or "") for r in records]
    return [c.text for c in generate(model, tokenizer, prompts, settings)]


def _loss_metrics(loss: TokenLoss) -> dict:
    """The teacher-forced pass's share of the metrics (`peft_gpt2.inference.scoring.completion_loss`)."""
    kept = ("perplexity", "token_accuracy", "loss", "truncated", "dropped")
    return {key: getattr(loss, key) for key in kept} | {"completion_tokens": loss.tokens}


def multi_reference(generated: list[str], references: list[list[str]], items: dict[str, list]) -> dict:
    """The E2E metrics against every reference of each item (`peft_gpt2.evaluation.metrics.multi_reference`):
    ``bleu`` and ``rouge_l`` replace the single-reference ones, ``nist``, ``cider``, ``rouge_l_e2e`` and ``meteor``
    join them; their per-item statistics go into `items` for the bootstrap."""
    from peft_gpt2.evaluation.metrics.multi_reference import item_statistics, scores_from_statistics

    stats = item_statistics(generated, references)
    items.update(
        bleu_stats=stats.bleu.tolist(),
        nist_stats=stats.nist.tolist(),
        rouge_l=stats.rouge_l.tolist(),
        rouge_l_e2e=stats.rouge_l_e2e.tolist(),
        cider=stats.cider.tolist(),
    )
    return scores_from_statistics(stats)


__all__ = ["TASKS", "TASK_FIELDS", "answer_records", "evaluate_model", "load_eval_records", "text_scores"]
