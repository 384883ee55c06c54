"""How a recipe becomes TRL's ``SFTTrainer``: the PEFT config, ``SFTConfig``, precision, LoRA+, and the loss.

Recipe sections are passed through (``LoraConfig(**recipe.lora)``, ``SFTConfig(**recipe.train)``); the few
translations are in ``sft_config`` and ``methods.adapter_config``, and the libraries validate the values they own.
The one behaviour we change is where TRL's loss is slow: see ``CompletionTrainer``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import Trainer
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from peft_gpt2.config.recipe import Recipe
from peft_gpt2.config.sections import OUR_TRAIN_KEYS
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.methods import adapter_config, library_config

if TYPE_CHECKING:
    from peft import PeftConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from trl import SFTConfig


def peft_config(recipe: Recipe, model: PreTrainedModel) -> PeftConfig:
    """The method's PEFT config from its recipe section, for ``model`` (see ``methods.adapter_config``)."""
    return adapter_config(recipe.method, recipe.adapter, model)


def resolve_precision(precision: str) -> str:
    """``auto`` -> bf16 (or fp16) on CUDA, bf16 autocast on an AVX-512 CPU (oneDNN runs bf16 there), else fp32."""
    import torch

    cuda = torch.cuda.is_available()
    cpu_bf16 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    if precision == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_bf16 else "fp32"
    if precision == "fp16" and not cuda:
        raise PeftGpt2Error("train.precision fp16 needs a CUDA GPU; on CPU use bf16 (if supported) or fp32")
    if precision == "bf16" and not (torch.cuda.is_bf16_supported() if cuda else cpu_bf16):
        raise PeftGpt2Error("train.precision bf16 is not supported on this device; use auto or fp32")
    return precision


def sft_config(recipe: Recipe, output_dir: Path, precision: str) -> SFTConfig:
    """``SFTConfig(**recipe.train)`` plus the translations below: the only recipe keys that are not SFTConfig's."""
    import torch
    from trl import SFTConfig

    t = recipe.train
    passthrough = {k: v for k, v in t.items() if k not in OUR_TRAIN_KEYS}
    return _library_config(
        "train",
        SFTConfig,
        **passthrough,
        output_dir=str(output_dir),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        data_seed=t["seed"],
        max_length=recipe.data.max_length,
        completion_only_loss=recipe.data.format != "text",
        eval_strategy="steps" if t["eval_steps"] else "no",
        eval_steps=t["eval_steps"],
        save_strategy="steps" if t["save_steps"] else "no",
        save_steps=t["save_steps"] or 500,
        train_sampling_strategy="group_by_length" if t["group_by_length"] else "random",
        include_num_input_tokens_seen="non_padding",  # recorded as tokens_seen, for equal-budget comparisons
        logging_nan_inf_filter=False,  # the default hides nan/inf losses from the log; we stop on them
    )


def trainer_args(recipe: Recipe, output_dir: Path, precision: str) -> SFTConfig:
    """``sft_config``, after checking the method's section with PEFT too: every value a library owns is checked
    here, before any model or data loads (``train`` and every train stage of a pipeline call it first)."""
    if recipe.method != "full":
        library_config(recipe.method, recipe.adapter)
    args = sft_config(recipe, output_dir, precision)
    check_trackers(args.report_to)
    return args


# train.report_to: transformers' availability check and the package to install, per tracker it supports.
TRACKERS = {
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "wandb": ("is_wandb_available", "wandb"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "comet_ml": ("is_comet_available", "comet-ml (and set COMET_API_KEY)"),
    "neptune": ("is_neptune_available", "neptune"),
    "clearml": ("is_clearml_available", "clearml"),
    "dagshub": ("is_dagshub_available", "dagshub mlflow"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "codecarbon": ("is_codecarbon_available", "codecarbon"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "trackio": ("is_trackio_available", "trackio"),
    "azure_ml": ("is_azureml_available", "azureml-core"),
    "flyte": ("is_flyte_deck_standard_available", "flytekit flytekitplugins-deck-standard"),
}


def check_trackers(report_to: list[str]) -> None:
    """Refuse a ``train.report_to`` tracker that is unknown or not installed now, not after the model loaded
    (transformers only fails when the Trainer builds its callbacks)."""
    from transformers import integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in report_to:
        if name not in INTEGRATION_TO_CALLBACK:
            known = ", ".join(["none", "all", *INTEGRATION_TO_CALLBACK])
            raise PeftGpt2Error(f"train.report_to: unknown tracker {name!r}; one of {known}")
        available, package = TRACKERS.get(name, (None, None))
        if available and not getattr(integrations, available)():
            raise PeftGpt2Error(f"train.report_to: {name} is not installed; pip install {package}")


def _library_config(section: str, cls: type, **kwargs):
    """Build a library config; a value it refuses is the user's recipe key, named."""
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise PeftGpt2Error(f"recipe section {section}: {cls.__name__} refused a value: {err}") from None


class CompletionTrainer(SFTTrainer):
    """``SFTTrainer`` that, off CUDA/XPU, takes the model's own cross-entropy instead of TRL's fused LM head.

    TRL 1.16 computes the loss with a chunked log-prob kernel that pays off with Triton (it scores only the
    label positions and never holds the logits). Without Triton it scores every position, prompt and padding
    included, in float32 tile by tile, and recomputes the logits in backward: our GPT-2 small LoRA trains
    1.32x faster with the model's own loss on a 2-core CPU (``bench/train_speed.py``). Both are the sum of
    the completion tokens' negative log-likelihood over the batch's token count (tests/training/test_train.py).
    What the CPU path does not log: TRL's per-step ``entropy`` and ``mean_token_accuracy``.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.device.type in ("cuda", "xpu"):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        if self.label_smoother is None or "labels" not in inputs:
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        # transformers shifts the labels only for a model whose class name it knows as a causal LM, and a prompt-
        # learning PEFT model shows it LlamaModel/GPT2Model: each logit was scored against its own input token (prefix
        # tuning's training loss fell to LoRA's while its held-out loss rose). Always shift; prompt tuning's virtual
        # tokens add logits in front, which no label scores.
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"][:, -labels.shape[1] :]
        loss = self.label_smoother({"logits": logits}, labels, shift_labels=True, num_items_in_batch=num_items_in_batch)
        return (loss, outputs) if return_outputs else loss


def keep_freed_memory() -> bool:
    """On glibc Linux, make ``free`` keep memory in the process instead of returning it to the OS.

    A CPU training step allocates and frees the same large buffers every step (logits alone are
    tokens x 50257 floats); glibc serves allocations over 32 MB with fresh ``mmap`` pages, so each step
    pays page faults and zeroing again. Keeping them (what jemalloc/tcmalloc setups do for PyTorch on
    CPU) is measured in ``bench/train_speed.py`` (lever "keep freed memory"): faster steps for a higher
    peak RSS. Left alone when the user chose an allocator or malloc settings (``LD_PRELOAD``,
    ``GLIBC_TUNABLES``, ``MALLOC_*`` variables). Returns whether it applied.
    """
    chosen = any(k in ("LD_PRELOAD", "GLIBC_TUNABLES") or k.startswith("MALLOC_") for k in os.environ)
    if chosen or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def make_trainer(
    recipe: Recipe,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    args: SFTConfig,
    train_rows: list[dict],
    val_rows: list[dict],
):
    """TRL's ``SFTTrainer``: on ``{"prompt", "completion"}`` pairs the loss is on the completion and its eos
    only; on ``{"input_ids"}`` blocks (a text corpus) it is on every token."""
    import datasets
    import torch

    if not torch.cuda.is_available():
        keep_freed_memory()
    trainer = CompletionTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(val_rows) if val_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config(recipe, model) if recipe.method != "full" else None,
    )
    if recipe.train["loraplus_lr_ratio"]:  # LoRA+: B learns faster than A; the Trainer keeps an optimizer it is given
        from peft.optimizers import create_loraplus_optimizer

        adam = dict(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, weight_decay=args.weight_decay)
        ratio = recipe.train["loraplus_lr_ratio"]
        trainer.optimizer = create_loraplus_optimizer(
            trainer.model, torch.optim.AdamW, lr=args.learning_rate, loraplus_lr_ratio=ratio, **adam
        )
    init = recipe.adapter.get("init_lora_weights")
    if isinstance(init, str) and init.startswith("pissa"):  # PiSSA rewrites the base weights: see save_initial
        trainer.initial_adapter = save_initial(trainer.model, Path(args.output_dir) / "initial-adapter")
    if recipe.train["padding_free"]:
        # TRL refuses padding_free with max_length set although it truncates the rows first; its own
        # padding-free collator on the truncated rows is the same thing.
        trainer.data_collator = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=True)
        check_examples_kept_apart(trainer.model, trainer.data_collator)
    return trainer


def save_initial(model, path: Path) -> Path:
    """Save a PiSSA adapter as initialised, labelled plain LoRA, so that the trained one can be saved as plain LoRA.

    PiSSA moves the base weights' principal components into the adapter (the base keeps the residual). PEFT saves
    the trained adapter against that residual base unless given this initial one
    (``path_initial_model_for_weight_conversion``): then it saves a plain LoRA of twice the rank against the
    original base, which loads without rewriting the base every other adapter shares.
    """
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True
    try:
        model.save_pretrained(path)
    finally:
        config.init_lora_weights = init
    return path


def check_examples_kept_apart(model: PreTrainedModel, collator: DataCollatorForLanguageModeling) -> None:
    """Refuse padding-free batches unless attention keeps the concatenated examples apart.

    A padding-free batch is one row of examples end to end with restarting ``position_ids``.
    FlashAttention (varlen) and, since transformers 5, SDPA/eager with ``use_cache=False`` mask across the
    boundaries; other attention code lets each example see the ones before it and trains on it silently
    (the packing pitfall). So: two examples, packed vs alone, must give the same logits.
    """
    import torch

    first, second = [[11, 12, 13], [21, 22, 23, 24]]
    packed = collator([{"input_ids": first}, {"input_ids": second}])
    packed = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in packed.items() if k != "labels"}
    alone = torch.tensor([second], device=model.device)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            together = model(**packed, use_cache=False).logits[0, len(first) :].float()
            apart = model(input_ids=alone, use_cache=False).logits[0].float()
    finally:
        model.train(training)
    if not torch.allclose(together, apart, rtol=1e-2, atol=1e-2):
        attn = model.config._attn_implementation
        raise PeftGpt2Error(
            f"train.padding_free: with {attn!r} attention, examples in a padding-free batch attend to each other "
            f"(max logit difference {(together - apart).abs().max():.3g}); set train.padding_free: false, or use "
            "attn_implementation flash_attention_2 on a GPU"
        )
