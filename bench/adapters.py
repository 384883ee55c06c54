"""Adapter inference costs on CPU: swap latency, merged vs unmerged speed, mixed-adapter batches.

    python bench/adapters.py --model tiny-gpt2
    python bench/adapters.py --model smollm2-135m

Two LoRA adapters (random, non-zero updates on the architecture's default targets) are attached to one
base. Swap: PEFT's ``set_adapter`` between them (what ``AdapterSet.generate`` runs), median of many.
Speed: greedy tokens/s of the same batch with the adapter unmerged (LoRA computed beside each layer)
and merged into the weights. Mixed: requests for adapters a, b and the base, answered as one mixed-adapter
batch (``AdapterSet.generate(adapters=[...])``, PEFT's per-row routing) vs one call per adapter vs one call
per request; answers must be identical.
Results: bench/results/adapters-<model>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_adapter(model_name: str, out: Path, seed: int) -> None:
    """A saved PEFT adapter with non-zero B (a trained adapter's shape and cost, without training)."""
    from peft import get_peft_model

    from peft_gpt2.data.config import DataConfig, Recipe
    from peft_gpt2.models.loading import config_fingerprint, load_base
    from peft_gpt2.run_folder import Provenance
    from peft_gpt2.training.trainer import peft_config

    base, _ = load_base(model_name)
    peft_model = get_peft_model(base, peft_config(Recipe(name="bench", data=DataConfig(path="x")), base))
    torch.manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    peft_model.save_pretrained(out)
    Provenance(out.name, "lora", model_name, base_config_fingerprint=config_fingerprint(base.config)).write(out)


def tokens_per_s(model, tokenizer, prompts: list[str], new_tokens: int, repeats: int = 3) -> float:
    """Greedy tokens/s for exactly ``new_tokens`` per row (eos switched off), median of ``repeats``."""
    from peft_gpt2.inference.generation import generate
    from peft_gpt2.inference.settings import GenerationSettings

    settings = GenerationSettings(max_new_tokens=new_tokens, stop=["\u0000never"], batch_size=len(prompts))
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        generate(model, tokenizer, prompts, settings)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            generate(model, tokenizer, prompts, settings)
            times.append(time.perf_counter() - start)
        return len(prompts) * new_tokens / statistics.median(times)
    finally:
        model.generation_config.eos_token_id = eos


def mixed_vs_serial(m, prompts: list[str], new_tokens: int) -> dict:
    """Seconds for the same requests (adapters a, b, base in turn) as one mixed batch, one call per adapter,
    and one call per request; and whether all three give the same answers."""
    from peft_gpt2.inference.settings import GenerationSettings

    names = [("a", "b", None)[i % 3] for i in range(len(prompts))]
    settings = GenerationSettings(max_new_tokens=new_tokens, batch_size=len(prompts))
    m.generate(prompts[:3], adapters=names[:3], settings=settings, raw=True)  # warm-up

    def timed(calls: list[list[int]]) -> tuple[float, list[str]]:
        answers: dict[int, str] = {}
        start = time.perf_counter()
        for rows in calls:
            out = m.generate([prompts[i] for i in rows], adapters=[names[i] for i in rows], settings=settings, raw=True)
            answers.update(zip(rows, out, strict=True))
        return time.perf_counter() - start, [answers[i] for i in range(len(prompts))]

    mixed_s, mixed = timed([list(range(len(prompts)))])
    per_adapter_s, per_adapter = timed([[i for i, n in enumerate(names) if n == a] for a in ("a", "b", None)])
    per_request_s, per_request = timed([[i] for i in range(len(prompts))])
    return {
        "requests": len(prompts),
        "mixed_batch_s": round(mixed_s, 3),
        "per_adapter_calls_s": round(per_adapter_s, 3),
        "per_request_calls_s": round(per_request_s, 3),
        "per_adapter_over_mixed": round(per_adapter_s / mixed_s, 2),
        "per_request_over_mixed": round(per_request_s / mixed_s, 2),
        "identical_answers": mixed == per_adapter == per_request,
    }


def main() -> None:
    from peft_gpt2.adapters.adapter_set import AdapterSet
    from peft_gpt2.models.loading import load_base

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-gpt2")
    parser.add_argument("--swaps", type=int, default=500)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mixed", type=int, default=24, help="requests in the mixed-adapter comparison")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: Path(tmp) / n for n in ("a", "b")}
        for i, (_, path) in enumerate(paths.items()):
            make_adapter(args.model, path, seed=i)
        base, tok = load_base(args.model)
        m = AdapterSet(base, tok, {n: str(p) for n, p in paths.items()})
        swaps = []
        for i in range(args.swaps):  # what generate does for a one-adapter batch: PEFT's set_adapter
            start = time.perf_counter()
            m.model.set_adapter("a" if i % 2 else "b", inference_mode=True)
            swaps.append(time.perf_counter() - start)
        prompts = ["Sherlock Holmes took his bottle from the corner of the mantel-piece"] * args.batch
        mixed = mixed_vs_serial(m, [f"{i}. {prompts[0]}" for i in range(args.mixed)], args.new_tokens)
        m.model.set_adapter("a", inference_mode=True)
        unmerged = tokens_per_s(m.model, tok, prompts, args.new_tokens)
        merged_model = copy.deepcopy(m.model).merge_and_unload()  # the weights with the update folded in
        merged = tokens_per_s(merged_model, tok, prompts, args.new_tokens)

    result = {
        "model": args.model,
        "swap_ms_median": round(statistics.median(swaps) * 1000, 4),
        "swap_ms_p95": round(sorted(swaps)[int(0.95 * len(swaps))] * 1000, 4),
        "swaps": args.swaps,
        "unmerged_tokens_per_s": round(unmerged, 1),
        "merged_tokens_per_s": round(merged, 1),
        "merged_over_unmerged": round(merged / unmerged, 2),
        "batch": args.batch,
        "mixed_adapters": mixed,
        "new_tokens": args.new_tokens,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": f"python bench/adapters.py --model {args.model}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"adapters-{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
