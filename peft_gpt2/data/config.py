"""The recipe's ``data`` section: where the records come from, their format, and how they become rows.

It lives with the data stage, as TRL's ``SFTConfig`` lives beside its trainer: the loaders take it, and the recipe
(``peft_gpt2.config.recipe``) composes it with the other sections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from peft_gpt2.data.templates import DEFAULT_TEMPLATE, TEMPLATES
from peft_gpt2.errors import check_key as _check

FORMATS = ("instructions", "data_to_text", "text", "messages")  # messages: chat data (peft_gpt2.data.conversations)


@dataclass
class DataConfig:
    path: str = ""  # instructions: Alpaca JSON/JSONL, URL or HF data set; text: .txt file, folder or URL
    # instructions (loss on the answer) | data_to_text (E2E CSV or hub set: split by MR, one example per reference)
    # | text (a raw corpus, loss on every token) | messages (chat: loss on the assistant turns)
    format: str = "instructions"
    template: str = DEFAULT_TEMPLATE  # prompt template (peft_gpt2.data.templates.TEMPLATES)
    limit: int | None = None  # keep this many records after cleaning (random, seeded)
    fraction: float | None = None  # or keep this fraction of them
    seed: int = 42  # drives subsampling and the train/validation/test split
    split: list[float] = field(default_factory=lambda: [0.85, 0.10, 0.05])  # train / validation / test
    max_length: int = 512  # tokens per example, prompt + completion + eos; for text, the block size
    overlong: str = "truncate"  # examples longer than max_length: truncate (keep the start) or drop

    def __post_init__(self) -> None:
        _check(bool(self.path.strip()), "data.path", "is required: a JSON/JSONL file, URL or dataset name")
        _check(self.format in FORMATS, "data.format", f"must be one of {FORMATS}")
        _check(self.template in TEMPLATES, "data.template", f"must be one of {sorted(TEMPLATES)}")
        _check(self.limit is None or self.limit >= 1, "data.limit", f"must be >= 1, got {self.limit}")
        _check(self.fraction is None or 0 < self.fraction <= 1, "data.fraction", "must be in (0, 1]")
        _check(self.limit is None or self.fraction is None, "data.limit", "set limit or fraction, not both")
        _check(len(self.split) == 3, "data.split", "must be three fractions: [train, validation, test]")
        _check(
            all(f >= 0 for f in self.split) and self.split[0] > 0,
            "data.split",
            f"fractions must be >= 0 with train > 0, got {self.split}",
        )
        _check(
            math.isclose(sum(self.split), 1.0, abs_tol=1e-6),
            "data.split",
            f"fractions must sum to 1, got {self.split} (sum {sum(self.split):g})",
        )
        _check(self.max_length >= 16, "data.max_length", f"must be >= 16, got {self.max_length}")
        _check(self.overlong in ("truncate", "drop"), "data.overlong", "must be 'truncate' or 'drop'")


INSTRUCTION_KEYS = ("template", "limit", "fraction", "overlong")  # data keys that data.format: text does not use
