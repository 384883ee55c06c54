"""Compare runs and write the report: the one path ``peft-gpt2 compare`` and a pipeline's compare stage share."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_gpt2.evaluation.compare import compare
from peft_gpt2.inference.settings import describe_decoding
from peft_gpt2.reporting.reports import terminal_table, write_report

if TYPE_CHECKING:
    from peft_gpt2.inference.settings import GenerationSettings


def compare_and_report(
    runs: list[str], out: Path, name: str, settings: GenerationSettings, origin: dict[str, str], **options: Any
) -> dict[str, Path]:
    """Score ``runs`` side by side (``evaluation.compare.compare``; ``options`` are its keywords), write
    ``<out>/<name>.{md,json,csv,png}`` and the answers, print the table; the files written, by kind.

    ``origin`` says what made the report (the command, or the pipeline stage); the date, the machine and how the
    answers were decoded are added here, so every report states them alike.
    """
    rows = compare(runs, settings=settings, answers_dir=out / f"{name}.answers", **options)
    meta = {
        **origin,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "decoding": describe_decoding(settings),
    }
    paths = write_report(rows, out, name, meta=meta)
    print(terminal_table(rows))
    return paths
