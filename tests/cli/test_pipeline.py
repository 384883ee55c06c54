"""The domain path: corpus adapter -> merged base -> instruction adapter -> one comparison; resumable."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO, write_recipe

from peft_gpt2.cli.main import main
from peft_gpt2.cli.pipeline import load_pipeline, run_pipeline
from peft_gpt2.errors import PeftGpt2Error


def write(tmp_path, tiny_path):
    book = "\n\n".join(
        f"Holmes examined the {w} with his lens and said nothing to Watson." for w in ["pipe", "hat"] * 60
    )
    (tmp_path / "book.txt").write_text(book)
    records = [{"instruction": "Who examined it?", "input": f"clue {w}", "output": "Holmes"} for w in range(40)]
    (tmp_path / "instr.json").write_text(json.dumps(records))
    (tmp_path / "qa.json").write_text(json.dumps([{"question": "Who used a lens?", "answer": "Holmes"}] * 3))
    corpus = {"path": str(tmp_path / "book.txt"), "format": "text", "max_length": 32, "split": [0.9, 0.1, 0.0]}
    write_recipe(tmp_path / "lm.yaml", model={"name": tiny_path}, data=corpus)
    # compare prompts every run with one template; a text run records the default one (alpaca)
    instructions = {"path": str(tmp_path / "instr.json"), "template": "alpaca", "max_length": 64}
    write_recipe(tmp_path / "instruct.yaml", model={"name": str(tmp_path / "merged")}, data=instructions)  # stage 2's
    pipeline = {
        "stages": [
            {"name": "domain", "train": str(tmp_path / "lm.yaml")},
            {"name": "merge", "merge": {"adapter": str(tmp_path / "adapters" / "lm"), "out": str(tmp_path / "merged")}},
            {"name": "instruct", "train": str(tmp_path / "instruct.yaml")},
            {
                "name": "cmp",
                "compare": {
                    "runs": [str(tmp_path / "adapters" / "lm"), str(tmp_path / "adapters" / "instruct")],
                    "data": [str(tmp_path / "qa.json")],
                    "max_new_tokens": 4,
                },
            },
        ]
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    return tmp_path / "pipeline.yaml"


@pytest.mark.slow
def test_pipeline_runs_stages_then_skips_them(tmp_path, tiny_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, tiny_path)
    run_pipeline(path)
    instruct = json.loads((tmp_path / "adapters" / "instruct" / "peft_gpt2.json").read_text())
    assert instruct["base_model"] == str(tmp_path / "merged")  # stage 2 loaded stage 1's merged output
    assert json.loads((tmp_path / "merged" / "peft_gpt2.json").read_text())["method"] == "lora-merged"
    rows = json.loads((tmp_path / "reports" / "cmp.json").read_text())["rows"]
    assert [(r["model"], r["base"]) for r in rows] == [
        ("base", tiny_path),
        ("lm", tiny_path),
        ("instruct", str(tmp_path / "merged")),
    ]
    stamp = (tmp_path / "adapters" / "instruct" / "peft_gpt2.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["pipeline", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("done already") == 4
    assert (tmp_path / "adapters" / "instruct" / "peft_gpt2.json").stat().st_mtime_ns == stamp
    # retraining one run makes the compare that reads it stale, and nothing else
    assert main(["pipeline", str(path), "--rerun", "instruct"]) == 0
    out = capsys.readouterr().out
    assert "[domain] done already" in out and "[merge] done already" in out
    assert f"[cmp] compare ... (again: {tmp_path.resolve() / 'adapters' / 'instruct'} changed)" in out
    assert (tmp_path / "adapters" / "instruct" / "peft_gpt2.json").stat().st_mtime_ns != stamp


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.max_step=3", "did you mean train.max_steps"),  # a key our recipe check refuses
        ("train.lr_scheduler_type=cosin", "cosin is not a valid SchedulerType"),  # a value transformers refuses
    ],
)
def test_every_stage_is_checked_before_any_runs(tmp_path, tiny_path, setting, message):
    path = write(tmp_path, tiny_path)
    spec = yaml.safe_load(path.read_text())
    spec["stages"][2]["set"] = [setting]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(PeftGpt2Error, match=message):
        run_pipeline(path)
    assert not (tmp_path / "adapters").exists()


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"name": "a"}], "exactly one of train, merge, compare"),
        ([{"name": "a", "compare": {"runs": []}}], "compare needs runs"),
        ([{"name": "a", "merge": {"adapter": "x", "out": "y"}, "extra": 1}], "unknown keys"),
        (
            [
                {"name": "a", "merge": {"adapter": "x", "out": "y"}},
                {"name": "a", "merge": {"adapter": "x", "out": "z"}},
            ],
            "unique",
        ),
        # shapes that raised AttributeError, TypeError or KeyError
        ([{"name": "a", "train": "r.yaml", "set": [3]}], "set, a list of key=value strings"),
        ([{"name": "a", "train": ["r.yaml"]}], "train is a recipe file"),
        ([{"name": "a", "merge": "x"}], "merge must be a mapping, got str"),
        ([{"name": "a", "merge": {"adapter": "x"}}], "merge needs adapter and out"),
        ([{"name": "a", "compare": ["x"]}], "compare must be a mapping, got list"),
        ([{"name": "a", "compare": {"runs": "adapters/x"}}], "compare needs runs: a list of run folders"),
        ([{"name": "a", "compare": {"runs": [{"x": 1}]}}], "compare needs runs: a list of run folders"),
    ],
)
def test_bad_pipelines(tmp_path, stages, message):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"stages": stages}))
    with pytest.raises(PeftGpt2Error, match=message):
        load_pipeline(tmp_path / "p.yaml")


def test_shipped_pipelines_validate(monkeypatch):
    monkeypatch.chdir(REPO)  # a pipeline names its recipes from the repository root, where its command runs
    shipped = sorted((REPO / "recipes" / "pipelines").glob("*.yaml"))
    assert shipped
    for path in shipped:
        stages = load_pipeline(path)
        assert [s.kind for s in stages].count("compare") == 1
        assert f"peft-gpt2 pipeline {path.relative_to(REPO)}" in path.read_text()


def test_an_alias_bomb_is_refused_fast_naming_the_file(tmp_path):
    import time

    from conftest import alias_bomb

    (tmp_path / "p.yaml").write_text(f"stages: [{{name: a, compare: {{runs: {alias_bomb()}}}}}]\n")
    start = time.perf_counter()
    with pytest.raises(PeftGpt2Error, match=r"pipeline .*p\.yaml: expands to more than 10,000 values"):
        load_pipeline(tmp_path / "p.yaml")
    assert time.perf_counter() - start < 2
