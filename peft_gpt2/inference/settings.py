"""How answers are decoded: ``GenerationSettings`` (greedy, sampling, beams, stops; a recipe's ``generation``
section and the eval/compare flags), how flags and runs' recorded settings combine, and one line for a report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error

if TYPE_CHECKING:
    from transformers import GenerationConfig


MIN_TEMPERATURE = (
    1e-5  # lower, logits / temperature can overflow float32 into NaN probabilities; greedy in all but name
)
MAX_SEED = 2**64 - 1  # torch.manual_seed takes 64 bits; it wraps a negative seed, so -1 would be 2**64 - 1 too


def is_text(text: str) -> bool:
    """Whether ``text`` is Unicode a tokenizer can take: a lone surrogate (JSON's ``"\\ud800"``) is not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class GenerationSettings:
    """How to decode; field names are ``model.generate`` keyword arguments where one exists.

    Args:
        max_new_tokens (`int`, defaults to 128): Tokens generated at most per prompt.
        do_sample (`bool`, defaults to `False`): Greedy by default, so evaluations are reproducible.
        temperature, top_k, top_p (defaults 1.0, 50, 1.0): Sampling filters, used only with ``do_sample``.
        repetition_penalty (`float`, defaults to 1.0): > 1 discourages repeats. Transformers also
            penalizes the pad token in left-padded rows, so with a penalty batching can change results.
        stop (`list[str]`, defaults to ``["### "]``): The completion ends before the first of these.
        num_beams (`int`, defaults to 1): > 1 is beam search (the LoRA paper's E2E decoding: 10), one answer per
            prompt; with stop strings, a beam ends when its text holds one.
        length_penalty (`float`, defaults to 1.0): beam scores are divided by length ** length_penalty
            (< 1 favours shorter answers; the paper: 0.8). Beam search only.
        no_repeat_ngram_size (`int`, defaults to 0): > 0 forbids repeating any n-gram of that size (the paper: 4).
        batch_size (`int`, defaults to 64): Prompts per ``generate`` call (bigger batches pay off, on CPU too).
        seed (`int`, *optional*): Seeds torch before sampling, for repeatable samples; 0 to ``MAX_SEED``.
        stop_token_ids (`list[int]`, defaults to ``[]``): tokens that end a row besides eos, such as a chat
            template's end-of-turn (ChatML's ``<|im_end|>``), which stop strings cannot see: they decode without
            special tokens.
    """

    # ``help``: the flag of eval, compare and chat (``--max-new-tokens``), written once here (cli/flags.py)
    max_new_tokens: int = field(default=128, metadata={"help": "tokens to generate at most"})
    do_sample: bool = False
    temperature: float = field(
        default=1.0, metadata={"help": "0 = greedy (the default); > 0 samples", "hide_default": True}
    )
    top_k: int = field(default=50, metadata={"help": "sample from the k likeliest tokens (0: all)"})
    top_p: float = field(default=1.0, metadata={"help": "sample from the smallest set this likely"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "> 1 discourages repeats"})
    stop: list[str] = field(default_factory=lambda: ["### "])
    num_beams: int = field(default=1, metadata={"help": "> 1: beam search (the LoRA paper's E2E: 10)"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam score / length**this (paper: 0.8)"})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "forbid repeated n-grams (paper: 4)"})
    batch_size: int = field(default=64, metadata={"help": "prompts per generate call"})
    seed: int | None = field(default=None, metadata={"help": "seed for sampling"})
    stop_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        rules = {
            "max_new_tokens": (self.max_new_tokens >= 1, ">= 1"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "temperature": (
                not self.do_sample or MIN_TEMPERATURE <= self.temperature < math.inf,
                f"finite and >= {MIN_TEMPERATURE} when do_sample (use greedy below)",
            ),
            "top_k": (self.top_k >= 0, ">= 0 (0 turns it off)"),
            "top_p": (0 < self.top_p <= 1, "in (0, 1]"),
            "repetition_penalty": (self.repetition_penalty > 0, "> 0 (1 turns it off)"),
            "num_beams": (self.num_beams >= 1 and not (self.num_beams > 1 and self.do_sample), ">= 1, 1 when sampling"),
            "no_repeat_ngram_size": (self.no_repeat_ngram_size >= 0, ">= 0 (0 turns it off)"),
            "stop": (
                isinstance(self.stop, list) and all(isinstance(s, str) and s and is_text(s) for s in self.stop),
                "a list of non-empty strings (no lone surrogates)",
            ),
            "seed": (self.seed is None or 0 <= self.seed <= MAX_SEED, f"None or 0 to {MAX_SEED} (torch's range)"),
        }
        for name, (ok, rule) in rules.items():
            if not ok:
                raise PeftGpt2Error(f"generation setting {name}={getattr(self, name)!r} must be {rule}")

    def generation_config(self, eos_token_id: int | list[int], pad_token_id: int) -> GenerationConfig:
        """transformers' ``GenerationConfig`` for these settings (sampling filters only when sampling)."""
        from transformers import GenerationConfig

        sampling = dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p) if self.do_sample else {}
        beams = dict(num_beams=self.num_beams, length_penalty=self.length_penalty) if self.num_beams > 1 else {}
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **sampling,
            **beams,
        )
        config.validate(strict=True)
        return config


def resolve_settings(given: dict, recorded: list[dict | None]) -> GenerationSettings:
    """``GenerationSettings`` from flags `given` (``temperature`` 0 = greedy) over runs' `recorded` ``generation``
    sections (``None``: none recorded), over the defaults. Runs that record different settings are refused: one
    comparison decodes every row alike."""
    from dataclasses import replace

    found = [r for r in recorded if r is not None]
    if any(r != found[0] for r in found):
        raise PeftGpt2Error(
            "the runs record different decoding settings (their recipes' generation sections); pass the flags "
            "(--max-new-tokens, --num-beams, ...) to decode them all alike"
        )
    settings = GenerationSettings(**found[0]) if found else GenerationSettings()
    given = dict(given)
    if "temperature" in given:
        temperature = given.pop("temperature")
        given.update(do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0)
    return replace(settings, **given)


def describe_decoding(settings: GenerationSettings) -> str:
    """One line for a report: how the answers were decoded."""
    if settings.do_sample:
        how = f"sampling T={settings.temperature}, top_p={settings.top_p}, top_k={settings.top_k}"
    elif settings.num_beams > 1:
        how = f"beam search {settings.num_beams}, length_penalty={settings.length_penalty}"
    else:
        how = "greedy"
    extra = f", no_repeat_ngram_size={settings.no_repeat_ngram_size}" if settings.no_repeat_ngram_size else ""
    return f"{how}, max_new_tokens={settings.max_new_tokens}{extra}"
