#!/bin/sh
# baseline_3b_lora_bs32_1e8_1mp.sh: Qwen2.5-VL-3B-Instruct LoRA (rank 8, alpha 32) on one device (plain python), global batch 4.
# Overridable variables and the CPU form: shell/baseline_common.sh.
RECIPE_MODE=lora
RECIPE_GPUS=1
RECIPE_BATCH_SIZE=4
RECIPE_PER_DEVICE_BATCH_SIZE=2
RECIPE_MODEL=Qwen/Qwen2.5-VL-3B-Instruct
RECIPE_OUTPUT_DIR=work_dirs/baseline_330k_3b_bs32_1e8_1mp
RECIPE_IMAGE_RESOLUTION=768
RECIPE_SHARDING=stage1
RECIPE_LAUNCH=single
RECIPE_LORA_RANK=8
RECIPE_LORA_ALPHA=32
. "$(dirname "$0")/baseline_common.sh"
