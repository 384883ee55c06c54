"""Checkpoints of an unfinished run, ``--resume``, and stopping on a nan/inf loss.

peft-gpt2 train recipes/alpaca_lora.yaml --set train.save_steps=100            # killed at step 250
peft-gpt2 train recipes/alpaca_lora.yaml --set train.save_steps=100 --resume   # continues from step 200
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from transformers import TrainerCallback

from peft_gpt2.config import Recipe, dump_recipe
from peft_gpt2.errors import PeftGpt2Error


def checkpoint_dir(recipe: Recipe) -> Path:
    """Where an unfinished run keeps its checkpoints: hidden, next to the output, never mistaken for it."""
    return Path(recipe.output_dir) / f".{recipe.name}.checkpoints"


def check_checkpoints(recipe: Recipe, resume: bool, overwrite: bool) -> Path | None:
    """``--resume`` needs checkpoints of the same recipe; a fresh run must not silently discard them."""
    ckpt = checkpoint_dir(recipe)
    found = sorted(ckpt.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if resume:
        if not found:
            raise PeftGpt2Error(f"--resume: no checkpoint in {ckpt}; set train.save_steps to write checkpoints")
        saved = (ckpt / "recipe.yaml").read_text(encoding="utf-8") if (ckpt / "recipe.yaml").exists() else None
        if saved is not None and saved != dump_recipe(recipe):
            raise PeftGpt2Error(
                f"--resume: the recipe differs from the one in {ckpt}/recipe.yaml; resume with that one"
            )
        return found[-1]
    if found and not overwrite:
        raise PeftGpt2Error(
            f"{ckpt} holds checkpoints of an unfinished run ({found[-1].name}); pass --resume to continue it "
            "or --overwrite to start over"
        )
    shutil.rmtree(ckpt, ignore_errors=True)
    return None


class StopOnNonFinite(TrainerCallback):
    """Stop at the first logged nan/inf loss or gradient norm, naming the step and what to change."""

    def __init__(self, precision: str, checkpoints: Path) -> None:
        self.precision, self.checkpoints = precision, checkpoints

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                last = sorted(self.checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
                hint = "lower train.learning_rate" + (" or use precision bf16/fp32" if self.precision == "fp16" else "")
                kept = f"; last good checkpoint: {last[-1]} (--resume)" if last else ""
                raise PeftGpt2Error(f"training {key} became {value} at step {state.global_step}: {hint}{kept}")
