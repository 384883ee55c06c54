"""Sweeps: variants of one recipe, trained and compared in one report, as a pipeline (skips and --rerun included)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TOY_DATA, write_recipe

from peft_gpt2.cli.main import main
from peft_gpt2.cli.sweep import expand
from peft_gpt2.errors import PeftGpt2Error


def test_a_sweep_is_a_pipeline_of_its_variants_and_one_compare():
    sweep = {"recipe": "r.yaml", "set": ["train.max_steps=3"], "variants": {"lora": None, "ia3": ["method=ia3"]}}
    stages = expand(sweep, "sweeps/toy.yaml")["stages"]
    assert stages == [
        {"name": "lora", "train": "r.yaml", "set": ["train.max_steps=3", "name=toy-lora"]},
        {"name": "ia3", "train": "r.yaml", "set": ["train.max_steps=3", "name=toy-ia3", "method=ia3"]},
        {"name": "toy", "compare": {"runs": ["lora", "ia3"]}},
    ]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"recipe": "r.yaml"}, "expected keys recipe, variants"),
        ({"recipe": "r.yaml", "variants": {}, "seed": 1}, "expected keys"),
        ({"recipe": "r.yaml", "variants": []}, "variants: a mapping"),
        ({"recipe": "r.yaml", "variants": {"../x": []}}, "'../x' must be a plain name"),
        ({"recipe": "r.yaml", "variants": {"toy": []}}, "other than 'toy'"),
        ({"recipe": "r.yaml", "variants": {"a": "method=ia3"}}, "variants.a: a list"),
        ({"recipe": "r.yaml", "set": "x=1", "variants": {"a": []}}, "set is a list"),
    ],
)
def test_bad_sweeps_name_the_key(sweep, message):
    with pytest.raises(PeftGpt2Error, match=message):
        expand(sweep, "sweeps/toy.yaml")


@pytest.mark.slow
def test_a_sweep_trains_each_variant_once_and_reports_them_together(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.json").write_text(json.dumps(TOY_DATA["A"] * 2))
    recipe = write_recipe(tmp_path / "base.yaml", train={"max_steps": 2})
    variants = {"lora": [], "ia3": ["method=ia3"], "full": ["method=full"]}
    compare = {"data": ["test"], "limit": 3, "max_new_tokens": 3}
    sweep = tmp_path / "toy.yaml"
    sweep.write_text(yaml.safe_dump({"sweep": {"recipe": str(recipe), "variants": variants, "compare": compare}}))
    assert main(["sweep", str(sweep)]) == 0
    report = json.loads((tmp_path / "reports" / "toy.json").read_text())
    rows = {row["model"]: row for row in report["rows"]}
    assert set(rows) == {"base", "toy-lora", "toy-ia3", "toy-full"}
    assert [rows[f"toy-{v}"]["method"] for v in variants] == ["lora", "ia3", "full"]
    sizes = [rows[f"toy-{v}"]["trainable_parameters"] for v in ("ia3", "lora", "full")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert (tmp_path / "reports" / "toy-tradeoff.png").exists()
    capsys.readouterr()
    assert main(["sweep", str(sweep)]) == 0  # finished: nothing trains again
    assert capsys.readouterr().out.count("done already") == 4
