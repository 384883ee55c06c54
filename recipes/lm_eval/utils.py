"""Data loader for ``peft_gpt2_choices.yaml``: the shipped JSONL, found from this file so any working directory works.

lm_eval calls ``load_choices(**metadata, **dataset_kwargs)``; ``--metadata '{"data_files": "other.jsonl"}'`` points
the task at another file of ``{"question", "choices", "answer"}`` records. The ``json`` builder reads local files,
so ``HF_DATASETS_OFFLINE=1`` works.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "data" / "sample_choices.jsonl"


def load_choices(data_files: str | None = None, **_unused) -> dict:
    """``{"test": Dataset}`` of the multiple-choice records in `data_files` (default: data/sample_choices.jsonl)."""
    import datasets

    path = Path(data_files).expanduser().resolve() if data_files else DEFAULT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such multiple-choice file (pass --metadata '{{\"data_files\": ...}}')")
    return datasets.load_dataset("json", data_files={"test": str(path)})
