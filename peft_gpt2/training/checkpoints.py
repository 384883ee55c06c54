"""Checkpoints of an unfinished run, ``--resume``, and stopping on a nan/inf loss.

peft-gpt2 train recipes/alpaca_lora.yaml --set train.save_steps=100            # killed at step 250
peft-gpt2 train recipes/alpaca_lora.yaml --set train.save_steps=100 --resume   # continues from step 200
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from peft_gpt2.config.recipe import Recipe, dump_recipe
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.run_folder import RECIPE, STALE_AFTER_S, stale_stages


def checkpoint_dir(recipe: Recipe) -> Path:
    """Where an unfinished run keeps its checkpoints: hidden, next to the output, never mistaken for it."""
    return Path(recipe.output_dir) / f".{recipe.name}.checkpoints"


def resume_point(recipe: Recipe, *, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint ``--resume`` continues from (``None`` for a fresh run); reads, never deletes.

    ``--resume`` needs checkpoints of the same recipe; a fresh run must not silently discard them, so it is refused
    while checkpoints exist unless ``--overwrite`` (then ``discard_checkpoints`` removes them).
    """
    ckpt = checkpoint_dir(recipe)
    last = get_last_checkpoint(str(ckpt)) if ckpt.is_dir() else None
    if resume:
        if last is None:
            raise PeftGpt2Error(f"--resume: no checkpoint in {ckpt}; set train.save_steps to write checkpoints")
        saved = ckpt / RECIPE
        if saved.exists() and saved.read_text(encoding="utf-8") != dump_recipe(recipe):
            raise PeftGpt2Error(f"--resume: the recipe differs from the one in {saved}; resume with that one")
        return Path(last)
    if last is not None and not overwrite:
        raise PeftGpt2Error(
            f"{ckpt} holds checkpoints of an unfinished run ({Path(last).name}); pass --resume to continue it "
            "or --overwrite to start over"
        )
    return None


def discard_checkpoints(recipe: Recipe) -> None:
    """Remove the run's checkpoints: when starting over (``--overwrite``), and once the run is published."""
    shutil.rmtree(checkpoint_dir(recipe), ignore_errors=True)


def remove_leftovers(recipe: Recipe, *, keep_checkpoints: bool, say: Callable[..., None] | None = None) -> None:
    """Remove what a killed run of this name left beside its output, and say so in one line.

    Leftovers: staging folders nothing has written to for ``run_folder.STALE_AFTER_S`` (a save killed midway;
    recent ones may be another live run's and stay), and a checkpoints folder without a checkpoint (killed before
    the first one). A checkpoints folder with checkpoints stays for ``--resume`` (``keep_checkpoints``; a fresh
    run was refused by ``resume_point`` already), or is discarded under ``--overwrite``.
    """
    if say is None:
        from accelerate import PartialState

        say = PartialState().print  # every process cleans (errors ignored); only the main one says so
    removed, recent = stale_stages(recipe.out_path)
    ckpt = checkpoint_dir(recipe)
    if not keep_checkpoints and ckpt.is_dir():
        if get_last_checkpoint(str(ckpt)) is None:
            removed.append(ckpt)
        discard_checkpoints(recipe)  # with checkpoints only under --overwrite (resume_point refuses otherwise)
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    if removed:
        say(f"removed leftovers of a killed run: {', '.join(p.name for p in removed)}", flush=True)
    if recent:
        names = ", ".join(p.name for p in recent)
        say(f"kept {names}: written in the last {STALE_AFTER_S // 60} minutes, maybe by a run still saving", flush=True)


class StopOnNonFinite(TrainerCallback):
    """Stop at the first logged nan/inf loss or gradient norm, naming the step and what to change."""

    def __init__(self, precision: str, checkpoints: Path) -> None:
        self.precision, self.checkpoints = precision, checkpoints

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                last = get_last_checkpoint(str(self.checkpoints)) if self.checkpoints.is_dir() else None
                hint = "lower train.learning_rate" + (" or use precision bf16/fp32" if self.precision == "fp16" else "")
                kept = f"; last good checkpoint: {last} (--resume)" if last else ""
                raise PeftGpt2Error(f"training {key} became {value} at step {state.global_step}: {hint}{kept}")
