"""The one shape every data format becomes for training: what the trainer sees, the held-out test records, counts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainingRows:
    """Training and validation rows, the held-out test records, and counts (records read, dropped, split sizes).

    A row is ``{"prompt", "completion"}`` with their token ids (instructions, data-to-text: loss on the completion
    and its eos), ``{"input_ids", "assistant_masks"}`` (conversations: loss on the assistant turns) or
    ``{"input_ids"}`` (a text corpus: loss on every token). Test records stay records, saved with the run for
    ``compare --data test``; a corpus has none.
    """

    train: list[dict]
    validation: list[dict]
    test: list[dict]
    stats: dict
