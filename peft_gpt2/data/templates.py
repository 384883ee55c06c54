"""Prompt templates: a record becomes ``(prompt, completion)`` for TRL's prompt-completion format, and the pairs
are tokenized here too, so training and scoring check the completion mask the same way.

The prompt ends on a newline and the completion starts with its own first character, so GPT-2's
byte-level BPE splits prompt+completion at exactly the prompt's last token and TRL's completion mask
falls where the answer begins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Template:
    """A prompt format. ``stop`` marks where a new section starts: generation is cut there."""

    name: str
    with_input: str
    without_input: str
    stop: tuple[str, ...] = ("### ",)

    def prompt(self, instruction: str, input: str = "") -> str:
        text = self.with_input if input.strip() else self.without_input
        return text.format(instruction=instruction.strip(), input=input.strip())

    def render(self, record: dict) -> dict[str, str]:
        """``{"prompt", "completion"}`` from an Alpaca record (``instruction``, ``input``, ``output``)."""
        return {
            "prompt": self.prompt(record["instruction"], record.get("input") or ""),
            "completion": record["output"].strip(),
        }


ALPACA = Template(
    name="alpaca",
    with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    without_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
)

# The same sections without the preamble: 30-40 fewer prompt tokens per example.
SHORT = Template(
    name="short",
    with_input="### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    without_input="### Instruction:\n{instruction}\n\n### Response:\n",
)

# Structured input -> text (E2E NLG): the meaning representation is the prompt, the sentence the completion.
DATA_TO_TEXT = Template(
    name="data_to_text",
    with_input="### Data:\n{instruction}\n{input}\n\n### Text:\n",
    without_input="### Data:\n{instruction}\n\n### Text:\n",
)

TEMPLATES: dict[str, Template] = {t.name: t for t in (ALPACA, SHORT, DATA_TO_TEXT)}
DEFAULT_TEMPLATE = ALPACA.name  # recipes' default, and what a run folder without a recorded template used


def get_template(name: str) -> Template:
    """The template called ``name``; an unknown name lists the known ones."""
    if name not in TEMPLATES:
        raise PeftGpt2Error(f"unknown template {name!r}; choose one of: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


@dataclass
class TokenizedPairs:
    """Pairs kept under ``max_length`` (over-long ones truncated or dropped), their token ids, and the counts."""

    pairs: list[dict]
    prompt_ids: list[list[int]]
    full_ids: list[list[int]]  # prompt + completion, without eos
    truncated: int
    dropped: int


def tokenize_pairs(
    pairs: list[dict], tokenizer: PreTrainedTokenizerBase, max_length: int, overlong: str, split: str
) -> TokenizedPairs:
    """Check the completion mask will be exact and apply the over-long policy; count what it did.

    TRL finds the completion by tokenizing the prompt alone and prompt+completion; if BPE merges across
    the join it only logs a warning and trains on a shifted mask, so here that is an error.
    """
    if not pairs:  # a split can be empty (a zero validation fraction, a tiny data set)
        return TokenizedPairs([], [], [], 0, 0)
    prompts = tokenizer([p["prompt"] for p in pairs], add_special_tokens=False)["input_ids"]
    full = tokenizer([p["prompt"] + p["completion"] for p in pairs], add_special_tokens=False)["input_ids"]
    kept = TokenizedPairs([], [], [], 0, 0)
    for i, (pair, p_ids, f_ids) in enumerate(zip(pairs, prompts, full, strict=True)):
        if f_ids[: len(p_ids)] != p_ids:
            raise PeftGpt2Error(
                f"{split} record {i}: the tokenized prompt is not a prefix of prompt+completion, so the loss mask "
                f"would be shifted; check the template and the record's output {pair['completion'][:40]!r}"
            )
        if len(f_ids) + 1 > max_length:  # + eos
            if overlong == "drop" or len(p_ids) >= max_length:  # a prompt alone that fills max_length: no loss
                kept.dropped += 1
                continue
            kept.truncated += 1
        kept.pairs.append(pair)
        kept.prompt_ids.append(p_ids)
        kept.full_ids.append(f_ids)
    return kept
