r"""Chat evaluation: each conversation is scored on its last assistant turn, given every turn before it.

    peft-gpt2 eval --adapter adapters/chat-lora --data adapters/chat-lora/test.json

The prompt is the earlier turns rendered with the tokenizer's chat template plus its generation prompt (GPT-2 gets
``conversations.GPT2_CHAT_TEMPLATE``, as in training), so the model answers where training taught it to; generation
ends at the template's end-of-turn token. The answer is scored against the last assistant turn with the metrics of
instruction data, and the teacher-forced loss covers exactly that turn's tokens and its end-of-turn (earlier
assistant turns are context here, not targets). The records carry their own turns, so the prompt template that
instruction records need plays no part: ``evaluation`` dispatches on the records (`is_chat`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from peft_gpt2.data.conversations import (
    SHAPES,
    end_of_turn_ids,
    tokenize_conversations,
    validate_conversations,
    with_chat_template,
)
from peft_gpt2.inference.generation import generate
from peft_gpt2.inference.settings import GenerationSettings

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CHAT_KEYS = tuple(SHAPES)  # a record with one of these keys is a conversation ("messages", "conversations")


def is_chat(records: list[dict]) -> bool:
    """Whether `records` are conversations (`chat_records`), scored through the chat template."""
    return bool(records) and "messages" in records[0]


def chat_records(raw: list, source: str) -> list[dict]:
    """Conversations checked by `validate_conversations` (errors name file, record and field), turns after the last
    assistant turn dropped, each also in the shape evaluation reports: ``instruction`` (the last user turn),
    ``input`` (empty) and ``output`` (the last assistant turn, the reference)."""
    conversations, _ = validate_conversations(raw, source)
    return [
        {
            **c,
            "instruction": next(m["content"] for m in reversed(c["messages"]) if m["role"] == "user"),
            "input": "",
            "output": c["messages"][-1]["content"],
        }
        for c in conversations
    ]


def last_turn_prompts(tokenizer: PreTrainedTokenizerBase, records: list[dict]) -> list[str]:
    """Each record's turns before its last, rendered with the chat template and its generation prompt (a base
    loaded without the run's tokenizer, GPT-2, gets ``GPT2_CHAT_TEMPLATE``, as the run was trained with)."""
    tokenizer = with_chat_template(tokenizer)
    return [
        tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
        for r in records
    ]


def chat_loss_rows(tokenizer: PreTrainedTokenizerBase, records: list[dict]) -> list[dict]:
    """``{"input_ids", "assistant_masks"}`` per record for `peft_gpt2.inference.scoring.completion_loss`: the mask
    covers the last assistant turn and its end-of-turn only, tokenized as training tokenizes conversations."""
    tokenized = tokenize_conversations(records, with_chat_template(tokenizer), "chat evaluation", last_turn_only=True)
    return [{"input_ids": ids, "assistant_masks": mask} for ids, mask in tokenized]


def answer_chats(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[dict], settings: GenerationSettings
) -> list[str]:
    """Each record's generated last assistant turn, in input order, ending also at the chat template's end of turn
    (``generate`` ends at the model's eos; SmolLM2's ``<|im_end|>`` is its eos, another template's may not be)."""
    chat = with_chat_template(tokenizer)
    decoding = replace(settings, stop_token_ids=[*settings.stop_token_ids, *end_of_turn_ids(chat, chat.chat_template)])
    return [c.text for c in generate(model, tokenizer, last_turn_prompts(tokenizer, records), decoding)]


__all__ = [
    "CHAT_KEYS",
    "answer_chats",
    "chat_loss_rows",
    "last_turn_prompts",
    "chat_records",
    "is_chat",
]
