#!/usr/bin/env bash
# Qwen2.5-VL 7B-Instruct lora fine-tuning, global batch 32, sharding stage2. See shell/baseline_common.sh for the overridable variables.
MODE=lora
SHARDING=${SHARDING-stage2}
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
LR=${LR:-1e-4}
source "$(dirname "$0")/baseline_common.sh" "$@"
