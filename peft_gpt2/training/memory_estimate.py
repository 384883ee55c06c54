"""Peak training memory, estimated from the model and recipe before step 1, and measured after.

    python -c "from peft_gpt2.training.memory_estimate import available_memory; print(available_memory())"

The estimate is arithmetic, not a measurement: weights as loaded, gradients and optimizer state of the trainable
parameters, and the activations of the longest micro-batch (every layer's saved tensors, plus the logits, which
on a small model with a 50k vocabulary are often the largest part). It is meant to say "this will not fit" before
an hour of data loading and a crash at step 1, not to the last megabyte.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

# Optimizer state bytes per trainable parameter, by the start of ``TrainingArguments.optim``: AdamW keeps two
# fp32 moments (8 B), its 8-bit versions two 1-byte ones plus block scales (~2 B), Lion one moment, Adafactor
# factored rows and columns (about nothing per parameter), plain SGD (no momentum by default) none.
OPTIMIZER_STATE_BYTES = (("adafactor", 0), ("sgd", 0), ("lion_8bit", 1), ("lion", 4), ("8bit", 2))
ADAMW_STATE_BYTES = 8
# fp32 logits, their log-softmax kept for backward, and its gradient, alive together in backward: the model's own
# loss, which we use off CUDA (``sft.CompletionTrainer``). TRL's chunked loss on CUDA holds less: there the
# estimate errs high.
LOGIT_COPIES = 3


@dataclass
class MemoryEstimate:
    """Bytes of each part of the peak; ``total`` is their sum."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits


def optimizer_state_bytes(optim: str) -> int:
    """State bytes per trainable parameter for a ``TrainingArguments.optim`` name (AdamW unless known otherwise)."""
    optim = str(getattr(optim, "value", optim)).lower()
    return next((b for key, b in OPTIMIZER_STATE_BYTES if key in optim), ADAMW_STATE_BYTES)


def activation_elements_per_token(config, *, gated_mlp: bool, seq_len: int, eager_attention: bool) -> int:
    """Elements autograd keeps per token and layer: norm inputs and outputs (4h), q, k, v (h + 2 kv), the
    attention output (h), the MLP's intermediate tensors (2i for GPT-2's fc and gelu, 4i for a gated MLP's gate,
    up, activation and product), and with eager attention the scores and probabilities (2 x heads x seq_len);
    SDPA keeps none of those."""
    h, heads = config.hidden_size, config.num_attention_heads
    kv = h * getattr(config, "num_key_value_heads", heads) // heads
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h
    per_layer = 4 * h + (h + 2 * kv) + h + (4 if gated_mlp else 2) * inner
    return per_layer + (2 * heads * seq_len if eager_attention else 0)


def estimate_peak(model, *, micro_batch: int, seq_len: int, optim: str, half: bool, checkpointing: bool):
    """The peak of one training step on the longest micro-batch (``micro_batch`` rows of ``seq_len`` tokens).

    ``half``: bf16/fp16 autocast, so layer activations take 2 bytes (logits are upcast to fp32 for the loss).
    ``checkpointing``: only each layer's input is kept, plus one layer's activations while it is recomputed.
    """
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params) + sum(b.nbytes for b in model.buffers())
    trainable = [p for p in params if p.requires_grad]
    config = model.config.get_text_config()
    gated = any(name.endswith("gate_proj") for name, _ in model.named_modules())
    eager = getattr(config, "_attn_implementation", "sdpa") == "eager"
    per_layer = activation_elements_per_token(config, gated_mlp=gated, seq_len=seq_len, eager_attention=eager)
    layers, tokens = config.num_hidden_layers, micro_batch * seq_len
    kept = layers * config.hidden_size + per_layer if checkpointing else layers * per_layer
    return MemoryEstimate(
        weights=weights,
        gradients=sum(p.numel() * p.element_size() for p in trainable),
        optimizer=sum(p.numel() for p in trainable) * optimizer_state_bytes(optim),
        activations=tokens * kept * (2 if half else 4),
        logits=tokens * config.vocab_size * 4 * LOGIT_COPIES,
    )


def available_memory() -> tuple[int, str] | None:
    """Memory this run can reach, and what it is: the GPU's total on CUDA; on CPU, this process's resident
    memory plus the system's available memory (psutil, else /proc/meminfo). ``None`` when unknown."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory, "GPU memory"
    rss = resident_bytes()
    try:
        import psutil

        return rss + psutil.virtual_memory().available, "RAM (this process + available)"
    except ImportError:
        pass
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return rss + int(line.split()[1]) * 1024, "RAM (this process + available)"
    return None


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``; 0 where unknown)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def reset_peak_memory() -> None:
    """Count this run's peak from now on. The counters are process-wide (``ru_maxrss``, CUDA's
    ``max_memory_allocated``): in a sweep or pipeline, which trains its runs in one process, each run would
    otherwise report the largest peak of every run before it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS (VmHWM) starts again from the RSS now


def peak_memory_mb() -> float:
    """Peak GPU memory allocated (CUDA) or peak process RSS (CPU) since ``reset_peak_memory``, in MiB."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(x for x in status if x.startswith("VmHWM:")).split()[1]) / 1024  # kB
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
