#!/bin/sh
# baseline_3b_lora_bs32_1e8.sh: Qwen2.5-VL-3B-Instruct LoRA (rank 12, alpha 256) on the decoder's projections, global batch 32, sharding stage1.
# Overridable variables and the CPU form: shell/baseline_common.sh.
RECIPE_MODE=lora
RECIPE_GPUS=8
RECIPE_BATCH_SIZE=32
RECIPE_PER_DEVICE_BATCH_SIZE=1
RECIPE_MODEL=Qwen/Qwen2.5-VL-3B-Instruct
RECIPE_OUTPUT_DIR=work_dirs/baseline_330k_3b_bs32_1e8
RECIPE_IMAGE_RESOLUTION=512
RECIPE_SHARDING=stage1
RECIPE_LAUNCH=distributed
RECIPE_LORA_RANK=12
RECIPE_LORA_ALPHA=256
. "$(dirname "$0")/baseline_common.sh"
