"""Our training (``make_trainer``) vs a hand-written HF ``Trainer`` fine-tune, measured in the same run.

    python bench/train_speed.py                      # GPT-2 small, 400 Alpaca examples, one epoch per variant
    python bench/train_speed.py --size tiny --steps 3 --examples 40 --variants baseline,lora   # smoke test
    python bench/train_speed.py --size medium --variants full,lora-8bit   # on a GPU: LoRA-8bit vs full memory

Baseline, as people write it by hand: ``Trainer`` + ``DataCollatorForLanguageModeling(mlm=False)`` on
prompt+response+eos, padded to the longest in the batch, loss on every token, fp32, random sampler, full
fine-tune. Ours: ``make_trainer`` with a ``Recipe`` (full / lora / lora-8bit), completion-only loss, our
defaults (length-grouped batches, precision auto = bf16 autocast on a CPU that has it). Same random-init
weights, max length 256, batch 5 and steps for every variant; each variant runs in its own subprocess so
peak memory and threads do not leak. Effective tokens/s counts non-padding tokens of the batches fed, after
warm-up steps; by default each variant runs one epoch, so all see the same examples. Padding-free batches
(``train.padding_free``) are measured with the attention the model has; ``make_trainer`` refuses them where
attention would let examples see each other (tests/training/test_train.py). Results: bench/results/train_speed.{json,md}
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BATCH, MAX_LEN, SEED = 5, 256, 42
SIZES = {  # GPT2Config fields
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4},
    "small": {},
    "medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16},
}
ALPACA = Path(__file__).resolve().parents[1] / "data" / "alpaca_5000.json"  # shipped with the repository
VARIANTS: dict[str, dict] = {  # name -> what differs from our LoRA defaults
    "baseline": {"method": "hand-written"},
    "full": {"method": "full"},
    "lora": {"method": "lora"},
    "lora-8bit": {"method": "lora-8bit"},
    "lora-no-group": {"method": "lora", "group_by_length": False},
    "lora-fp32": {"method": "lora", "precision": "fp32"},
    "lora-eager": {"method": "lora", "attn": "eager"},
    "lora-ckpt": {"method": "lora", "activation_checkpointing": True},
    "lora-malloc": {"method": "lora", "keep_freed_memory": False},
    "full-malloc": {"method": "full", "keep_freed_memory": False},
    "lora-trl-loss": {"method": "lora", "trl_loss": True},
    "lora-padding-free": {"method": "lora", "padding_free": True, "group_by_length": False},
}
LEVERS = [  # (lever, variant with it on, variant with it off)
    ("group_by_length", "lora", "lora-no-group"),
    ("bf16 autocast (vs fp32)", "lora", "lora-fp32"),
    ("SDPA attention (vs eager)", "lora", "lora-eager"),
    ("activation checkpointing", "lora-ckpt", "lora"),
    ("keep freed memory (glibc mallopt)", "lora", "lora-malloc"),
    ("keep freed memory (glibc mallopt), full fine-tune", "full", "full-malloc"),
    ("model's own loss (vs TRL 1.16's fused LM head, no Triton)", "lora", "lora-trl-loss"),
    ("padding-free, random order (vs length-grouped)", "lora-padding-free", "lora"),
    ("padding-free, random order (vs padded, random order)", "lora-padding-free", "lora-no-group"),
]
CHOICES = [*VARIANTS, "matmul-peak"]
TARGETS = [("ours full >= 2x baseline (same method)", "full", 2.0), ("ours LoRA >= 3x baseline full", "lora", 3.0)]


def load_pairs(n: int, tokenizer) -> tuple[list[dict], str]:
    """``n`` Alpaca records (seeded sample) as checked prompt/completion pairs, and where they came from."""
    from peft_gpt2.data.instructions import clean, load_records, subsample
    from peft_gpt2.data.templates import TEMPLATES, tokenize_pairs

    records = subsample(clean(load_records(str(ALPACA)))[0], limit=n, fraction=None, seed=SEED)
    pairs = [TEMPLATES["alpaca"].render(r) for r in records]
    return tokenize_pairs(pairs, tokenizer, MAX_LEN, "truncate", "train").pairs, ALPACA.name


def build_model_dir(size: str, folder: Path) -> None:
    """Random-init GPT-2 (small, or 2 layers x 64 wide) with a fixed seed, saved once for every variant."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from peft_gpt2.models.loading import load_tokenizer

    tokenizer = load_tokenizer("tiny-gpt2")  # the real GPT-2 BPE, offline; pad = eos
    torch.manual_seed(0)
    config = GPT2Config(**SIZES[size])
    config.pad_token_id = tokenizer.pad_token_id
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


class Counting:
    """Wraps a collator; records real (attention-mask) and padded token counts of every batch it builds."""

    def __init__(self, collator) -> None:
        self.collator, self.real, self.padded, self.rows = collator, [], [], []

    def __call__(self, features):
        batch = self.collator(features)
        self.rows.append(len(features))
        mask = batch.get("attention_mask")  # padding-free batches have none: every token is real
        self.real.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        self.padded.append(batch["input_ids"].numel())
        return batch


def baseline_trainer(model_dir: Path, tokenizer, pairs: list[dict], steps: int, out: str):
    """The hand-written way: whole text, pad to longest, labels = input_ids with pads (= eos) masked, fp32."""
    import datasets
    from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    texts = [p["prompt"] + p["completion"] + tokenizer.eos_token for p in pairs]
    data = datasets.Dataset.from_dict(dict(tokenizer(texts, truncation=True, max_length=MAX_LEN)))
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        logging_steps=steps,
        seed=SEED,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    return Trainer(model=model, args=args, train_dataset=data, data_collator=collator)


def our_trainer(spec: dict, model_dir: Path, tokenizer, pairs: list[dict], steps: int, out: str):
    """``make_trainer`` on a recipe with our defaults, changed only where the variant says (``spec``)."""
    from transformers import AutoModelForCausalLM

    from peft_gpt2.config.recipe import TRAIN_DEFAULTS, ModelConfig, Recipe
    from peft_gpt2.data.config import DataConfig
    from peft_gpt2.training import trainer as sft
    from peft_gpt2.training.train import load_model
    from peft_gpt2.training.trainer import make_trainer, resolve_precision, sft_config

    if spec.get("keep_freed_memory") is False:
        sft.keep_freed_memory = lambda: False
    if spec.get("trl_loss"):
        from trl import SFTTrainer

        sft.CompletionTrainer.compute_loss = SFTTrainer.compute_loss

    knobs = {k: v for k, v in spec.items() if k in TRAIN_DEFAULTS}
    train = {**TRAIN_DEFAULTS, "per_device_train_batch_size": BATCH, "max_steps": steps, "logging_steps": steps}
    recipe = Recipe(
        name="train-speed",
        method=spec["method"],
        model=ModelConfig(name=str(model_dir)),
        data=DataConfig(path=str(ALPACA), max_length=MAX_LEN),
        train={**train, "seed": SEED, **knobs},
    )
    args = sft_config(recipe, Path(out), resolve_precision(recipe.train["precision"]))
    if recipe.method == "lora-8bit":
        model = load_model(recipe)  # quantized and prepared as peft_gpt2.training.train.train does it
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=spec.get("attn", "sdpa"))
    return make_trainer(recipe, model, tokenizer, args, pairs, [])


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """One variant, in this (fresh) process."""
    from transformers import AutoTokenizer, TrainerCallback

    from peft_gpt2.training.train import peak_memory_mb

    if name == "matmul-peak":
        return matmul_peak(512 if args.size == "tiny" else 2048)
    spec = VARIANTS[name]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    pairs, source = load_pairs(args.examples, tokenizer)
    steps = args.steps or math.ceil(len(pairs) / BATCH)
    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, *_, **__) -> None:
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        if name == "baseline":
            trainer = baseline_trainer(args.model_dir, tokenizer, pairs, steps, out)
        else:
            trainer = our_trainer(spec, args.model_dir, tokenizer, pairs, steps, out)
        counter = trainer.data_collator = Counting(trainer.data_collator)
        trainer.add_callback(StepEnds())
        result = trainer.train()
    n, w = len(ends), args.warmup  # the clock starts at the end of the last warm-up step
    if n <= w:
        raise SystemExit(f"{name}: {n} steps ran, need more than --warmup {w}")
    seconds, step_times = ends[-1] - ends[w - 1], [b - a for a, b in itertools.pairwise(ends[w - 1 :])]
    # counts beyond n: batches the dataloader built ahead
    real, padded, rows = (sum(c[w:n]) for c in (counter.real, counter.padded, counter.rows))
    model = trainer.model
    return {
        "variant": name,
        **spec,
        "attn": model.config._attn_implementation,
        "precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",
        "sampler": trainer.args.train_sampling_strategy,
        "data": source,
        "examples": len(pairs),
        "steps": n,
        "timed_steps": n - w,
        "tokens": real,
        "tokens_all": sum(counter.real[:n]),
        "padding_frac": round(1 - real / padded, 3),
        "tokens_per_example": round(real / rows, 1),
        "tokens_per_s": round(real / seconds, 1),
        "step_s": round(seconds / (n - w), 3),
        "step_s_median": round(statistics.median(step_times), 3),
        "peak_mb": round(peak_memory_mb(), 1),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params": sum(p.numel() for p in model.parameters()),
        "train_loss": round(result.training_loss, 4),
    }


def matmul_peak(n: int, reps: int = 10) -> dict:
    """GFLOP/s of square ``torch.matmul`` in bf16 and fp32 (best of ``reps`` after warm-up)."""
    out = {"variant": "matmul-peak", "size": n}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        out[f"{str(dtype).split('.')[1]}_gflops"] = round(2 * n**3 / min(times) / 1e9, 1)
    return out


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if sys.platform == "linux" else ""
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    amx = ", AMX-BF16" if "amx_bf16" in lscpu else ""
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    cpus = f"{os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads)"
    return f"{model or 'unknown CPU'}{amx}, {cpus}, torch {torch.__version__}{gpu}"


def child(name: str, args: argparse.Namespace) -> dict:
    """One variant in a fresh Python process, so peak memory and thread pools are its own."""
    flags = ["--examples", str(args.examples), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd = [sys.executable, __file__, "--variant", name, "--model-dir", str(args.model_dir), "--json", *flags]
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "--size", args.size], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"variant"')]
    if proc.returncode or not lines:
        return {"variant": name, "error": ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]}
    return {**json.loads(lines[-1]), "wall_s": round(time.perf_counter() - start, 1)}


def report(results: dict[str, dict], args: argparse.Namespace, command: str) -> str:
    runs = {k: r for k, r in results.items() if "tokens_per_s" in r}
    base = runs.get("baseline", {}).get("tokens_per_s")
    ratio = {k: f"{r['tokens_per_s'] / base:.2f}x" if base else "n/a" for k, r in runs.items()}
    lines = [
        "# Training speed: ours vs a hand-written Trainer fine-tune (same run)\n",
        f"`{command}`\n",
        f"Machine: {machine()}. Model: GPT-2 {args.size} architecture, random init, same "
        f"weights for every variant; batch {BATCH}, max length {MAX_LEN}; the first {args.warmup} steps not timed.\n",
        "| variant | method | precision | attn | sampler | tokens/s | step s | padding | tokens/example | peak MB "
        "| vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['method']} | {r['precision']} | {r['attn']} | {r['sampler']} | {r['tokens_per_s']:.0f} "
            f"| {r['step_s']:.3f} | {r['padding_frac']:.0%} | {r['tokens_per_example']:.0f} | {r['peak_mb']:.0f} "
            f"| {ratio[name]} |"
        )
    lines += [f"| {k} | failed: {r['error']} |" for k, r in results.items() if "error" in r]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for label, name, want in TARGETS:
        got = runs[name]["tokens_per_s"] / base if base and name in runs else None
        lines.append(f"| {label} | {f'{got:.2f}x' if got else 'n/a'} | {'yes' if got and got >= want else 'NO'} |")
    lines += ["", "| lever (on vs off, our LoRA unless named) | tokens/s | peak memory |", "|---|---|---|"]
    for lever, on, off in LEVERS:
        if on in runs and off in runs:
            speed = runs[on]["tokens_per_s"] / runs[off]["tokens_per_s"]
            lines.append(f"| {lever} | {speed:.2f}x | {runs[on]['peak_mb'] / runs[off]['peak_mb']:.2f}x |")
    peak = results.get("matmul-peak", {})
    if "bfloat16_gflops" in peak:
        bf16, fp32 = peak["bfloat16_gflops"], peak["float32_gflops"]
        lines += [
            "",
            f"Matmul peak ({peak['size']}x{peak['size']}, best of 10): bf16 {bf16:.0f}, fp32 {fp32:.0f} GFLOP/s.",
            "",
            "| full fine-tune | model GFLOP/s (6 x params x tokens/s) | MFU vs bf16 peak | MFU vs fp32 peak |",
            "|---|---|---|---|",
        ]
        for name in ("baseline", "full"):
            if name in runs:
                flops = 6 * runs[name]["params"] * runs[name]["tokens_per_s"] / 1e9
                lines.append(f"| {name} | {flops:.0f} | {flops / bf16:.1%} | {flops / fp32:.1%} |")
    lines += [
        "",
        "Tokens = non-padding tokens of the batches actually fed (attention-mask sum), so padding counts as waste; "
        "`tokens_all` in the JSON (every step) is the same for all variants when each runs one full epoch. The "
        "baseline's collator masks pad = eos, so it never learns to stop (a correctness difference, not a speed one). "
        "Padding-free batches are one row per batch; with SDPA they are exact here because transformers 5 builds a "
        "block-diagonal mask from the restarting position ids when no cache is passed (checked before training, "
        "and in tests/training/test_train.py). Run a whole epoch (the default, `--steps 0`) "
        "for the fairest numbers: length grouping sorts each megabatch longest-first, so a partial epoch feeds the "
        "grouped variants a longer-than-average subset (see tokens/example). Variants run one after another, "
        "so a machine that is busy with anything else skews the ratios.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--steps", type=int, default=0, help="steps per variant (0: one epoch over the examples)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing (>= 1)")
    parser.add_argument("--size", choices=SIZES, default="small", help="GPT-2 architecture (tiny: smoke tests)")
    parser.add_argument("--variants", default=",".join(CHOICES), help=f"comma-separated, from {', '.join(CHOICES)}")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--variant", choices=CHOICES, help="run one variant in this process (what the parent calls)")
    parser.add_argument("--model-dir", type=Path, help="saved random-init model (the parent passes it)")
    parser.add_argument("--json", action="store_true", help="with --variant: print the result as one JSON line")
    args = parser.parse_args()
    names = args.variants.split(",")
    if args.warmup < 1 or any(n not in CHOICES for n in names):
        parser.error(f"--warmup must be >= 1 and --variants a subset of {','.join(CHOICES)}")
    with tempfile.TemporaryDirectory() as model_dir:
        if args.model_dir is None and args.variant != "matmul-peak":
            args.model_dir = Path(model_dir)
            build_model_dir(args.size, args.model_dir)
        if args.variant:
            result = run_variant(args.variant, args)
            print(json.dumps(result) if args.json else json.dumps(result, indent=2))
            return
        command = "python bench/train_speed.py " + " ".join(sys.argv[1:])
        results: dict[str, dict] = {}
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results[name] = child(name, args)
            print(json.dumps(results[name]), flush=True)
    md = report(results, args, command)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "machine": machine(), "results": results}
    (out / "train_speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "train_speed.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
