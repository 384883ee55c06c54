"""Library messages that tell a peft-gpt2 user nothing, silenced one by one; ``--verbose`` shows them all again.

    peft-gpt2 --verbose train recipes/quickstart.yaml   # every library message, as the libraries print it

Each message below was printed by every command, or by every training run, with the installed stack (torch 2.13,
transformers 5.23, peft 0.21, trl 1.16, bitsandbytes); none of them is about the user's recipe or data.

* bitsandbytes, at import (logger ``bitsandbytes.backends.cpu.ops``): "Failed to load CPU gemm_4bit_forward from
  kernels-community: No module named 'kernels' ...". bitsandbytes registers its CPU kernels when PEFT imports it,
  on every command, quantized or not; without the optional ``kernels`` package 4-bit matmuls on a CPU use its
  slower fallback. Filtered (not ours to fix: ``pip install kernels`` is a speed-up, not a requirement).
* transformers, FutureWarning: "`is_gradient_checkpointing` is deprecated ...". PEFT (``peft_model.py``) and TRL
  (``models/utils.py``) read the old property name on every model they wrap; our code never does. Filtered.
* transformers (logger ``transformers.modeling_utils``): "`loss_type=None` was set in the config but it is
  unrecognized. Using the default loss: `ForCausalLMLoss`." transformers picks the loss from the class name, and
  ``GPT2LMHeadModel`` has no ``ForCausalLM`` in it; the default it falls back to is the right loss. Filtered (the
  cause could be removed by setting ``model.loss_type = "ForCausalLM"`` where models load, ``models/loading.py``).
* transformers (same logger): "We strongly recommend passing in an `attention_mask` since your input_ids may be
  padded ...". Our own forward and generate calls pass the mask (``scoring``, ``generation``); with
  ``train.padding_free`` TRL's collator sends one unpadded row with ``position_ids`` and no mask, by design, and
  GPT-2's pad token is its eos, which ends every example. Filtered.
* torch DDP (C++, ``reducer.cpp``): "find_unused_parameters=True was specified in DDP constructor, but did not find
  any unused parameters ...", once per process under torchrun. transformers turns the search on for any model
  that is not a bare ``PreTrainedModel`` (a PEFT model); every trainable parameter of our methods is used in
  every forward. Fixed at the cause: ``train.ddp_find_unused_parameters`` defaults to false (``sections.py``),
  which also saves a graph traversal per step; a recipe can set it back to true.
"""

from __future__ import annotations

import logging
import re
import warnings

# (category, regex matched at the start of the message) for Python warnings
WARNINGS: tuple[tuple[type[Warning], str], ...] = ((FutureWarning, r"`is_gradient_checkpointing` is deprecated"),)
# logger name -> regexes matched at the start of a record's message
LOG_MESSAGES: dict[str, tuple[str, ...]] = {
    "bitsandbytes.backends.cpu.ops": (r"Failed to load CPU gemm_4bit_forward from kernels-community",),
    "transformers.modeling_utils": (
        r"`loss_type=None` was set in the config but it is unrecognized",
        r"We strongly recommend passing in an `attention_mask`",
    ),
}


class DropMessages(logging.Filter):
    """Drop the records of one logger whose message starts with one of ``patterns``; pass every other."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_libraries(verbose: bool = False) -> None:
    """Silence exactly the messages above (before the libraries import: bitsandbytes speaks at import time).

    A filter on the named logger only: the library's other messages, and its verbosity, stay as they were.
    """
    if verbose:
        return
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, patterns in LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(patterns))
