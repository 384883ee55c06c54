"""Batch vs lock mode of peft_gpt2.serving.app: N concurrent mixed-adapter /v1/completions requests over HTTP.

    python bench/server_modes.py --concurrency 50 100 200 --modes batch lock --max-tokens 16 --repeats 3
The server runs in its own process (serve(), uvicorn), the load from an asyncio httpx client in this one.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(os.environ.get("BENCH_DIR", "/tmp/srvbench"))
PROMPTS = [
    "### Instruction:\nDouble it.\n\n### Input:\n7\n\n### Response:\n",
    "### Instruction:\nShout it.\n\n### Input:\ncat3\n\n### Response:\n",
    "Once upon a time",
    "### Instruction:\nDouble it.\n\n### Input:\n12\n\n### Response:\n",
]
MODELS = ["A", "B", "base"]


def adapters() -> dict[str, str]:
    """Two tiny-gpt2 LoRA adapters (trained 2 steps once, then reused)."""
    ROOT.mkdir(parents=True, exist_ok=True)
    out = {n: ROOT / "adapters" / f"bench-{n}" for n in ("A", "B")}
    if all((p / "adapter_config.json").exists() for p in out.values()):
        return {n: str(p) for n, p in out.items()}
    from peft_gpt2.config.recipe import load_recipe
    from peft_gpt2.training.train import train

    data = {
        "A": [{"instruction": "Double it.", "input": str(a), "output": str(2 * a)} for a in range(16)],
        "B": [{"instruction": "Shout it.", "input": f"cat{i}", "output": f"CAT{i}!"} for i in range(16)],
    }
    for name in ("A", "B"):
        (ROOT / f"{name}.json").write_text(json.dumps(data[name]))
        (ROOT / f"{name}.yaml").write_text(
            f"name: bench-{name}\nmethod: lora\noutput_dir: {ROOT / 'adapters'}\nmodel: {{name: tiny-gpt2}}\n"
            f"data: {{path: {ROOT / f'{name}.json'}, template: short, max_length: 48}}\n"
            "train: {max_steps: 2, learning_rate: 5.0e-2, precision: fp32, per_device_train_batch_size: 8}\n"
        )
        train(load_recipe(ROOT / f"{name}.yaml"))
    return {n: str(p) for n, p in out.items()}


async def load(url: str, n: int, max_tokens: int) -> tuple[float, list[float]]:
    """Fire n mixed requests at once; return wall seconds and per-request latencies."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one(i: int) -> float:
            body = {"model": MODELS[i % 3], "prompt": PROMPTS[(i // 3) % 4], "max_tokens": max_tokens, "temperature": 0}
            t = time.perf_counter()
            r = await client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return time.perf_counter() - t

        await asyncio.gather(*(one(i) for i in range(8)))  # warm-up, connections open
        start = time.perf_counter()
        latencies = await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - start, list(latencies)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--modes", nargs="+", default=["batch", "lock"])
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the server (0: torch's default)")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    paths = adapters()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    rows, procs, urls = [], [], {}
    try:
        for mode in args.modes:  # both servers up at once; runs interleave, so machine load hits both alike
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            code = (
                "from peft_gpt2.serving.app import serve; "
                f"serve('tiny-gpt2', {paths!r}, port={port}, mode={mode!r}, max_batch={args.max_batch}, "
                "log_level='warning')"
            )
            procs.append(subprocess.Popen([sys.executable, "-c", code], env=env))
            urls[mode] = f"http://127.0.0.1:{port}"
        for url in urls.values():
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
        for rep in range(args.repeats):
            for n in args.concurrency:
                for mode, url in urls.items():
                    wall, lat = asyncio.run(load(url, n, args.max_tokens))
                    q = statistics.quantiles(lat, n=100)
                    rows.append(dict(mode=mode, n=n, rep=rep, rps=n / wall, p50=q[49], p95=q[94], wall=wall))
                    print(
                        json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}),
                        flush=True,
                    )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    print(f"\n{args.max_tokens} tokens each, {args.repeats} repeats (medians; req/s range in brackets)")
    print("mode    N   req/s  [min-max]      p50 ms  p95 ms")
    summary = []
    for n in args.concurrency:
        for mode in args.modes:
            rs = [r for r in rows if r["mode"] == mode and r["n"] == n]
            med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p95")}
            lo, hi = min(r["rps"] for r in rs), max(r["rps"] for r in rs)
            summary.append({"mode": mode, "n": n, **{k: round(v, 3) for k, v in med.items()}})
            print(
                f"{mode:6} {n:4} {med['rps']:6.1f}  [{lo:5.1f}-{hi:5.1f}]  "
                f"{med['p50'] * 1000:7.0f} {med['p95'] * 1000:7.0f}"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": "python bench/server_modes.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPUs, server threads {args.threads or 'default'}",
        "max_tokens": args.max_tokens,
        "medians": summary,
        "runs": rows,
    }
    (out / "server_modes.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
