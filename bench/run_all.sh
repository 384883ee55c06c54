#!/usr/bin/env bash
# Every benchmark number in bench/results/, in one go (about 65 min on a 2-core CPU; run it on a quiet
# machine: each script times its own baseline in the same run, but other load still skews ratios).
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/train_speed.py                                    # training: ours vs hand-written Trainer
python bench/eval_batching.py --model smollm2-135m --questions 50   # QA evaluation: batched vs one at a time
python bench/adapters.py --model smollm2-135m                  # swap latency, merged/unmerged, mixed batches
python bench/adapters.py --model tiny-gpt2
python bench/server_modes.py --repeats 3 --threads 1           # server: batching worker vs one lock
python bench/serve_load.py                                     # server under load: step vs batch vs lock, streaming, 1/4/16 adapters
