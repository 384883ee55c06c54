"""What a finished run writes: its provenance (what was trained, on which base, how) and the run folder itself,
staged beside the output and renamed into place."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path
from typing import TYPE_CHECKING

from peft_gpt2.config.recipe import Recipe, dump_recipe, recipe_dict
from peft_gpt2.data.instructions import save_records
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.methods import method_label
from peft_gpt2.run_folder import (
    RECIPE,
    TEST_SPLIT,
    TRAIN_LOG,
    Provenance,
    check_writable,
    publish_folder,
)
from peft_gpt2.training.checkpoints import discard_checkpoints
from peft_gpt2.training.model_card import write_extras

if TYPE_CHECKING:
    from transformers import PreTrainedModel


PACKAGES = ("peft-gpt2", "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets")


def main_versions() -> dict[str, str]:
    """Python's and the main packages' versions: the provenance's ``versions``, shown on the model card."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def installed_versions() -> dict[str, str]:
    """Every installed distribution and its version: what ``peft-gpt2 freeze RUN`` turns into a file."""
    found = ((d.metadata["Name"], d.version) for d in distributions())
    return dict(sorted((name, v) for name, v in found if name))


def distributed_mode(trainer) -> str:
    """accelerate's mode for this run; warns when an FSDP config silently became another mode.

    accelerate turns FSDP on only for GPUs and other accelerators: with an FSDP config on CPU processes it trains
    plain DDP and says nothing (accelerate 1.15, ``AcceleratorState.__init__``).
    """
    mode = trainer.accelerator.distributed_type.value
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and mode != "FSDP":
        warnings.warn(f"the accelerate config asks for FSDP, but accelerate runs {mode} here", stacklevel=2)
    return mode


def parameter_counts(model) -> tuple[int, int]:
    """Trainable and total parameters; PEFT's own count for an adapter (prompt encoders, packed 4-bit weights)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    return model.num_parameters(only_trainable=True), model.num_parameters()


def method_of(recipe: Recipe) -> str:
    return method_label(recipe.method, recipe.adapter, recipe.model.quantization)


def describe(recipe: Recipe, model: PreTrainedModel, trainable: int, total: int) -> dict:
    """The provenance fields known before training: what is trained, on which base, from which recipe."""
    from peft_gpt2.models.loading import config_fingerprint

    return dict(
        name=recipe.name,
        method=method_of(recipe),
        base_model=recipe.model.name,
        base_model_path=model.config._name_or_path or recipe.model.name,
        base_config_fingerprint=config_fingerprint(model.config),
        model_type=model.config.model_type,
        template=recipe.data.template,
        data_format=recipe.data.format,
        trainable_parameters=trainable,
        total_parameters=total,
        recipe=recipe_dict(recipe),
        versions=main_versions(),
        installed=installed_versions(),
    )


def save_run(trainer, recipe: Recipe, tokenizer, test: list[dict], provenance: Provenance, *, overwrite: bool) -> None:
    """Write the run folder beside ``recipe.out_path`` and rename it into place; drop the run's checkpoints.

    PEFT folder (or full model), tokenizer, resolved recipe, test split, log, provenance, model card. Under torchrun /
    accelerate launch every process calls ``save_model`` (FSDP gathers the sharded weights there); only the main
    process writes and publishes, the others wait for it.
    """
    out = recipe.out_path
    check_writable(out.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.tmp-", dir=out.parent))
    try:
        stage = work / "out"
        trainer.save_model(str(stage))
        if trainer.is_world_process_zero():
            if getattr(trainer, "initial_adapter", None):  # PiSSA: saved as plain LoRA over the original base
                trainer.model.save_pretrained(stage, path_initial_model_for_weight_conversion=trainer.initial_adapter)
            (stage / "training_args.bin").unlink(missing_ok=True)  # a pickle; the resolved recipe says the same
            tokenizer.save_pretrained(stage)
            (stage / RECIPE).write_text(dump_recipe(recipe), encoding="utf-8")
            if test:
                save_records(test, stage / TEST_SPLIT)
            (stage / TRAIN_LOG).write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
            provenance.write(stage)
            write_extras(stage, trainer, provenance, str(out))  # model card, loss.png, TensorBoard runs/
            try:
                publish_folder(stage, out, overwrite=overwrite)  # a run that took the name meanwhile is not replaced
            except PeftGpt2Error:  # it did: there is nothing to resume into, so leave no checkpoints behind either
                discard_checkpoints(recipe)
                raise
            discard_checkpoints(recipe)  # the run is complete; its checkpoints are not needed
        trainer.accelerator.wait_for_everyone()
    finally:
        shutil.rmtree(work, ignore_errors=True)
