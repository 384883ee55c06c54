"""The recipe's ``data`` section to ``TrainingRows``, by ``data.format``; needs only the tokenizer, never the model,
so a bad record fails in seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft_gpt2.data.conversations import conversation_rows
from peft_gpt2.data.corpus import corpus_rows
from peft_gpt2.data.data_to_text import data_to_text_rows
from peft_gpt2.data.instructions import instruction_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from peft_gpt2.data.config import DataConfig
    from peft_gpt2.data.rows import TrainingRows


def training_rows(d: DataConfig, tokenizer: PreTrainedTokenizerBase) -> TrainingRows:
    """Load, clean, split and check ``d.path`` in its format (instructions, data_to_text, messages, text)."""
    if d.format == "text":
        return corpus_rows(d.path, tokenizer, d.max_length, d.split[1])
    rows_of = {"data_to_text": data_to_text_rows, "messages": conversation_rows}.get(d.format, instruction_rows)
    return rows_of(d, tokenizer)
