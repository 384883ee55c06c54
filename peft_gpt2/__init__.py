"""peft-gpt2: fine-tune GPT-2 with LoRA adapters, compare them honestly, serve many over one base."""

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models import load_base, load_tokenizer

__all__ = ["PeftGpt2Error", "load_base", "load_tokenizer"]
__version__ = "0.1.0"
