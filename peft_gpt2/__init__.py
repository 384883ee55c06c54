"""peft-gpt2: fine-tune GPT-2 with LoRA adapters, compare them honestly, serve many over one base."""

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.loading import load_base, load_tokenizer

__all__ = ["AdapterSet", "PeftGpt2Error", "evaluate_model", "load_base", "load_tokenizer"]


def __getattr__(name: str):
    """Import the heavier pieces on first use, so ``peft-gpt2 --help`` stays instant."""
    if name == "AdapterSet":
        from peft_gpt2.adapters.adapter_set import AdapterSet

        return AdapterSet
    if name == "evaluate_model":
        from peft_gpt2.evaluation.evaluate import evaluate_model

        return evaluate_model
    raise AttributeError(f"module 'peft_gpt2' has no attribute {name!r}")


__version__ = "0.1.0"
