"""``show_examples``: held-out records answered by the base and by the trained model, printed after training."""

from __future__ import annotations

import json

import pytest
from conftest import TOY_DATA, write_recipe


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_base_answers_are_the_untouched_base_and_trained_answers_the_new_model(tmp_path, capsys, method):
    from peft_gpt2.config.recipe import load_recipe
    from peft_gpt2.evaluation.evaluate import answer_records
    from peft_gpt2.models.loading import load_base
    from peft_gpt2.training.train import train

    (tmp_path / "data.json").write_text(json.dumps(TOY_DATA["A"]))
    recipe = load_recipe(
        write_recipe(
            tmp_path / "r.yaml",
            method=method,
            lora={"r": 8} if method == "lora" else None,
            data={"split": [0.8, 0.1, 0.1]},
            train={"max_steps": 4, "learning_rate": 5e-2 if method == "lora" else 5e-3},
            generation={"max_new_tokens": 6},
            show_examples=2,
        )
    )
    run = train(recipe)
    out = capsys.readouterr().out
    test = json.loads((run.path / "test.json").read_text())[:2]
    base, tokenizer = load_base("tiny-gpt2")
    expected_base = answer_records(base.eval(), tokenizer, test, "short", recipe.generation)
    trained = answer_records(run.model, tokenizer, test, "short", recipe.generation)
    assert expected_base != trained  # the check below could not tell the two apart otherwise
    assert "2 held-out test records, answered by the base model and by r:" in out
    for record, b, t in zip(test, expected_base, trained, strict=True):
        assert f"    base:      {b!r}\n    trained:   {t!r}\n    reference: {record['output']!r}" in out


def test_show_examples_must_not_be_negative(tmp_path):
    from peft_gpt2.config.recipe import load_recipe
    from peft_gpt2.errors import PeftGpt2Error

    with pytest.raises(PeftGpt2Error, match="show_examples"):
        load_recipe(write_recipe(tmp_path / "r.yaml", show_examples=-1))
