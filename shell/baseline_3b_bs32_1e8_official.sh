#!/bin/sh
# baseline_3b_bs32_1e8_official.sh: PaddleMIX's "official" recipe, on examples/qwen2_5_vl_finetune_official.py:
# Qwen2.5-VL-3B-Instruct full fine-tuning (LLM trained; ViT and merger frozen) on its six registered datasets,
# packed, 784..50176 pixels per image, half an epoch, lr 1e-4, sharding stage2. PaddleMIX fixes the accumulation
# at 4, so the global batch is GPUS x PER_DEVICE_BATCH_SIZE x 4 (2 x 4 x 4 = 32).
# Overridable variables (sharding_parallel_degree too, default 1 as there) and the CPU form: shell/baseline_common.sh.
RECIPE_MODE=full
RECIPE_GPUS=2
RECIPE_PER_DEVICE_BATCH_SIZE=4
RECIPE_BATCH_SIZE=$((${GPUS:-$RECIPE_GPUS} * ${PER_DEVICE_BATCH_SIZE:-$RECIPE_PER_DEVICE_BATCH_SIZE} * 4))
RECIPE_MODEL=Qwen/Qwen2.5-VL-3B-Instruct
RECIPE_OUTPUT_DIR=work_dirs/baseline_330k_3b_bs4_official
RECIPE_SHARDING=stage2
RECIPE_LAUNCH=distributed
RECIPE_SCRIPT=examples/qwen2_5_vl_finetune_official.py
RECIPE_DATASETS=dvqa_train_200k,chartqa_train_18k,ai2d_train_12k,docvqa_train_10k,geoqa,synthdog_en
RECIPE_EPOCHS=0.5
RECIPE_LR=1e-4
RECIPE_WARMUP_RATIO=0.03
RECIPE_WEIGHT_DECAY=0
sharding_parallel_degree=${sharding_parallel_degree:-1}
. "$(dirname "$0")/baseline_common.sh"
