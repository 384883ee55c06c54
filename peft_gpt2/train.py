"""Train a base model by full fine-tuning, LoRA or LoRA over an 8-bit base, from one recipe.

    peft-gpt2 train recipes/quickstart.yaml --set train.max_steps=20

Reads top to bottom: check recipe and data -> load model -> trainer -> train -> save. Loss is on the
completion only (TRL's prompt-completion format); the adapter folder is written to a temporary
folder and renamed into place, so a crash never leaves one that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.adapters import PROVENANCE
from peft_gpt2.checkpoints import StopOnNonFinite, check_checkpoints, checkpoint_dir
from peft_gpt2.config import Recipe, dump_recipe, recipe_dict
from peft_gpt2.data import save_records
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.folders import publish_folder
from peft_gpt2.training_data import training_data

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGES = ("peft-gpt2", "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def peak_memory_mb() -> float:
    """Peak GPU memory allocated (CUDA) or peak process RSS (CPU), in MiB."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)``; 8-bit weights count their real element count."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


@dataclass
class TrainRun:
    """What ``train`` leaves: the output folder, its provenance, and the trained model still in memory."""

    path: Path
    provenance: dict
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def check_output(recipe: Recipe, overwrite: bool) -> Path:
    out = recipe.out_path
    if out.exists() and not overwrite:
        raise PeftGpt2Error(f"{out} already exists; choose another name (--set name=...) or pass --overwrite")
    return out


def train(recipe: Recipe, *, overwrite: bool = False, resume: bool = False) -> TrainRun:
    """Run a recipe end to end: the adapter (or full model) lands in ``<output_dir>/<name>/``.

    Args:
        recipe (`Recipe`): a validated recipe (``peft_gpt2.config.load_recipe``).
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing output folder (and the
            checkpoints of an unfinished run).
        resume (`bool`, *optional*, defaults to `False`): continue from the last checkpoint of this recipe.
    """
    # 1. Everything a user can get wrong, before any model is loaded.
    out = check_output(recipe, overwrite)
    resume_from = check_checkpoints(recipe, resume, overwrite)
    ckpt = checkpoint_dir(recipe)
    from peft_gpt2.models import config_fingerprint, load_base, load_tokenizer
    from peft_gpt2.trainer import make_trainer, resolve_precision

    precision = resolve_precision(recipe.train.precision)

    tokenizer = load_tokenizer(recipe.model.name)
    data = training_data(recipe, tokenizer)
    say(f"data: {json.dumps(data.stats)}")

    # 2. Model and trainer.
    model, tokenizer = load_base(recipe.model.name, load_in_8bit=recipe.method == "lora-8bit")
    if recipe.method == "lora-8bit":
        from peft import prepare_model_for_kbit_training

        # bitsandbytes warns on every 8-bit matmul that it casts inputs to fp16 (its documented behaviour).
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.train.activation_checkpointing)

    work = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.tmp-", dir=_mkdir(out.parent)))
    try:
        trainer = make_trainer(recipe, model, tokenizer, data.train, data.validation, ckpt, precision)
        trainer.add_callback(StopOnNonFinite(precision, ckpt))
        if recipe.train.save_steps:
            _mkdir(ckpt)
            (ckpt / "recipe.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
        trainable, total = count_parameters(trainer.model)
        say(
            f"method {recipe.method}: {trainable:,} trainable of {total:,} parameters "
            f"({100 * trainable / total:.3f}%), precision {precision}"
        )

        # 3. Train, with validation loss before and after (token-weighted over the whole split; TRL's
        #    eval_loss is a mean of per-batch means).
        def validation_loss() -> float | None:
            if data.validation_loss is None:
                return None
            return data.validation_loss(trainer.model, recipe.train.per_device_eval_batch_size)["loss"]

        val_before = validation_loss()
        start = time.perf_counter()
        if resume_from:
            say(f"resuming from {resume_from}")
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_time = time.perf_counter() - start
        val_after = validation_loss()
        if val_before is not None:
            say(
                f"validation loss: {val_before:.4f} -> {val_after:.4f} "
                f"(perplexity {math.exp(val_before):.2f} -> {math.exp(val_after):.2f})"
            )

        provenance = {
            "name": recipe.name,
            "method": recipe.method,
            "base_model": recipe.model.name,
            "base_model_path": model.config._name_or_path or recipe.model.name,
            "base_config_fingerprint": config_fingerprint(model.config),
            "model_type": model.config.model_type,
            "template": recipe.data.template,
            "data_format": recipe.data.format,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "precision": precision,
            "train_time_s": round(train_time, 2),
            "train_steps": result.global_step,
            "train_loss": result.training_loss,
            "validation_loss_before": val_before,
            "validation_loss_after": val_after,
            "peak_memory_mb": round(peak_memory_mb(), 1),
            "device": str(trainer.args.device),
            "processes": trainer.args.world_size,
            "data": data.stats,
            "recipe": recipe_dict(recipe),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # 4. Save: PEFT folder (or full model), tokenizer, recipe, splits, provenance; then rename. One writer:
        #    under torchrun / accelerate launch only the main process writes, the others wait for it. Every
        #    process calls save_model (FSDP gathers the sharded weights there); only the main one writes.
        stage = work / "out"
        trainer.save_model(str(stage))
        if trainer.is_world_process_zero():
            (stage / "training_args.bin").unlink(missing_ok=True)  # a pickle; the resolved recipe says the same
            tokenizer.save_pretrained(stage)
            (stage / "recipe.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
            if data.test:
                save_records(data.test, stage / "test.json")
            (stage / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
            (stage / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
            publish_folder(stage, out)
            shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete; its checkpoints are not needed
        trainer.accelerator.wait_for_everyone()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"saved {recipe.method} {'model' if recipe.method == 'full' else 'adapter'} to {out}")
    return TrainRun(out, provenance, trainer.model.eval(), tokenizer)


def say(message: str) -> None:
    """Print once: under torchrun / accelerate launch only the process with RANK 0 reports."""
    if os.environ.get("RANK", "0") == "0":
        print(message, flush=True)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
