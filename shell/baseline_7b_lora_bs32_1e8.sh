#!/bin/sh
# baseline_7b_lora_bs32_1e8.sh: Qwen2.5-VL-7B-Instruct LoRA (rank 8, alpha 32) on the decoder's projections, global batch 32, sharding stage2.
# Overridable variables and the CPU form: shell/baseline_common.sh.
RECIPE_MODE=lora
RECIPE_GPUS=8
RECIPE_BATCH_SIZE=32
RECIPE_PER_DEVICE_BATCH_SIZE=2
RECIPE_MODEL=Qwen/Qwen2.5-VL-7B-Instruct
RECIPE_OUTPUT_DIR=work_dirs/baseline_330k_7b_bs32_1e8
RECIPE_IMAGE_RESOLUTION=768
RECIPE_SHARDING=stage2
RECIPE_LAUNCH=distributed
RECIPE_LORA_RANK=8
RECIPE_LORA_ALPHA=32
. "$(dirname "$0")/baseline_common.sh"
