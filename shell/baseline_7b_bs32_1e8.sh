#!/bin/sh
# baseline_7b_bs32_1e8.sh: Qwen2.5-VL-7B-Instruct full fine-tuning (LLM trained; ViT and merger frozen), global batch 32, sharding stage2.
# Overridable variables and the CPU form: shell/baseline_common.sh.
RECIPE_MODE=full
RECIPE_GPUS=8
RECIPE_BATCH_SIZE=32
RECIPE_PER_DEVICE_BATCH_SIZE=2
RECIPE_MODEL=Qwen/Qwen2.5-VL-7B-Instruct
RECIPE_OUTPUT_DIR=work_dirs/baseline_330k_7b_bs32_1e8
RECIPE_IMAGE_RESOLUTION=768
RECIPE_SHARDING=stage2
RECIPE_LAUNCH=distributed
. "$(dirname "$0")/baseline_common.sh"
