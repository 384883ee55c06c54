"""Recipe schema: every shipped recipe validates; every mistake is named before anything loads."""

from __future__ import annotations

import pytest
from conftest import REPO, alias_bomb, write_recipe

from peft_gpt2.config.recipe import Recipe, dump_recipe, load_recipe
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.training.trainer import peft_config, sft_config

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path, tmp_path, tiny):
    """Our checks, and the libraries' own (TRL's SFTConfig, PEFT's LoraConfig) on the values they own."""
    recipe = load_recipe(path)
    sft_config(recipe, tmp_path / "ck", "fp32")
    if recipe.method != "full":
        peft_config(recipe, tiny[0])  # every shipped recipe trains a GPT-2: its targets exist there
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
    assert load_recipe(REPO / "recipes" / "alpaca_lora_8bit_medium.yaml").model.name == "gpt2-medium"


def test_overrides_apply_in_order_and_keep_types(tmp_path):
    recipe = load_recipe(
        write_recipe(tmp_path / "r.yaml"),
        [
            "train.max_steps=20",
            "data.limit=200",
            "train.learning_rate=1e-3",
            "lora.target_modules=[c_attn, c_fc]",
            "train.max_steps=30",
        ],
    )
    assert recipe.train["max_steps"] == 30
    assert recipe.data.limit == 200
    assert recipe.train["learning_rate"] == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string
    assert recipe.lora["target_modules"] == ["c_attn", "c_fc"]
    assert recipe.out_path == tmp_path / "adapters" / "r"  # no name: the output folder is the file's name


def test_int_widens_to_float(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", train={"learning_rate": 1}))
    assert recipe.train["learning_rate"] == 1.0 and isinstance(recipe.train["learning_rate"], float)


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml"), ["lora.r=4", "train.optim=adamw_torch"])
    (tmp_path / "again.yaml").write_text(dump_recipe(recipe))  # what every run folder keeps
    again = load_recipe(tmp_path / "again.yaml")
    assert again == recipe
    assert isinstance(again, Recipe)


@pytest.mark.parametrize(
    ("sections", "overrides", "message"),
    [
        ({"trian": {}}, [], "unknown recipe key trian; did you mean train?"),
        ({}, ["train.learning_rat=1"], "unknown recipe key train.learning_rat; did you mean train.learning_rate?"),
        ({}, ["train.optimm=adamw_torch"], "unknown recipe key train.optimm; did you mean train.optim?"),  # SFTConfig's
        ({}, ["lora.rank=4"], "unknown recipe key lora.rank"),
        ({}, ["lora.r=0"], "lora.r: must be >= 1"),
        ({}, ["lora.r=eight"], "lora.r: must be int, got str"),
        ({}, ["lora.r=true"], "lora.r: must be int, got bool"),
        ({}, ["train.learning_rate=-1e-4"], "train.learning_rate: must be > 0"),
        ({}, ["train.eval_steps=0"], "train.eval_steps: must be >= 1 or null"),
        ({}, ["data.split=[0.8, 0.1, 0.2]"], "data.split: fractions must sum to 1"),
        ({}, ["data.split=[0.9, 0.1]"], "data.split: must be three fractions"),
        ({}, ["method=qlora"], "method: must be one of"),
        ({}, ["data.template=chatml"], "data.template: must be one of"),
        ({}, ["data.limit=10", "data.fraction=0.5"], "set limit or fraction, not both"),
        ({}, ["train.precision=fp8"], "train.precision: must be one of"),
        ({}, ["name=../escape"], "name: must be a plain folder name"),
        # keys we set ourselves name the recipe key that decides them
        ({}, ["train.bf16=true"], "train.bf16 is set by peft-gpt2 from train.precision"),
        ({}, ["train.eval_strategy=steps"], "train.eval_strategy is set by peft-gpt2 from train.eval_steps"),
        ({}, ["train.max_length=64"], "train.max_length is set by peft-gpt2 from data.max_length"),
        ({}, ["lora.task_type=SEQ_CLS"], "lora.task_type is set by peft-gpt2 from method"),
        ({"data": {"format": "text", "template": "short"}}, [], "data.template: does not apply to data.format: text"),
        ({"data": {"format": "text", "limit": 10}}, [], "data.limit: does not apply to data.format: text"),
        ({"data": {"path": None}}, [], "data.path: is required"),
        ({"train": 3}, [], "train: must be a mapping"),
        ({}, ["nokey"], "--set expects key=value"),
    ],
)
def test_bad_recipes_fail_clearly(tmp_path, sections, overrides, message):
    with pytest.raises(PeftGpt2Error) as err:
        load_recipe(write_recipe(tmp_path / "r.yaml", **sections), overrides)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("- a\n- b\n", "must be a mapping of keys"), ("model: {name: [unclosed\n", "is not valid YAML")],
)
def test_files_that_are_no_recipe_fail_clearly(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(PeftGpt2Error, match=message):
        load_recipe(tmp_path / "r.yaml")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(PeftGpt2Error, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_any_transformers_scheduler_loads_and_reaches_sft_config(tmp_path):
    """Our old list refused cosine_with_restarts; now the train section is SFTConfig's and transformers decides."""
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml"), ["train.lr_scheduler_type=cosine_with_restarts"])
    assert sft_config(recipe, tmp_path / "ck", "fp32").lr_scheduler_type == "cosine_with_restarts"


def test_unknown_scheduler_is_refused_by_transformers_with_the_choices(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml"), ["train.lr_scheduler_type=cosin"])
    with pytest.raises(PeftGpt2Error) as err:
        sft_config(recipe, tmp_path / "ck", "fp32")
    assert "recipe section train" in str(err.value) and "cosin is not a valid SchedulerType" in str(err.value)
    assert "cosine_with_restarts" in str(err.value)  # transformers lists the valid ones


def test_sft_config_keys_we_never_listed_pass_through(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", train={"optim": "adamw_torch"})
    recipe = load_recipe(path, ["train.adam_beta2=0.99", "train.weight_decay=0"])
    args = sft_config(recipe, tmp_path / "ck", "fp32")
    assert args.optim == "adamw_torch"
    assert args.adam_beta2 == pytest.approx(0.99) and args.weight_decay == 0.0


def test_peft_config_keys_we_never_listed_pass_through(tmp_path, tiny):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml"), ["lora.use_rslora=true", "lora.lora_alpha=4"])
    config = peft_config(recipe, tiny[0])
    assert config.use_rslora is True and config.lora_alpha == 4 and config.r == 4


def test_our_train_keys_become_the_trainer_settings_they_name(tmp_path):
    """The few recipe keys that are not SFTConfig's: what a user sets is what the trainer does."""
    recipe = load_recipe(
        write_recipe(tmp_path / "r.yaml", data={"max_length": 100}),
        ["train.eval_steps=5", "train.save_steps=7", "train.group_by_length=false", "train.seed=3"],
    )
    args = sft_config(recipe, tmp_path / "ck", "fp32")
    assert (args.eval_strategy, args.eval_steps) == ("steps", 5)
    assert (args.save_strategy, args.save_steps) == ("steps", 7)
    assert args.train_sampling_strategy == "random" and args.data_seed == 3 and args.max_length == 100
    assert args.completion_only_loss is True and not args.bf16 and not args.fp16

    args = sft_config(load_recipe(write_recipe(tmp_path / "r.yaml")), tmp_path / "ck", "bf16")
    assert args.eval_strategy == "no" and args.save_strategy == "no"  # no checkpoints unless asked for
    assert args.train_sampling_strategy == "group_by_length" and args.bf16
    text = write_recipe(tmp_path / "t.yaml", data={"format": "text"})
    assert sft_config(load_recipe(text), tmp_path / "ck", "fp32").completion_only_loss is False  # every token




def test_an_alias_bomb_is_refused_fast_naming_the_file(tmp_path):
    """Loading shares the aliased lists (cheap); checking or printing the recipe expanded 9**9 values (minutes)."""
    import time

    path = write_recipe(tmp_path / "r.yaml")
    path.write_text(path.read_text() + f"lora_targets: {alias_bomb()}\n")
    start = time.perf_counter()
    with pytest.raises(PeftGpt2Error, match=r"recipe .*r\.yaml: expands to more than 10,000 values"):
        load_recipe(path)
    with pytest.raises(PeftGpt2Error, match=r"--set lora\.target_modules: expands to more than 10,000 values"):
        load_recipe(write_recipe(tmp_path / "s.yaml"), [f"lora.target_modules={alias_bomb()}"])
    assert time.perf_counter() - start < 2


def test_small_anchors_still_work(tmp_path):
    path = write_recipe(tmp_path / "r.yaml")
    path.write_text(path.read_text().replace("max_length: 48", "max_length: 48\n  split: &s [0.8, 0.1, 0.1]"))
    recipe = load_recipe(path, ["lora.target_modules=[&t c_attn, *t]"])
    assert recipe.data.split == [0.8, 0.1, 0.1] and recipe.lora["target_modules"] == ["c_attn", "c_attn"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[" * 50_000, "nested too deeply"),
        ("1" * 5000, "Exceeds the limit (4300 digits) for integer string conversion"),
        ("2020-13-45", "month must be in 1..12"),
    ],
)
def test_values_python_cannot_build_are_our_error(tmp_path, value, message):
    """PyYAML raises RecursionError or ValueError for these, not YAMLError: a traceback before."""
    path = write_recipe(tmp_path / "r.yaml")
    path.write_text(path.read_text().replace("r: 4", f"r: {value}"))
    with pytest.raises(PeftGpt2Error, match=r"r\.yaml is not valid YAML") as err:
        load_recipe(path)
    assert message in str(err.value) and "set_int_max_str_digits" not in str(err.value)
    with pytest.raises(PeftGpt2Error, match="--set lora.r: value"):
        load_recipe(write_recipe(tmp_path / "s.yaml"), [f"lora.r={value}"])
