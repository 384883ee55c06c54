"""Prompt templates: a record becomes ``(prompt, completion)`` for TRL's prompt-completion format.

The prompt ends on a newline and the completion starts with its own first character, so GPT-2's
byte-level BPE splits prompt+completion at exactly the prompt's last token and TRL's completion mask
falls where the answer begins.
"""

from __future__ import annotations

from dataclasses import dataclass


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

TEMPLATES: dict[str, Template] = {t.name: t for t in (ALPACA, SHORT)}
