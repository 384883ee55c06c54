"""Batched QA evaluation vs one question at a time, measured in the same run.

    python bench/eval_batching.py --model smollm2-135m --questions 50

Three ways to answer the same questions, greedy, at most ``--max-new-tokens`` each:
- pipeline loop: ``pipeline("text-generation")`` called once per question, as a notebook does (it stops
  only at eos or the token limit; its answers are cut at the stop string afterwards for comparison);
- our loop: ``peft_gpt2.inference.generation.generate`` with one prompt at a time (stops at ``### `` too);
- batched: ``generate`` with all prompts (left-padded, length-sorted batches).
Answers must match, so the speed-up is not bought with different output.
Results go to bench/results/eval_batching.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from transformers import pipeline

from peft_gpt2.data.templates import TEMPLATES
from peft_gpt2.evaluation.evaluate import load_eval_records
from peft_gpt2.inference.generation import cut_at_stop, generate
from peft_gpt2.inference.settings import GenerationSettings
from peft_gpt2.models.loading import load_base


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

    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    pipe_kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "return_full_text": False}
    pipe(prompts[0], **pipe_kwargs)  # warm-up
    start = time.perf_counter()
    pipe_answers = [cut_at_stop(pipe(p, **pipe_kwargs)[0]["generated_text"], batched.stop) for p in prompts]
    pipe_s = time.perf_counter() - start
    start = time.perf_counter()
    loop_answers = [generate(model, tokenizer, [p], single)[0].text for p in prompts]
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    batch_answers = [c.text for c in generate(model, tokenizer, prompts, batched)]
    batch_s = time.perf_counter() - start

    same = sum(a == b for a, b in zip(loop_answers, batch_answers, strict=True))
    pipe_same = sum(a == b for a, b in zip(pipe_answers, batch_answers, strict=True))
    result = {
        "model": args.model,
        "questions": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "pipeline_loop_s": round(pipe_s, 2),
        "one_by_one_s": round(loop_s, 2),
        "batched_s": round(batch_s, 2),
        "speedup_vs_pipeline_loop": round(pipe_s / batch_s, 2),
        "speedup": round(loop_s / batch_s, 2),
        "identical_answers": same,
        "identical_answers_pipeline": pipe_same,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "command": f"python bench/eval_batching.py --model {args.model} --questions {args.questions}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_batching.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "eval_batching.md").write_text(
        "# Batched QA evaluation vs one question at a time\n\n"
        f"`{result['command']}` on {result['machine']}\n\n"
        "| one at a time | seconds | batched seconds | batched speed-up | identical answers |\n|---|---|---|---|---|\n"
        f"| pipeline loop | {pipe_s:.1f} | {batch_s:.1f} | {pipe_s / batch_s:.1f}x | {pipe_same}/{len(prompts)} |\n"
        f"| our generate loop | {loop_s:.1f} | {batch_s:.1f} | {loop_s / batch_s:.1f}x | {same}/{len(prompts)} |\n"
        f"\n{len(prompts)} questions, greedy, at most {args.max_new_tokens} new tokens, batch size {args.batch_size}.\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
