"""Serving under load: mixed-adapter requests at concurrency 32, per server mode, streaming and not, in one run.

    python bench/serve_load.py           # the full bench: smollm2-135m, about 21 min on a quiet 2-core CPU
    python bench/serve_load.py --quick   # smoke run: tiny-gpt2, 40 requests a run (16 for lock), a few minutes
    python bench/serve_load.py --modes step batch --streams on --scale-adapters   # a part: no lock, no scaling

Run the full bench on a quiet machine: every mode is timed in the same run, but other load still skews ratios
(the load average before and after is recorded). Results: bench/results/serve_load-<model>.{json,md}.

What it measures, and the choices made:
- Servers: ``peft_gpt2.serving.app.serve`` under uvicorn, each in its own process (so the load generator does not
  share its GIL), on a free loopback port, one process per mode ("step", "batch", "lock"), started and stopped in
  turn, all with the same adapter set (16 adapters loaded; a mix uses some of them), ``max_batch`` = concurrency.
- Adapters: random LoRA updates (PEFT's LoRA on the architecture's default targets, A and B drawn from a seeded
  normal), saved as adapter folders with the base's fingerprint; made in seconds, no training. Each must change
  at least one answer against the base (checked from the reference answers; the bench stops otherwise).
- Requests: a fixed seeded mix. Prompt i always asks for ``MAX_TOKENS[i % 3]`` (8, 32 or 96) tokens, so long
  answers share batches with short ones (and could hold them hostage), while every distinct request is one
  (model, prompt) pair whose answer alone is computed once. Greedy (temperature 0), no stop strings. The main mix
  draws the model uniformly from 4 adapters + the base, the prompt uniformly from all prompts.
- Client: async httpx, a semaphore of ``--concurrency`` in-flight requests. Per request: time to first token
  (the first SSE chunk carrying text; without streaming, and when no chunk carries text, the latency), latency,
  completion tokens (``usage``; streamed: the ``include_usage`` chunk). Per run: req/s and generated tokens/s over
  the run's wall time, p50/p95 of TTFT and latency. Batch and lock deliver a streamed answer in one chunk, so
  their TTFT is their latency; step mode streams token by token.
- Lock mode answers one request at a time (about 1.7 s each for smollm2 on 2 cores), so it gets
  ``--lock-requests`` (32) instead of 500 (the table's requests column; the first 32 of the same mix): its req/s
  and tok/s are steady-state rates all the same, but its latencies (one queue of 32, all sent at once) are lower
  than 500 requests would give.
- Adapter scaling (the S-LoRA question: does throughput hold as adapters grow?): ``--scale-mode`` (step) with 1,
  4 and 16 distinct adapters in the mix (no base), ``--scale-requests`` (128) each, over the same first
  ``--scale-prompts`` (3: one of each max_tokens) prompts, so only the number of adapters changes.
- Time budget (smollm2, 2 cores, extrapolated from a 64-request run): the answers alone (96 distinct requests,
  ~3 min), lock (~2 min), step (~5 min) and batch (~8 min) with 500 requests twice each, scaling (~3 min), server
  starts (~1 min): about 21 min. Trim with the request-count flags if needed.
- Leakage: every distinct request is first answered alone (one request at a time on the lock server, or the
  first mode's if lock is not run; non-streaming), and every answer in every run must equal it. A mismatch is
  printed with both texts and counted in the table (it must be 0; a greedy near-tie that flips under batching
  shows here too, and is not hidden).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MAX_TOKENS = (8, 32, 96)  # prompt i asks for MAX_TOKENS[i % 3]
PROMPTS = [
    "The capital of France is",
    "Write a short story about a robot who learns to paint.\n",
    "### Instruction:\nName three colors.\n\n### Response:\n",
    "Q: What is the boiling point of water at sea level?\nA:",
    "Once upon a time, in a small village by the sea,",
    "Here is a recipe for a simple tomato soup:\n",
    "def fibonacci(n):\n",
    "The three most important things to know about photosynthesis are",
    "### Instruction:\nTranslate to French: good morning\n\n### Response:\n",
    "Dear hiring manager,\n",
    "The history of the bicycle began in",
    "Sherlock Holmes took his bottle from the corner of the mantel-piece and",
]
ADAPTERS = 16  # loaded in every server; the main mix uses the first 4


def make_adapters(model_name: str, root: Path, count: int, std: float) -> dict[str, str]:
    """``count`` saved LoRA adapters of ``model_name`` with random A and B (a trained adapter's shape and cost)."""
    import torch
    from peft import get_peft_model

    from peft_gpt2.models.loading import config_fingerprint, load_base
    from peft_gpt2.models.methods import adapter_config
    from peft_gpt2.run_folder import Provenance

    base, _ = load_base(model_name)
    fingerprint = config_fingerprint(base.config)
    peft_model = get_peft_model(base, adapter_config("lora", {"r": 8}, base))  # the architecture's default targets
    paths = {}
    for i in range(count):
        torch.manual_seed(1000 + i)
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5)
            elif "lora_B" in name:
                torch.nn.init.normal_(p, std=std)
        out = root / f"ad{i:02d}"
        peft_model.save_pretrained(out)
        Provenance(out.name, "lora", model_name, base_config_fingerprint=fingerprint).write(out)
        paths[out.name] = str(out)
    return paths


class Server:
    """One ``serve`` process for ``mode`` on a free loopback port; ``with`` starts it and waits for /health."""

    def __init__(self, model: str, adapters: dict[str, str], mode: str, max_batch: int, max_queue: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url, self.mode = f"http://127.0.0.1:{self.port}", mode
        self.code = (
            "from peft_gpt2.serving.app import serve; "
            f"serve({model!r}, {adapters!r}, port={self.port}, mode={mode!r}, max_batch={max_batch}, "
            f"max_queue={max_queue}, log_level='warning')"
        )

    def __enter__(self) -> Server:
        quiet = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
        self.proc = subprocess.Popen([sys.executable, "-c", self.code], env=quiet)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the {self.mode} server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.__exit__()
        raise SystemExit(f"the {self.mode} server did not come up in 10 minutes")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def mix(n: int, models: list[str], prompts: int, seed: int) -> list[tuple[str, int]]:
    """``n`` requests (model, prompt index), drawn uniformly with a fixed seed."""
    rng = random.Random(seed)
    return [(rng.choice(models), rng.randrange(prompts)) for _ in range(n)]


def body(request: tuple[str, int], stream: bool) -> dict:
    model, p = request
    out = {"model": model, "prompt": PROMPTS[p], "max_tokens": MAX_TOKENS[p % 3], "temperature": 0}
    return {**out, "stream": True, "stream_options": {"include_usage": True}} if stream else out


async def one(client: httpx.AsyncClient, request: tuple[str, int], stream: bool) -> dict:
    """Send one request; its text, completion tokens, TTFT and latency in seconds (or its error)."""
    start = time.perf_counter()
    ttft, parts, tokens, done = None, [], None, not stream
    if not stream:
        r = await client.post("/v1/completions", json=body(request, False))
        if r.status_code != 200:
            return {"error": f"{r.status_code}: {r.text[:300]}"}
        answer = r.json()
        parts, tokens = [answer["choices"][0]["text"]], answer["usage"]["completion_tokens"]
    else:
        async with client.stream("POST", "/v1/completions", json=body(request, True)) as r:
            if r.status_code != 200:
                return {"error": f"{r.status_code}: {(await r.aread())[:300]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": f"in stream: {chunk['error']}"}
                text = "".join(c.get("text") or "" for c in chunk.get("choices") or [])
                if text and ttft is None:
                    ttft = time.perf_counter() - start
                parts.append(text)
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    latency = time.perf_counter() - start
    if not done or tokens is None:
        return {"error": "stream ended without data: [DONE]" if not done else "no usage in the answer"}
    return {"text": "".join(parts), "tokens": tokens, "ttft": ttft or latency, "latency": latency}


async def load(url: str, requests: list[tuple[str, int]], stream: bool, concurrency: int, warm: int = 0):
    """All ``requests``, at most ``concurrency`` in flight, after ``warm`` of them untimed (a fresh server's first
    calls allocate); the wall seconds and one result per request."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as client:

        async def gated(request: tuple[str, int]) -> dict:
            async with gate:
                return await one(client, request, stream)

        await asyncio.gather(*(gated(r) for r in requests[:warm]))
        start = time.perf_counter()
        results = await asyncio.gather(*(gated(r) for r in requests))
        return time.perf_counter() - start, results


def reference(url: str, keys: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """Each distinct request answered alone: one at a time, non-streaming."""

    async def alone() -> dict:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            out = {}
            for key in keys:
                result = await one(client, key, False)
                if "error" in result:
                    raise SystemExit(f"reference answer for {key} failed: {result['error']}")
                out[key] = result["text"]
            return out

    return asyncio.run(alone())


def summarize(label: dict, requests: list, wall: float, results: list[dict], ref: dict) -> dict:
    """One table row: rates, quantiles, and every answer checked against the answer alone."""
    ok = [(q, r) for q, r in zip(requests, results, strict=True) if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    mismatches = [(q, r["text"]) for q, r in ok if r["text"] != ref[q]]
    for (model, p), got in mismatches[:10]:
        print(f"  MISMATCH {label} model={model} prompt={p}:\n    alone:   {ref[(model, p)]!r}\n    here:    {got!r}")
    for err in errors[:3]:
        print(f"  ERROR {label}: {err}")

    def q(key: str, pct: int) -> float:
        values = [r[key] for _, r in ok]
        return round(statistics.quantiles(values, n=100)[pct - 1], 3) if len(values) > 1 else float("nan")

    tokens = sum(r["tokens"] for _, r in ok)
    row = {**label, "requests": len(requests), "wall_s": round(wall, 2), "req_per_s": round(len(ok) / wall, 3)}
    row |= {"tok_per_s": round(tokens / wall, 1), "completion_tokens": tokens}
    row |= {"ttft_p50": q("ttft", 50), "ttft_p95": q("ttft", 95), "latency_p50": q("latency", 50)}
    row |= {"latency_p95": q("latency", 95), "mismatches": len(mismatches), "errors": len(errors)}
    print(json.dumps(row), flush=True)
    return row


def changed_answers(ref: dict, adapters: list[str]) -> dict[str, str]:
    """Per adapter: on how many of its prompts its answer differs from the base's; each must change one."""
    out = {}
    for name in adapters:
        prompts = [p for m, p in ref if m == name]
        if not prompts:  # not in any mix of this run
            continue
        changed = sum(ref[(name, p)] != ref[("base", p)] for p in prompts)
        out[name] = f"{changed}/{len(prompts)}"
        if not changed:
            raise SystemExit(f"adapter {name} answers every prompt as the base does: raise --std")
    return out


def distinct_answers(ref: dict, models: list[str]) -> str:
    """How many different answers ``models`` give per prompt, on average: near ``len(models)``, an answer that
    leaked from another adapter's row would not go unseen."""
    full = [p for p in range(len(PROMPTS)) if all((m, p) in ref for m in models)]
    per_prompt = [len({ref[(m, p)] for m in models}) for p in full]
    return f"{statistics.mean(per_prompt):.1f} of {len(models)} ({len(full)} prompts)" if full else "-"


def machine() -> dict:
    import peft
    import torch
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads",
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "commit": commit,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(result: dict) -> str:
    """The two tables: mode x streaming with ratios against lock, and the adapter scaling runs."""
    rows, info = result["runs"], result["machine"]
    lines = [
        "# Serving under load: step vs batch vs lock, streaming and not",
        "",
        f"`{result['command']}` on {info['machine']}, torch {info['torch']}, commit {info['commit']}; "
        f"load average before {info['load_average_before']}, after {info['load_average_after']}",
        "",
        f"{result['model']}, concurrency {result['concurrency']}, max_batch {result['max_batch']}; greedy; "
        f"max_tokens {'/'.join(map(str, MAX_TOKENS))} by prompt; models drawn uniformly from 4 adapters + base. "
        "Seconds; vs lock: the ratio to lock mode's rate (same streaming setting). Mismatches: answers that differ "
        "from the same request served alone (must be 0).",
        "",
        "| mode | stream | requests | req/s | tok/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 | req/s vs lock "
        "| tok/s vs lock | mismatches | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if "adapters" not in r):
        lock = next((x for x in rows if x["mode"] == "lock" and x["stream"] == r["stream"]), None)
        vs = [f"{r[k] / lock[k]:.2f}x" if lock and lock[k] else "-" for k in ("req_per_s", "tok_per_s")]
        lines.append(
            f"| {r['mode']} | {'yes' if r['stream'] else 'no'} | {r['requests']} | {r['req_per_s']:.2f} | "
            f"{r['tok_per_s']:.1f} | {r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} | {r['latency_p50']:.2f} | "
            f"{r['latency_p95']:.2f} | {vs[0]} | {vs[1]} | {r['mismatches']} | {r['errors']} |"
        )
    scaling = [r for r in rows if "adapters" in r]
    if scaling:
        lines += [
            "",
            f"Adapter scaling ({scaling[0]['mode']} mode, no streaming, adapters only, the first "
            f"{result['scale_prompts']} prompts):",
            "",
            "| distinct adapters | requests | req/s | tok/s | tok/s vs 1st row | latency p50 | latency p95 "
            "| mismatches | errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['adapters']} | {r['requests']} | {r['req_per_s']:.2f} | {r['tok_per_s']:.1f} | "
            f"{r['tok_per_s'] / scaling[0]['tok_per_s']:.2f}x | {r['latency_p50']:.2f} | {r['latency_p95']:.2f} | "
            f"{r['mismatches']} | {r['errors']} |"
            for r in scaling
        ]
    lines += [
        "",
        f"Answers alone: each adapter changes the base's answer on {result['adapters_change_answers']} prompts; "
        f"4 adapters + base give {result['distinct_answers_per_prompt']} different answers per prompt.",
    ]
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny-gpt2 and few requests")
    ap.add_argument("--model", default=None, help="default smollm2-135m (--quick: tiny-gpt2)")
    ap.add_argument("--modes", nargs="+", default=["step", "batch", "lock"])
    ap.add_argument("--streams", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--requests", type=int, default=None, help="per run; default 500 (--quick: 40)")
    ap.add_argument("--lock-requests", type=int, default=None, help="per lock run; default 32 (--quick: 16)")
    ap.add_argument("--scale-mode", default="step", help="mode of the 1/4/16-adapter runs (must be in --modes)")
    ap.add_argument("--scale-adapters", type=int, nargs="*", default=[1, 4, 16], help="empty: no scaling runs")
    ap.add_argument("--scale-requests", type=int, default=None, help="per scaling run; default 128 (--quick: 40)")
    ap.add_argument("--scale-prompts", type=int, default=3, help="the first N prompts, in the scaling runs")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=None, help="server max_batch; default: --concurrency")
    ap.add_argument("--std", type=float, default=0.3, help="std of the random LoRA B (0.02 leaves smollm2's answers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    args.model = args.model or ("tiny-gpt2" if args.quick else "smollm2-135m")
    args.requests = args.requests or (40 if args.quick else 500)
    args.lock_requests = args.lock_requests or (16 if args.quick else 32)
    args.scale_requests = args.scale_requests or (40 if args.quick else 128)
    args.max_batch = args.max_batch or args.concurrency
    if args.scale_adapters and args.scale_mode not in args.modes:
        ap.error(f"--scale-mode {args.scale_mode} is not in --modes {args.modes}")
    if max(args.scale_adapters, default=0) > ADAPTERS:
        ap.error(f"--scale-adapters: at most {ADAPTERS}")
    return args


def main() -> None:
    args = parse()
    start, info = time.perf_counter(), machine()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_adapters(args.model, Path(tmp), ADAPTERS, args.std)
        names = list(paths)
        main_mix = mix(args.requests, [*names[:4], "base"], len(PROMPTS), args.seed)
        scale_mix = {
            n: mix(args.scale_requests, names[:n], args.scale_prompts, args.seed + n) for n in args.scale_adapters
        }
        every = [(m, p) for m in [*names[:4], "base"] for p in range(len(PROMPTS))]  # for distinct_answers
        keys = {*main_mix, *every, *(k for m in scale_mix.values() for k in m)}
        first = "lock" if "lock" in args.modes else args.modes[0]  # its server answers the reference, alone
        ref, rows = {}, []
        for mode in [first, *(m for m in args.modes if m != first)]:
            with Server(args.model, paths, mode, args.max_batch, max(256, args.concurrency)) as server:
                if not ref:
                    print(f"reference: {len(keys)} distinct requests, each alone ({mode} server)", flush=True)
                    ref = reference(server.url, sorted(keys))
                    changed = changed_answers(ref, names)
                    distinct = distinct_answers(ref, [*names[:4], "base"])
                    print(f"  each adapter changes the base's answer on: {changed}; distinct: {distinct}", flush=True)
                requests = main_mix[: args.lock_requests] if mode == "lock" else main_mix
                for i, stream in enumerate(s == "on" for s in args.streams):
                    warm = 0 if i or mode == first else min(8, len(requests))  # the reference warmed its server
                    wall, results = asyncio.run(load(server.url, requests, stream, args.concurrency, warm))
                    rows.append(summarize({"mode": mode, "stream": stream}, requests, wall, results, ref))
                for n, requests in scale_mix.items() if mode == args.scale_mode else ():
                    wall, results = asyncio.run(load(server.url, requests, False, args.concurrency))
                    label = {"mode": mode, "stream": False, "adapters": n}
                    rows.append(summarize(label, requests, wall, results, ref))
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "command": "python bench/serve_load.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "concurrency": args.concurrency,
        "max_batch": args.max_batch,
        "scale_prompts": args.scale_prompts,
        "max_tokens_by_prompt": [MAX_TOKENS[i % 3] for i in range(len(PROMPTS))],
        "adapters_change_answers": changed,
        "distinct_answers_per_prompt": distinct,
        "machine": info,
        "total_s": round(time.perf_counter() - start, 1),
        "runs": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"serve_load-{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"serve_load-{args.model}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"total {result['total_s']} s; results in {out}/serve_load-{args.model}.{{json,md}}")


if __name__ == "__main__":
    main()
