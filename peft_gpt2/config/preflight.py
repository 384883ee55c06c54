"""Refusals that need no library, made before torch, transformers and TRL import (16-40 s on a busy CPU).

    peft-gpt2 train recipes/quickstart.yaml   # adapters/quickstart exists: refused in about a second

``load_recipe`` checks the ``train`` and method sections against TRL's and PEFT's config classes, which imports
them; everything else (the YAML, ``--set`` syntax, our own sections, where the output goes, the data path) is
checked here first, from the recipe without those two sections. ``train.train`` makes the same checks again, for
callers of the Python API.
"""

from __future__ import annotations

from pathlib import Path

from peft_gpt2.config.recipe import Recipe, load_recipe
from peft_gpt2.data.sources import is_hub_name
from peft_gpt2.errors import PeftGpt2Error

# what each data format reads as a file when the path ends so (anything else not path-like is a hub data set name)
FILE_SUFFIXES = {"instructions": (".json", ".jsonl"), "data_to_text": (".csv",)}


def check_train(path: str, overrides: list[str], *, overwrite: bool) -> Recipe:
    """The recipe without its library sections, after refusing an existing output folder or missing data.

    Whether the output folder can be written is checked by ``train`` after the library sections: the check creates
    the folder, which a recipe refused for a bad ``train.*`` key must not leave behind."""
    recipe = load_recipe(path, overrides, library_sections=False)
    check_new_output(recipe, overwrite=overwrite)
    check_data_path(recipe.data.path, recipe.data.format)
    return recipe


def check_new_output(recipe: Recipe, *, overwrite: bool) -> None:
    """Refuse to replace a finished run by accident (here, and again in ``train`` for the Python API)."""
    if recipe.out_path.exists() and not overwrite:
        raise PeftGpt2Error(
            f"{recipe.out_path} already exists; choose another name (--set name=...) or pass --overwrite"
        )


def check_data_path(source: str, data_format: str) -> None:
    """Refuse a local data path that does not exist, in the words the data loaders use (``sources``, ``corpus``)."""
    if source.startswith(("http://", "https://")) or Path(source).expanduser().exists():
        return
    if data_format == "text":
        raise PeftGpt2Error(f"corpus file or folder {source} does not exist")
    if not is_hub_name(source, FILE_SUFFIXES[data_format]):
        raise PeftGpt2Error(f"data file {source} does not exist")
