"""One request row during step-wise decoding: choosing its next token, noticing it is done, and its streamed text.

Kept apart from the step runner (``step_runner``) because this is per-row arithmetic with no threads or batches.
Every row carries its own settings, so rows with different temperatures, stop strings and seeds share a step. Its
scores are its logits through transformers' logits processors for its settings (``sampling``: what ``generate``
applies in batch mode); a seeded row draws from its own ``torch.Generator``, so what it samples does not depend on
its batch-mates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peft_gpt2.inference.generation import Completion, TokenLogprob, completion_of, cut_at_stop, stop_window

if TYPE_CHECKING:
    import torch
    from transformers import LogitsProcessorList, PreTrainedTokenizerBase

    from peft_gpt2.inference.settings import GenerationSettings
    from peft_gpt2.serving.jobs import Job


@dataclass(eq=False)
class Row:
    """One prompt of a job: its prompt ids, what it generated, and the text already streamed."""

    job: Job
    index: int
    ids: list[int]
    eos_ids: set[int]
    processors: LogitsProcessorList | None = None  # ``sampling.logits_processors`` for the job's settings
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    generator: torch.Generator | None = None
    sent: str = ""
    done: bool = False
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # echo: the prompt's, first token None

    @property
    def settings(self) -> GenerationSettings:
        return self.job.request.settings

    @property
    def pending(self) -> int:
        """The token the next step feeds: the newest one generated."""
        return self.generated[-1]

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits ``[vocab]``: the processors' scores' argmax, or a sample of them."""
        import torch

        scores = logits.float()[None]
        if self.processors:  # temperature, top-k, top-p...: each needs the row's ids so far, as in ``generate``
            ids = torch.tensor([self.ids + self.generated], device=scores.device)
            scores = self.processors(ids, scores)
        if not self.settings.do_sample:
            return int(scores.argmax())
        return int(torch.multinomial(scores[0].softmax(-1), 1, generator=self.generator))

    def accept(self, token: int, logprob: TokenLogprob | None, tokenizer: PreTrainedTokenizerBase) -> None:
        """Append ``token``; mark the row done at eos or an end-of-turn token, a stop string or ``max_tokens``."""
        self.generated.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        s = self.settings
        if token in self.eos_ids or len(self.generated) >= s.max_new_tokens:
            self.done = True
        elif s.stop:  # a stop string new at this step ends in the newest token: decode that many bytes' tokens
            tail = tokenizer.decode(self.generated[-stop_window(s.stop) :], skip_special_tokens=True)
            self.done = any(t in tail for t in s.stop)

    def completion(self, tokenizer: PreTrainedTokenizerBase) -> Completion:
        """The finished row, as ``generate`` would have answered it (text cut at a stop string and stripped)."""
        done = completion_of(self.generated, self.eos_ids, tokenizer, self.settings)
        kept = self.logprobs[: done.tokens]  # not an ending eos, as in the text
        return Completion(done.text, done.tokens, done.finish_reason, tuple(self.prompt_logprobs + kept))

    def new_text(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """The text to stream now: what is certain to begin the final answer and was not sent yet.

        Held back until certain: leading and trailing whitespace (the answer is stripped), a tail that may begin a
        stop string, and an incomplete UTF-8 character (decoded as U+FFFD). The rest comes with the final answer.
        """
        raw = tokenizer.decode(self.generated, skip_special_tokens=True).rstrip("\ufffd")
        hold = max((n for s in self.settings.stop for n in range(1, len(s)) if raw.endswith(s[:n])), default=0)
        text = cut_at_stop(raw[: len(raw) - hold], self.settings.stop)
        if not text.startswith(self.sent):  # a decoder that revised earlier text: wait for the final answer
            return ""
        new, self.sent = text[len(self.sent) :], text
        return new
