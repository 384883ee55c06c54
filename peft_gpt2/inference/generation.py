r"""Batched generation of completions for a list of prompts, the one path evaluation and serving share.

    python -c "from peft_gpt2.models.loading import load_base; from peft_gpt2.inference.generation import generate; \
m, t = load_base('tiny-gpt2'); print(generate(m, t, ['### Instruction:\\nSay hi\\n\\n### Response:\\n']))"

Prompts are left-padded (a decoder-only model continues from the last position of every row) and
sorted by length into batches, to waste little compute on padding. Generation stops at eos or at a
stop string such as ``"### "``: the next template section, which a fine-tuned model starts after its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.models.loading import max_positions

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
