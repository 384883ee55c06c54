"""How step mode turns a row's logits into scores to choose from: transformers' own logits processors, built from
the same ``GenerationConfig`` that batch mode's ``generate`` gets (``GenerationSettings.generation_config``), in
the order ``generate`` applies them, so both modes sample alike by construction.

Only the choice differs: a step row draws from its own seeded ``torch.Generator`` (``decode_rows.Row``), so a
seeded sample does not depend on its batch-mates; ``generate`` seeds torch once per call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft_gpt2.errors import PeftGpt2Error

if TYPE_CHECKING:
    from transformers import LogitsProcessorList

    from peft_gpt2.inference.settings import GenerationSettings


def logits_processors(settings: GenerationSettings, eos_ids: list[int], pad_id: int) -> LogitsProcessorList:
    """What ``generate`` applies to each step's scores for ``settings``: the repetition penalty and n-gram block,
    then, when sampling, temperature, top-k and top-p (``GenerationMixin._get_logits_processor``'s order)."""
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    config = settings.generation_config(eos_ids, pad_id)  # its unset fields are None
    if settings.num_beams > 1:
        raise PeftGpt2Error("step-wise decoding has no beam search; num_beams must be 1")
    out = LogitsProcessorList()
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.no_repeat_ngram_size:
        out.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            out.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            out.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
        if config.top_p is not None and config.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    return out
