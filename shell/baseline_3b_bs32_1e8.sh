#!/usr/bin/env bash
# Qwen2.5-VL 3B-Instruct full fine-tuning, global batch 32, sharding stage2. See shell/baseline_common.sh for the overridable variables.
MODE=full
SHARDING=${SHARDING-stage2}
MODEL=${MODEL:-Qwen/Qwen2.5-VL-3B-Instruct}
LR=${LR:-1e-5}
source "$(dirname "$0")/baseline_common.sh" "$@"
