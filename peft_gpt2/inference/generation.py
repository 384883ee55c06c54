r"""Batched generation of completions for a list of prompts, the one path evaluation and serving share.

    python -c "from peft_gpt2.models.loading import load_base; from peft_gpt2.inference.generation import generate; \
m, t = load_base('tiny-gpt2'); print(generate(m, t, ['### Instruction:\\nSay hi\\n\\n### Response:\\n']))"

Prompts are left-padded (a decoder-only model continues from the last position of every row) and
sorted by length into batches, to waste little compute on padding. Generation stops at eos or at a
stop string such as ``"### "``: the next template section, which a fine-tuned model starts after its answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.models.loading import max_positions

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


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

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=lambda: ["### "])
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    batch_size: int = 64
    seed: int | None = None
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


TokenLogprob = tuple[int, float | None, tuple[tuple[int, float], ...]]
"""A token id, its log-probability under the model (``None`` for a prompt's first token) and the top ones."""


@dataclass(frozen=True)
class Completion:
    """One generated answer: its text, how many tokens the model generated for it, and why it ended.

    ``finish_reason`` is ``"stop"`` (eos or a stop string) or ``"length"`` (``max_new_tokens`` ran out first), as
    in OpenAI's API; ``tokens`` counts the tokens generated for the answer (an ending eos not included).
    """

    text: str
    tokens: int
    finish_reason: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the server's, when asked for: the echoed prompt's, then the answer's

    def __str__(self) -> str:
        return self.text


def stop_window(stop: list[str]) -> int:
    """How many newest tokens to decode to see a stop string that ends in the newest one (see ``StopText``)."""
    return max(len(s.encode("utf-8")) for s in stop) + 1


class StopText:
    """Stops a row once its generated text holds a stop string; a stopping criterion for ``model.generate``.

    transformers' ``StopStringCriteria`` scans the whole vocabulary for each new stop list (3 s for 4 strings of
    64 characters with GPT-2's), which stalled every request batched with a client's own list. This one costs
    nothing to build: each step it decodes the newest tokens of each row and looks for the strings. A match new at
    this step ends in the newest token and spans at most as many tokens as the string has UTF-8 bytes (a token is
    at least one byte); one more token keeps the match off the window's first token, which some decoders treat
    apart (SentencePiece drops its leading space). Rows are matched after ``width`` (the padded prompt), never in
    the prompt; a row whose newest token is eos has ended anyway.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str], width: int, eos_ids: set[int]) -> None:
        self.tokenizer, self.stop, self.width, self.eos_ids = tokenizer, stop, width, eos_ids
        self.window = stop_window(stop)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        rows = input_ids[:, self.width :].tolist()
        tails = self.tokenizer.batch_decode([r[-self.window :] for r in rows], skip_special_tokens=True)
        done = [
            bool(r) and (r[-1] in self.eos_ids or any(s in t for s in self.stop))
            for r, t in zip(rows, tails, strict=True)
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text before the first stop string, without surrounding whitespace."""
    end = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:end].strip()


def end_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: GenerationSettings) -> list[int]:
    """The tokens that end an answer: the model's eos (a list for models with several), else the tokenizer's, and
    ``settings.stop_token_ids``, each once."""
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    return list(dict.fromkeys([*(eos if isinstance(eos, list) else [eos]), *settings.stop_token_ids]))


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    settings: GenerationSettings | None = None,
    *,
    adapter_names: list[str] | None = None,
) -> list[Completion]:
    """Generate one completion per prompt, returned in the order of ``prompts``.

    Args:
        model (`PreTrainedModel` or `PeftModel`): A causal LM; run in eval mode (restored afterwards).
        tokenizer (`PreTrainedTokenizerBase`): Its tokenizer, with a pad token; left padding is asked
            for per call, so the tokenizer's own ``padding_side`` (right, for training) is never changed.
        prompts (`list[str]`): Full prompts, template included.
        settings (`GenerationSettings`, *optional*): Greedy, stopping at ``"### "``, by default.
        adapter_names (`list[str]`, *optional*): One PEFT adapter name per prompt (``"__base__"`` for
            none), to serve several adapters in one batch.

    Returns:
        `list[Completion]`: The continuations without the prompt, cut before eos and the first stop string,
        stripped, with their generated token counts and finish reasons.
    """
    import torch

    settings = settings or GenerationSettings()
    if not prompts:
        return []
    if adapter_names is not None and len(adapter_names) != len(prompts):
        raise PeftGpt2Error(f"got {len(adapter_names)} adapter_names for {len(prompts)} prompts")
    eos = end_ids(model, tokenizer, settings)
    eos_ids = set(eos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids))
    config = settings.generation_config(eos, pad_id)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)

    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    limit = max_positions(model.config)
    if limit and max(lengths) + settings.max_new_tokens > limit:
        raise PeftGpt2Error(
            f"a prompt of {max(lengths)} tokens + max_new_tokens={settings.max_new_tokens} "
            f"exceeds the model's {limit} positions; shorten it or lower max_new_tokens"
        )
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first: out-of-memory shows early
    results: list[Completion] = [None] * len(prompts)  # type: ignore[list-item]
    was_training = model.training
    model.eval()
    per_call = 1 if _inserts_virtual_tokens(model) else settings.batch_size
    try:
        for start in range(0, len(order), per_call):
            idx = order[start : start + per_call]
            names = [adapter_names[i] for i in idx] if adapter_names is not None else None
            rows = _generate_batch(model, tokenizer, [prompts[i] for i in idx], config, settings.stop, eos_ids, names)
            for i, row in zip(idx, rows, strict=True):
                results[i] = completion_of(row, eos_ids, tokenizer, settings)
    finally:
        model.train(was_training)
    return results


def _inserts_virtual_tokens(model) -> bool:
    """Whether the active adapter inserts virtual token embeddings (prompt tuning, P-tuning): PEFT puts them in
    front of a row's left padding, which changes that row's answer, so such rows are generated one per call.
    Prefix tuning puts its tokens in the cache, where padding does not move them."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning and config.peft_type != "PREFIX_TUNING")


def _generate_batch(model, tokenizer, prompts: list[str], config, stop, eos_ids, adapter_names) -> list[list[int]]:
    """One left-padded ``model.generate`` call; the generated token ids of each row."""
    import torch
    from transformers import StoppingCriteriaList

    batch = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt").to(model.device)
    width = batch["input_ids"].shape[1]
    extra: dict = {"adapter_names": adapter_names} if adapter_names is not None else {}
    if stop:  # matched in the generated part only: a stop string begun in the prompt ("...###" + " foo" for
        # "### ") does not end the row, as transformers' own stop_strings would
        extra["stopping_criteria"] = StoppingCriteriaList([StopText(tokenizer, stop, width, eos_ids)])
    with torch.inference_mode():
        out = model.generate(**batch, generation_config=config, **extra)
    return out[:, width:].tolist()


def completion_of(row: list[int], eos_ids: set[int], tokenizer, settings: GenerationSettings) -> Completion:
    """A generated row as text, token count and finish reason.

    A row that ended early is padded with the pad token, which for GPT-2 is eos: so the count stops at the first
    eos and does not include it, whether the model wrote it or the row was padded after a stop string.
    """
    end = next((k for k, t in enumerate(row) if t in eos_ids), len(row))
    raw = tokenizer.decode(row[:end], skip_special_tokens=True)
    text = cut_at_stop(raw, settings.stop)
    stopped = end < len(row) or end < settings.max_new_tokens or any(s in raw for s in settings.stop)
    return Completion(text, end, "stop" if stopped else "length")
