"""A sweep: variants of one recipe (method, rank, learning rate, quantization: any key), trained, evaluated on the
same held-out data and compared in one report.

    peft-gpt2 sweep recipes/sweeps/e2e_methods.yaml [--rerun VARIANT ...]

A sweep file is a pipeline written short. ``expand`` turns it into one train stage per variant (the recipe, then the
sweep's shared ``set`` overrides, then the variant's own; the run is named ``<sweep>-<variant>``) and one compare
stage over all of them, named after the file, which ``pipeline`` checks and runs: finished variants are skipped,
``--rerun`` works the same, and every variant's recipe is checked before the first one trains.
"""

from __future__ import annotations

import re
from pathlib import Path

from peft_gpt2.errors import PeftGpt2Error

KEYS = ("recipe", "set", "variants", "compare")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def expand(sweep: object, source: str | Path) -> dict:
    """The pipeline (``{"stages": [...]}``) a sweep section stands for; refusals name the file and the key."""
    where = f"{source}: sweep"
    if not isinstance(sweep, dict) or not {"recipe", "variants"} <= set(sweep) or set(sweep) - set(KEYS):
        raise PeftGpt2Error(f"{where}: expected keys recipe, variants and optionally set, compare; got {sweep!r}"[:400])
    variants, common = sweep["variants"], sweep.get("set") or []
    if not isinstance(variants, dict) or not variants:
        raise PeftGpt2Error(f"{where}.variants: a mapping of variant name -> list of key=value overrides")
    if not isinstance(common, list) or not isinstance(sweep.get("compare") or {}, dict):
        raise PeftGpt2Error(f"{where}: set is a list of key=value overrides, compare a mapping of compare keys")
    name = Path(source).stem
    stages = []
    for variant, overrides in variants.items():
        if not isinstance(variant, str) or not NAME.match(variant) or variant == name:
            raise PeftGpt2Error(f"{where}.variants: {variant!r} must be a plain name other than {name!r}")
        if not isinstance(overrides or [], list):
            raise PeftGpt2Error(f"{where}.variants.{variant}: a list of key=value overrides, got {overrides!r}")
        run = [f"name={name}-{variant}"]
        stages.append({"name": variant, "train": sweep["recipe"], "set": [*common, *run, *(overrides or [])]})
    stages.append({"name": name, "compare": {"runs": list(variants), **(sweep.get("compare") or {})}})
    return {"stages": stages}
