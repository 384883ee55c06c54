"""What a run folder carries besides the weights: TensorBoard logs (train.report_to), the loss curve, the model card,
and ``peft-gpt2 push`` (Hub calls recorded, never made: these tests run offline)."""

from __future__ import annotations

import json
import math
import shutil
import struct

import pytest
import yaml
from conftest import TOY_DATA, write_recipe

from peft_gpt2.errors import PeftGpt2Error


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny LoRA run of 4 steps, loss logged every step, with report_to: tensorboard."""
    from peft_gpt2.config.recipe import load_recipe
    from peft_gpt2.training.train import train

    root = tmp_path_factory.mktemp("extras")
    (root / "data.json").write_text(json.dumps(TOY_DATA["A"]))
    recipe = write_recipe(
        root / "extras.yaml", train={"max_steps": 4, "logging_steps": 1, "report_to": "tensorboard"}
    )
    return train(load_recipe(recipe))


def test_tensorboard_logs_ship_in_the_run_folder(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(run.path.glob("runs/*/events.out.tfevents.*"))
    assert events, sorted(p.name for p in run.path.rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    logged = [(e["step"], e["loss"]) for e in json.loads((run.path / "train_log.json").read_text()) if "loss" in e]
    assert [s.step for s in losses] == [1, 2, 3, 4] == [s for s, _ in logged]
    assert [s.value for s in losses] == pytest.approx([v for _, v in logged], rel=1e-6)
    assert not (run.path.parent / ".extras.checkpoints").exists()  # the logs were copied, the leftovers removed


def test_report_to_tracker_not_installed_fails_before_loading(tmp_path, monkeypatch):
    from transformers import integrations

    from peft_gpt2.config.recipe import load_recipe
    from peft_gpt2.models import loading as models
    from peft_gpt2.training.train import train

    monkeypatch.setattr(integrations, "is_tensorboard_available", lambda: False)
    monkeypatch.setattr(models, "load_tokenizer", lambda *a: pytest.fail("loaded the tokenizer"))
    recipe = write_recipe(tmp_path / "r.yaml", train={"report_to": "tensorboard"})
    with pytest.raises(PeftGpt2Error, match="train.report_to: tensorboard is not installed; pip install tensorboard"):
        train(load_recipe(recipe))
    recipe = write_recipe(tmp_path / "r.yaml", train={"report_to": ["tensorbord"]})
    with pytest.raises(PeftGpt2Error, match="unknown tracker 'tensorbord'; one of none, all, .*tensorboard"):
        train(load_recipe(recipe))


def test_loss_series_from_log_history():
    from peft_gpt2.reporting.charts import loss_series

    history = [
        {"loss": 3.0, "step": 1},
        {"loss": float("nan"), "step": 2},
        {"eval_loss": 2.5, "step": 2},
        {"loss": 2.0, "step": 3},
        {"train_loss": 2.5, "train_runtime": 1.0, "step": 3},
    ]
    assert loss_series(history, 3.5, 2.4) == {
        "train": [(1, 3.0), (3, 2.0)],
        "eval": [(2, 2.5)],
        "validation": {"before": (0, 3.5), "after": (3, 2.4)},
    }
    assert loss_series([], None, None) == {"train": [], "eval": [], "validation": {}}


def test_loss_png_in_the_run_folder(run):
    from peft_gpt2.reporting.charts import loss_series

    png = (run.path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (700, 420)  # IHDR: 7 x 4.2 inches at 100 dpi
    history = json.loads((run.path / "train_log.json").read_text())
    series = loss_series(history, run.provenance.validation_loss_before, run.provenance.validation_loss_after)
    assert [s for s, _ in series["train"]] == [1, 2, 3, 4]
    assert series["validation"]["after"] == (4, run.provenance.validation_loss_after)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_replaces_peft_boilerplate(run, tiny_path):
    card = (run.path / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "peft"
    assert "base_model" not in meta and "license" not in meta  # tiny-gpt2 is on no Hub; no license recorded
    assert {"peft-gpt2", "lora", "gpt2", "text-generation"} <= set(meta["tags"])
    assert "Model Card for Model ID" not in card  # PEFT's boilerplate
    assert tiny_path not in card and ".cache" not in card  # never the preset's cache folder
    p = run.provenance
    assert f"{p.validation_loss_before:.4f} (perplexity {math.exp(p.validation_loss_before):.2f})" in card
    assert f"{p.validation_loss_after:.4f}" in card
    assert f"{p.trainable_parameters:,} of {p.total_parameters:,}" in card
    base = 'AutoModelForCausalLM.from_pretrained("<the base model\'s folder>")'
    assert f'PeftModel.from_pretrained({base}, "{run.path}")' in card
    assert f"peft-gpt2 chat --adapter extras={run.path}" in card
    assert "![loss curve](loss.png)" in card and "`short` template" in card
    assert "34 train / 4 validation / 2 test rows (of 40 records read)" in card
    hyper = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert hyper["lora"]["r"] == 4 and hyper["train"]["max_steps"] == 4
    assert f"transformers {p.versions['transformers']}" in card


@pytest.mark.parametrize(
    ("name", "hub_id"),
    [("gpt2", "gpt2"), ("openai-community/gpt2-medium", "openai-community/gpt2-medium"),
     ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct"), ("tiny-gpt2", None), ("./models/mine", None),
     ("/abs/base.gguf", None), ("a/b/c", None)],
)
def test_base_model_in_front_matter(name, hub_id):
    from peft_gpt2.run_folder import Provenance
    from peft_gpt2.training.model_card import base_model_origin, model_card

    assert base_model_origin(name)[0] == hub_id
    for method, library, relation in (("lora", "peft", "adapter"), ("full", "transformers", "finetune")):
        p = Provenance(name="x", method=method, base_model=name, recipe={"method": method})
        meta = _front_matter(model_card(p, "USER/x", pushed=True))
        assert meta["library_name"] == library
        assert meta.get("base_model") == hub_id and meta.get("base_model_relation") == (relation if hub_id else None)


@pytest.fixture()
def hub_calls(monkeypatch):
    """HfApi's write calls, recorded instead of made; offline mode off so the push gets that far."""
    from huggingface_hub import HfApi, constants

    calls = []

    def record(name, result=None):
        def call(self, *args, **kwargs):
            calls.append((name, args, kwargs))
            return result

        return call

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "create_repo", record("create_repo", "https://hub.example/USER/x"))
    for name in ("create_branch", "upload_folder", "upload_file"):
        monkeypatch.setattr(HfApi, name, record(name))
    return calls


def test_push_uploads_the_run_without_pickles_checkpoints_or_test_records(run, tmp_path, hub_calls):
    from huggingface_hub.utils import filter_repo_objects

    from peft_gpt2.training.hub import push

    folder = tmp_path / "extras"
    shutil.copytree(run.path, folder)
    for extra in ("checkpoint-2/optimizer.pt", "checkpoint-2/adapter_model.safetensors", "training_args.bin",
                  ".extras.tmp-1/x", "rng_state.pth"):
        (folder / extra).parent.mkdir(parents=True, exist_ok=True)
        (folder / extra).write_bytes(b"x")
    assert (folder / "test.json").exists()
    assert push(folder, "USER/x", private=True, revision="v1") == "https://hub.example/USER/x"
    names = [c[0] for c in hub_calls]
    assert names == ["create_repo", "create_branch", "upload_folder", "upload_file"]
    assert hub_calls[0][1] == ("USER/x",) and hub_calls[0][2]["private"] is True
    assert hub_calls[1][2] == {"branch": "v1", "exist_ok": True}
    upload = hub_calls[2][2]
    assert upload["repo_id"] == "USER/x" and upload["folder_path"] == str(folder) and upload["revision"] == "v1"
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    sent = set(filter_repo_objects(files, ignore_patterns=upload["ignore_patterns"]))  # upload_folder's own filter
    assert {"adapter_model.safetensors", "adapter_config.json", "peft_gpt2.json", "recipe.yaml", "loss.png",
            "train_log.json", "tokenizer.json"} <= sent
    assert any(f.startswith("runs/") for f in sent)
    assert not sent & {"test.json", "README.md", "training_args.bin", "rng_state.pth"}
    assert not [f for f in sent if f.startswith(("checkpoint-", "."))]
    card = hub_calls[3][2]
    assert card["path_in_repo"] == "README.md" and card["revision"] == "v1"
    text = card["path_or_fileobj"].decode()
    assert '"<the base model\'s folder>"), "USER/x")' in text and "hf download USER/x --local-dir extras" in text


def test_push_refuses_an_unfinished_folder_before_the_network(tmp_path, hub_calls):
    from peft_gpt2.training.hub import push

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text("{}")
    with pytest.raises(PeftGpt2Error, match="not a finished peft-gpt2 run: no peft_gpt2.json"):
        push(tmp_path / "half", "USER/x")
    with pytest.raises(PeftGpt2Error, match="is not a folder"):
        push(tmp_path / "missing", "USER/x")
    assert hub_calls == []


def test_push_offline_is_one_line(run, capsys):
    from peft_gpt2.cli.main import main

    assert main(["push", str(run.path), "--repo-id", "USER/x"]) == 2  # conftest sets HF_HUB_OFFLINE=1
    err = capsys.readouterr().err
    assert err == "peft-gpt2: error: cannot push: " + (
        "HF_HUB_OFFLINE is set (offline mode); unset it where there is network\n"
    )
    assert main(["push", str(run.path), "--repo-id", "not a repo id"]) == 2
    assert "--repo-id 'not a repo id'" in capsys.readouterr().err


def test_push_to_an_unreachable_hub_is_one_line(run, monkeypatch):
    import socket

    from huggingface_hub import constants

    from peft_gpt2.training.hub import push

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PeftGpt2Error, match=rf"cannot reach the Hub at http://127.0.0.1:{port}: .*are you online"):
        push(run.path, "USER/x", endpoint=f"http://127.0.0.1:{port}")


def test_requirements_of_a_run_pin_the_environment_that_made_it(run, capsys, tmp_path):
    """``peft-gpt2 freeze RUN`` turns the recorded environment into a pip file: every distribution pinned to
    the version that trained, torch left to the user's build; a folder that is not a run is named."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    from peft_gpt2.cli.main import main

    assert main(["freeze", str(run.path)]) == 0
    text = capsys.readouterr().out
    pins = {(r := Requirement(line)).name: str(r.specifier) for line in text.splitlines() if not line.startswith("#")}
    for name in ("transformers", "peft", "trl", "accelerate", "datasets", "numpy"):
        assert pins[name] == f"=={version(name)}"
    assert "torch" not in pins and f"# torch=={version('torch')}: install it first" in text
    assert main(["freeze", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a finished peft-gpt2 run: no peft_gpt2.json" in capsys.readouterr().err
