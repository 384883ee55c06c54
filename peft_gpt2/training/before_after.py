"""A few held-out records answered by the base model and by the trained one, side by side, after training.

    peft-gpt2 train recipes/quickstart.yaml          # recipe key show_examples: 3

Validation loss says training worked; answers show it to a person. The base's answers come from the same model
with the adapter switched off (PEFT's ``disable_adapter``), so no second copy of the base is loaded; a full
fine-tune has no adapter to switch off, so its base answers are generated before training. Answers are decoded
with the recipe's ``generation`` settings, as ``eval`` and ``compare`` would decode them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft_gpt2.config.recipe import Recipe
from peft_gpt2.evaluation.evaluate import answer_records


@dataclass
class BeforeAfter:
    """The first ``recipe.show_examples`` test records, answered before (base) and after (trained) training."""

    recipe: Recipe
    records: list[dict]
    base: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, recipe: Recipe, test: list[dict]) -> BeforeAfter:
        return cls(recipe, test[: recipe.show_examples])

    def _answers(self, model, tokenizer) -> list[str]:
        if not self.records:
            return []
        return answer_records(model, tokenizer, self.records, self.recipe.data.template, self.recipe.generation)

    def before_training(self, model, tokenizer) -> None:
        """Base answers of a full fine-tune, which has no adapter to switch off later."""
        if not hasattr(model, "disable_adapter"):
            self.base = self._answers(model, tokenizer)

    def after_training(self, model, tokenizer) -> None:
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                self.base = self._answers(model, tokenizer)
        self.trained = self._answers(model, tokenizer)

    def lines(self) -> list[str]:
        """What ``train`` prints: each record's input, the base's answer, the trained model's, and the reference."""
        if not self.records:
            return []
        out = [f"{len(self.records)} held-out test records, answered by the base model and by {self.recipe.name}:"]
        for i, (record, base, trained) in enumerate(zip(self.records, self.base, self.trained, strict=True), 1):
            prompt = record["instruction"] + (f"\n    {record['input']}" if record.get("input") else "")
            out += [f"[{i}] {prompt}", f"    base:      {base!r}", f"    trained:   {trained!r}"]
            out.append(f"    reference: {record.get('output', '')!r}")
        return out
