"""Recipe schema: every shipped recipe validates; every mistake is named before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from peft_gpt2.config import Recipe, dump_recipe, load_recipe
from peft_gpt2.errors import PeftGpt2Error

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


BASIC = "model: {name: tiny-gpt2}\ndata: {path: d.json}\n"


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name
    assert recipe.method in ("full", "lora", "lora-8bit")
    text = path.read_text()
    assert text.startswith("#") and f"peft-gpt2 train recipes/{path.name}" in text  # opens with its command


def test_shipped_recipes_cover_the_issue():
    names = {p.stem for p in RECIPES}
    for expected in (
        "quickstart",
        "alpaca_full",
        "alpaca_lora",
        "alpaca_lora_8bit",
        "alpaca_full_medium",
        "alpaca_lora_medium",
        "alpaca_lora_8bit_medium",
    ):
        assert expected in names
    assert load_recipe(Path("recipes/alpaca_lora_8bit_medium.yaml")).model.name == "gpt2-medium"


def test_overrides_apply_in_order_and_keep_types(tmp_path):
    recipe = load_recipe(
        write(tmp_path, BASIC),
        [
            "train.max_steps=20",
            "data.limit=200",
            "train.learning_rate=1e-3",
            "lora.target_modules=[c_attn, c_fc]",
            "train.max_steps=30",
        ],
    )
    assert recipe.train.max_steps == 30
    assert recipe.data.limit == 200
    assert recipe.train.learning_rate == pytest.approx(1e-3)
    assert recipe.lora.target_modules == ["c_attn", "c_fc"]
    assert recipe.name == "r"  # defaults to the file name


def test_int_widens_to_float(tmp_path):
    assert load_recipe(write(tmp_path, BASIC + "train: {learning_rate: 1}\n")).train.learning_rate == 1.0


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, BASIC), ["lora.r=4"])
    again = load_recipe(write(tmp_path, dump_recipe(recipe)))
    assert again == recipe
    assert isinstance(again, Recipe)


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        (BASIC + "trian: {}\n", [], "unknown recipe key trian; did you mean train?"),
        (BASIC, ["train.learning_rat=1"], "unknown recipe key train.learning_rat; did you mean train.learning_rate?"),
        (BASIC, ["lora.rank=4"], "unknown recipe key lora.rank"),
        (BASIC, ["lora.r=0"], "lora.r: must be >= 1"),
        (BASIC, ["lora.r=eight"], "lora.r: must be int, got str"),
        (BASIC, ["lora.r=true"], "lora.r: must be int, got bool"),
        (BASIC, ["train.learning_rate=-1e-4"], "train.learning_rate: must be > 0"),
        (BASIC, ["data.split=[0.8, 0.1, 0.2]"], "data.split: fractions must sum to 1"),
        (BASIC, ["data.split=[0.9, 0.1]"], "data.split: must be three fractions"),
        (BASIC, ["method=qlora"], "method: must be one of"),
        (BASIC, ["data.template=chatml"], "data.template: must be one of"),
        (BASIC, ["data.limit=10", "data.fraction=0.5"], "set limit or fraction, not both"),
        (BASIC, ["train.precision=fp8"], "train.precision: must be one of"),
        (BASIC, ["name=../escape"], "name: must be a plain folder name"),
        ("model: {name: tiny-gpt2}\n", [], "data.path: is required"),
        (BASIC + "train: 3\n", [], "train: must be a mapping"),
        ("- a\n- b\n", [], "must be a mapping of keys"),
        ("model: {name: [unclosed\n", [], "is not valid YAML"),
        (BASIC, ["nokey"], "--set expects key=value"),
    ],
)
def test_bad_recipes_fail_clearly(tmp_path, text, overrides, message):
    with pytest.raises(PeftGpt2Error) as err:
        load_recipe(write(tmp_path, text), overrides)
    assert message in str(err.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(PeftGpt2Error, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
