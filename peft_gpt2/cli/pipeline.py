"""Run a multi-stage path from one YAML file: train, merge, compare; finished stages are skipped.

    peft-gpt2 pipeline recipes/pipelines/e2e_smollm2.yaml [--rerun STAGE ...]

A stage is done when its output exists (an adapter folder with ``peft_gpt2.json``, a merged model folder,
a report), so a pipeline that stopped half-way continues where it stopped. Every stage is checked before
the first one runs, so a typo in the last stage fails in a second, not after an hour of training. A compare
stage's ``runs`` are run folders or names of train stages; a file whose one key is ``sweep`` is a pipeline
written short (``sweep.expand``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peft_gpt2.cli.sweep import expand
from peft_gpt2.config.recipe import Recipe, load_recipe
from peft_gpt2.data.sources import load_yaml
from peft_gpt2.errors import PeftGpt2Error
from peft_gpt2.run_folder import MODEL_CONFIG, PROVENANCE

KINDS = {
    "train": {"train", "set"},
    "merge": {"adapter", "out", "model"},
    "compare": {"runs", "data", "name", "limit", "max_new_tokens", "base", "generation"},
}


@dataclass
class Stage:
    """One step: ``train`` a recipe, ``merge`` an adapter into its base, or ``compare`` runs."""

    name: str
    kind: str
    spec: dict
    recipe: Recipe | None = field(default=None, repr=False)

    @property
    def writes(self) -> Path:
        """The folder (or report) this stage makes."""
        if self.kind == "train":
            return self.recipe.out_path.resolve()
        return Path(self.spec["out"] if self.kind == "merge" else self.output).resolve()

    @property
    def reads(self) -> set[Path]:
        """The folders this stage reads that an earlier stage may make: its base model, adapter or runs."""
        if self.kind == "train":
            names = [self.recipe.model.name]
        else:
            names = [self.spec["adapter"], self.spec.get("model") or ""] if self.kind == "merge" else self.spec["runs"]
        return {Path(n).resolve() for n in names if n}

    @property
    def output(self) -> Path:
        if self.kind == "train":
            return self.recipe.out_path / PROVENANCE
        if self.kind == "merge":
            return Path(self.spec["out"]) / MODEL_CONFIG
        return Path("reports") / f"{self.spec['name']}.json"


def load_pipeline(path: str | Path) -> list[Stage]:
    """Read and check every stage (recipes included) before anything runs."""
    path = Path(path)
    data = load_yaml(path, "pipeline") or {}
    if isinstance(data, dict) and set(data) == {"sweep"}:  # a sweep is a pipeline written short
        data = expand(data["sweep"], path)
    if not isinstance(data, dict) or set(data) != {"stages"} or not isinstance(data["stages"], list):
        raise PeftGpt2Error(f"{path}: expected one key, stages: a list of {{name, train|merge|compare, ...}}")
    stages = [_stage(raw, f"{path}: stage {i}") for i, raw in enumerate(data["stages"])]
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise PeftGpt2Error(f"{path}: stage names must be unique: {names}")
    trained = {s.name: str(s.recipe.out_path) for s in stages if s.kind == "train"}
    for stage in (s for s in stages if s.kind == "compare"):  # a run may be named by the stage that trains it
        stage.spec["runs"] = [trained.get(run, run) for run in stage.spec["runs"]]
    return stages


def _stage(raw: object, where: str) -> Stage:
    """One stage of the file, its shape checked (``where`` names it in errors); a train stage's recipe loaded."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise PeftGpt2Error(f"{where}: each stage is a mapping with a name")
    where = f"{where} ({raw['name']})"
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        raise PeftGpt2Error(f"{where}: needs exactly one of train, merge, compare")
    kind = kinds[0]
    spec = {k: v for k, v in raw.items() if k != "name"}
    unknown = set(spec) - KINDS[kind] - {kind}
    if unknown:
        raise PeftGpt2Error(f"{where}: unknown keys {sorted(unknown)} for a {kind} stage")
    if kind == "train":
        from peft_gpt2.config.architectures import check_targets
        from peft_gpt2.training.checkpoints import checkpoint_dir
        from peft_gpt2.training.trainer import resolve_precision, trainer_args

        settings = raw.get("set") or []
        if not isinstance(raw["train"], str) or not all(isinstance(s, str) for s in settings):
            raise PeftGpt2Error(f"{where}: train is a recipe file; set, a list of key=value strings")
        recipe = load_recipe(raw["train"], list(settings))
        trainer_args(recipe, checkpoint_dir(recipe), resolve_precision(recipe.train["precision"]))
        check_targets(recipe)  # layer names against the architecture, before any stage runs
        return Stage(raw["name"], kind, spec, recipe)
    if not isinstance(raw[kind], dict):
        raise PeftGpt2Error(f"{where}: {kind} must be a mapping, got {type(raw[kind]).__name__}")
    if kind == "merge":
        if not all(isinstance(raw["merge"].get(k), str) for k in ("adapter", "out")):
            raise PeftGpt2Error(f"{where}: merge needs adapter and out, each a folder")
        return Stage(raw["name"], kind, {k: raw["merge"].get(k) for k in ("adapter", "out", "model")})
    spec = {"name": raw["name"], **raw["compare"]}
    if not isinstance(spec.get("runs"), list) or not spec["runs"] or not all(isinstance(r, str) for r in spec["runs"]):
        raise PeftGpt2Error(f"{where}: compare needs runs: a list of run folders or train stage names")
    try:
        decoding(spec)
    except (PeftGpt2Error, TypeError) as err:
        raise PeftGpt2Error(f"{where}: generation: {err}") from None
    return Stage(raw["name"], kind, spec)


def run_pipeline(path: str | Path, *, rerun: list[str] | tuple[str, ...] = ()) -> list[Stage]:
    """Run the stages in order; a stage whose output exists is skipped unless named in ``rerun`` (or "all") or it
    reads what a stage run in this invocation wrote (a compare of a retrained run, a merge of a retrained adapter)."""
    stages = load_pipeline(path)
    unknown = set(rerun) - {s.name for s in stages} - {"all"}
    if unknown:
        raise PeftGpt2Error(f"--rerun: no stage named {sorted(unknown)}; stages: {[s.name for s in stages]}")
    made: set[Path] = set()  # folders written in this invocation: a stage reading one is stale
    for stage in stages:
        stale = sorted(str(p) for p in made & stage.reads)
        again = "all" in rerun or stage.name in rerun or bool(stale)
        if stage.output.exists() and not again:
            print(f"[{stage.name}] done already ({stage.output}); --rerun {stage.name} to run it again", flush=True)
            continue
        why = f" (again: {', '.join(stale)} changed)" if stale else ""
        print(f"[{stage.name}] {stage.kind} ...{why}", flush=True)
        made.add(stage.writes)
        if stage.kind == "train":
            from peft_gpt2.training.train import train

            train(stage.recipe, overwrite=again)
        elif stage.kind == "merge":
            from peft_gpt2.adapters.merge import merge_adapter

            merge_adapter(stage.spec["adapter"], stage.spec["out"], base=stage.spec["model"], overwrite=True)
        else:
            _compare(stage.spec)
    return stages


def decoding(spec: dict):
    """A compare stage's ``GenerationSettings``: ``generation`` keys, ``max_new_tokens`` (default 64)."""
    from peft_gpt2.inference.settings import GenerationSettings

    return GenerationSettings(**{"max_new_tokens": spec.get("max_new_tokens", 64), **(spec.get("generation") or {})})


def _compare(spec: dict) -> None:
    from peft_gpt2.reporting.compare_report import compare_and_report

    options = dict(data=list(spec.get("data") or []) or None, base=spec.get("base"), limit=spec.get("limit"))
    origin = {"pipeline stage": spec["name"]}
    compare_and_report(list(spec["runs"]), Path("reports"), spec["name"], decoding(spec), origin, **options)
