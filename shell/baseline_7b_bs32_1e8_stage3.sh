#!/bin/sh
# baseline_7b_bs32_1e8_stage3.sh: (not in PaddleMIX) baseline_7b_bs32_1e8.sh with sharding stage3, whose final save works here.
# Overridable variables and the CPU form: shell/baseline_common.sh.
RECIPE_MODE=full
RECIPE_GPUS=8
RECIPE_BATCH_SIZE=32
RECIPE_PER_DEVICE_BATCH_SIZE=2
RECIPE_MODEL=Qwen/Qwen2.5-VL-7B-Instruct
RECIPE_OUTPUT_DIR=work_dirs/baseline_330k_7b_bs32_1e8_stage3
RECIPE_IMAGE_RESOLUTION=768
RECIPE_SHARDING=stage3
RECIPE_LAUNCH=distributed
. "$(dirname "$0")/baseline_common.sh"
