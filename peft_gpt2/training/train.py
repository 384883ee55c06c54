"""Train a base model from one recipe: a full fine-tune, or a PEFT method (LoRA and its variants, IA3, VeRA, prefix
or prompt tuning) over a full-precision, 8-bit or 4-bit base.

    peft-gpt2 train recipes/quickstart.yaml --set train.max_steps=20

Reads top to bottom: check recipe and data -> load model -> trainer -> train -> save (``save.py``). Loss is on the
completion only (TRL's prompt-completion format); the run folder is written to a temporary folder and renamed
into place, so a crash never leaves one that looks complete.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.config.preflight import check_new_output
from peft_gpt2.config.recipe import Recipe, dump_recipe
from peft_gpt2.data.rows import TrainingRows
from peft_gpt2.data.training_rows import training_rows
from peft_gpt2.inference.scoring import completion_loss, token_loss
from peft_gpt2.run_folder import (
    RECIPE,
    Provenance,
    check_writable,
)
from peft_gpt2.training.before_after import BeforeAfter
from peft_gpt2.training.checkpoints import (
    StopOnNonFinite,
    checkpoint_dir,
    remove_leftovers,
    resume_point,
)
from peft_gpt2.training.memory_estimate import peak_memory_mb, reset_peak_memory
from peft_gpt2.training.progress import TimeEstimate, above_the_bar, run_plan
from peft_gpt2.training.save import describe, distributed_mode, method_of, parameter_counts, save_run

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

@dataclass
class TrainRun:
    """What ``train`` leaves: the output folder, its provenance, and the trained model still in memory."""

    path: Path
    provenance: Provenance
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


VALIDATION_PART_ROWS = 1000  # validation rows scored between two progress lines, at least


def validation_loss(recipe: Recipe, model, tokenizer, rows: list[dict], say, when: str) -> float | None:
    """Token-weighted loss over the whole validation split (TRL's eval_loss is a mean of per-batch means).

    Scored in parts (about ten, of at least 1,000 rows), each reported through ``say`` with its row count and the
    seconds so far: 10,000 validation rows of 100,000 records took 5 minutes on a 2-core CPU, in silence. The
    loss is the parts' summed NLL over their summed tokens, the same as one pass over the split.
    """
    if not rows:
        return None
    batch_size, n = recipe.train["per_device_eval_batch_size"], len(rows)
    part, nll, tokens, start = max(VALIDATION_PART_ROWS, -(-n // 10)), 0.0, 0, time.perf_counter()
    for begin in range(0, n, part):
        chunk = rows[begin : begin + part]
        if recipe.data.format == "text":
            blocks = [r["input_ids"] for r in chunk]
            result = token_loss(
                model, blocks, [0] * len(blocks), pad_token_id=tokenizer.pad_token_id, batch_size=batch_size
            )
        else:
            result = completion_loss(model, tokenizer, chunk, batch_size=batch_size, max_length=recipe.data.max_length)
        nll, tokens = nll + result.nll_sum, tokens + result.tokens
        done, seconds = begin + len(chunk), time.perf_counter() - start
        say(
            f"validation loss {when}: "
            + (
                f"{nll / tokens:.4f} on {n:,} rows ({seconds:.1f} s)"
                if done == n
                else f"{done:,} of {n:,} rows ({seconds:.0f} s)"
            ),
            flush=True,
        )
    return nll / tokens


def load_model(recipe: Recipe) -> PreTrainedModel:
    """The base model; quantized (``model.quantization``) and prepared for k-bit training under an adapter."""
    from peft_gpt2.models.loading import keep_training_layout, load_base
    from peft_gpt2.training.trainer import resolve_precision

    reset_peak_memory()  # this run's peak, not that of an earlier run in this process (a sweep, a pipeline)
    quantization = recipe.model.quantization
    compute = {"bf16": "bfloat16", "fp16": "float16"}.get(resolve_precision(recipe.train["precision"]))
    model, _ = load_base(recipe.model.name, quantization=quantization, compute_dtype=compute)
    if quantization:
        keep_training_layout(model)
        from peft import prepare_model_for_kbit_training

        # bitsandbytes warns on every 8-bit matmul that it casts inputs to fp16 (its documented behaviour).
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
        checkpointing = recipe.train["activation_checkpointing"]
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    return model


def train(recipe: Recipe, *, overwrite: bool = False, resume: bool = False) -> TrainRun:
    """Run a recipe end to end: the adapter (or full model) lands in ``<output_dir>/<name>/``.

    Args:
        recipe (`Recipe`): a validated recipe (``peft_gpt2.config.recipe.load_recipe``).
        overwrite (`bool`, *optional*, defaults to `False`): replace an existing output folder (and the
            checkpoints of an unfinished run).
        resume (`bool`, *optional*, defaults to `False`): continue from the last checkpoint of this recipe.
    """
    from accelerate import PartialState

    from peft_gpt2.config.architectures import check_targets
    from peft_gpt2.models.loading import load_tokenizer
    from peft_gpt2.training.trainer import resolve_precision, trainer_args

    # 1. Everything a user can get wrong, before any model is loaded.
    ckpt = checkpoint_dir(recipe)
    precision = resolve_precision(recipe.train["precision"])
    args = trainer_args(recipe, ckpt, precision)  # PEFT, TRL and transformers check the values they own
    check_targets(recipe)  # layer names against the architecture, from its config on the meta device
    resume_from = check_output(recipe, overwrite=overwrite, resume=resume)
    say = PartialState().print  # under torchrun / accelerate launch only the main process reports
    say(f"data: reading, checking and tokenizing {recipe.data.path}", flush=True)
    start = time.perf_counter()
    tokenizer = load_tokenizer(recipe.model.name)
    data = training_rows(recipe.data, tokenizer)
    say(f"data: {json.dumps(data.stats)} ({time.perf_counter() - start:.1f} s)", flush=True)

    # 2. Model and trainer.
    model, trainer = ready_trainer(recipe, tokenizer, args, data, precision, say)
    trainable, total = parameter_counts(trainer.model)

    # 3. Train, with validation loss before and after.
    result, train_time, val_before, val_after = train_between_validations(
        trainer, recipe, tokenizer, data, resume_from, say
    )

    provenance = Provenance(
        **describe(recipe, model, trainable, total),
        precision=precision,
        train_time_s=round(train_time, 2),
        train_steps=result.global_step,
        tokens_seen=trainer.state.num_input_tokens_seen or None,
        train_loss=result.training_loss,
        validation_loss_before=val_before,
        validation_loss_after=val_after,
        peak_memory_mb=round(peak_memory_mb(), 1),
        device=str(trainer.args.device),
        processes=trainer.args.world_size,
        distributed=distributed_mode(trainer),
        data=data.stats,
    )
    # 4. Save, then rename into place.
    save_run(trainer, recipe, tokenizer, data.test, provenance, overwrite=overwrite)
    kind = "model" if recipe.method == "full" else "adapter"
    say(f"saved {method_of(recipe)} {kind} to {recipe.out_path}", flush=True)
    return TrainRun(recipe.out_path, provenance, trainer.model.eval(), tokenizer)


def ready_trainer(recipe: Recipe, tokenizer, args, data: TrainingRows, precision: str, say):
    """The model and its trainer, with the nan/inf stop and the time estimate; says the plan before step 1."""
    from peft_gpt2.training.trainer import make_trainer

    start = time.perf_counter()
    ckpt = checkpoint_dir(recipe)
    model = load_model(recipe)
    trainer = make_trainer(recipe, model, tokenizer, args, data.train, data.validation)
    trainer.add_callback(StopOnNonFinite(precision, ckpt))
    if recipe.train["save_steps"]:
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / RECIPE).write_text(dump_recipe(recipe), encoding="utf-8")
    trainable, total = parameter_counts(trainer.model)
    share = f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.3f}%)"
    ready = f"model and trainer ready in {time.perf_counter() - start:.1f} s"
    say(f"method {method_of(recipe)}: {share}, precision {precision}; {ready}", flush=True)
    for line in run_plan(trainer, recipe):  # steps, tokens per step, memory: before an hour is spent
        say(line, flush=True)
    trainer.add_callback(TimeEstimate(above_the_bar(), full=recipe.method == "full"))
    return model, trainer


def train_between_validations(
    trainer, recipe: Recipe, tokenizer, data: TrainingRows, resume_from: Path | None, say
) -> tuple:
    """``trainer.train()`` (from ``resume_from``), its seconds, and the validation loss before and after it."""
    val_before = validation_loss(recipe, trainer.model, tokenizer, data.validation, say, "before training")
    examples = BeforeAfter.of(recipe, data.test)
    examples.before_training(trainer.model, tokenizer)
    start = time.perf_counter()
    say(f"resuming from {resume_from}" if resume_from else "training", flush=True)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_time = time.perf_counter() - start
    val_after = validation_loss(recipe, trainer.model, tokenizer, data.validation, say, "after training")
    if val_before is not None:
        say(
            f"validation loss: {val_before:.4f} -> {val_after:.4f} "
            f"(perplexity {math.exp(val_before):.2f} -> {math.exp(val_after):.2f})",
            flush=True,
        )
    examples.after_training(trainer.model, tokenizer)
    if examples.records:
        say("\n".join(examples.lines()), flush=True)
    return result, train_time, val_before, val_after


def check_output(recipe: Recipe, *, overwrite: bool, resume: bool) -> Path | None:
    """Refuse to replace an output or discard an unfinished run by accident, or to train a run that cannot be saved;
    the checkpoint to resume from."""
    check_new_output(recipe, overwrite=overwrite)
    check_writable(recipe.out_path.parent)
    resume_from = resume_point(recipe, resume=resume, overwrite=overwrite)
    remove_leftovers(recipe, keep_checkpoints=resume_from is not None)  # of a killed run; --overwrite
    return resume_from
