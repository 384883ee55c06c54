"""Batched QA evaluation vs a one-question-at-a-time loop, measured in the same run.

    python bench/eval_batching.py --model smollm2-135m --questions 50

Both paths use ``peft_gpt2.generation.generate`` with the same greedy settings; the loop calls it with one
prompt at a time, as a notebook would. Answers must match, so the speed-up is not bought with different
output. Results go to bench/results/eval_batching.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from peft_gpt2.evaluation import load_eval_records
from peft_gpt2.generation import GenerationSettings, generate
from peft_gpt2.models import load_base
from peft_gpt2.prompts import TEMPLATES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="data/sherlock_qa.json")
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    model, tokenizer = load_base(args.model)
    records, _ = load_eval_records(args.data, "qa")
    template = TEMPLATES["alpaca"]
    prompts = [template.prompt(r["instruction"]) for r in records[: args.questions]]
    batched = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    single = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=1)
    generate(model, tokenizer, prompts[:2], batched)  # warm-up: first-call allocations, stop-string tables

    start = time.perf_counter()
    loop_answers = [generate(model, tokenizer, [p], single)[0] for p in prompts]
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    batch_answers = generate(model, tokenizer, prompts, batched)
    batch_s = time.perf_counter() - start

    same = sum(a == b for a, b in zip(loop_answers, batch_answers, strict=True))
    result = {
        "model": args.model,
        "questions": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "one_by_one_s": round(loop_s, 2),
        "batched_s": round(batch_s, 2),
        "speedup": round(loop_s / batch_s, 2),
        "identical_answers": same,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": f"python bench/eval_batching.py --model {args.model} --questions {args.questions}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_batching.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "eval_batching.md").write_text(
        "# Batched QA evaluation vs one question at a time\n\n"
        f"`{result['command']}` on {result['machine']}\n\n"
        "| questions | one-by-one (s) | batched (s) | speed-up | identical answers |\n|---|---|---|---|---|\n"
        f"| {len(prompts)} | {loop_s:.1f} | {batch_s:.1f} | {loop_s / batch_s:.1f}x | {same}/{len(prompts)} |\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
