#!/usr/bin/env bash
# Shared launcher of the baseline_*.sh fine-tuning scripts (source it; do not run it directly).
# The caller sets MODE (full | lora), SHARDING (stage2 | stage3 | ""), default MODEL and LR;
# GPUS, BATCH_SIZE, PER_DEVICE_BATCH_SIZE, tensor_parallel_degree, MODEL, META_PATH,
# OUTPUT_DIR and LR can be overridden from the environment; extra arguments are passed on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GPUS=${GPUS:-8}
BATCH_SIZE=${BATCH_SIZE:-32}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-1}
tensor_parallel_degree=${tensor_parallel_degree:-1}
META_PATH=${META_PATH:-configs/baseline_6data_330k.json}
OUTPUT_DIR=${OUTPUT_DIR:-work_dirs/$(basename "$0" .sh)}

if [ "${MODE}" = "lora" ]; then
  TRAIN_FLAGS=(--lora --lora_rank 8 --lora_alpha 32 --lora_dropout 0.05 --freeze_vit --tune_mm_mlp)
else
  TRAIN_FLAGS=(--freeze_vit --tune_mm_mlp --recompute)
fi

if python -c "import paddle, sys; sys.exit(0 if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else 1)" 2>/dev/null; then
  VISIBLE=$(python -c "import paddle; print(paddle.device.cuda.device_count())")
  GPUS=$(( GPUS < VISIBLE ? GPUS : VISIBLE ))
  LAUNCH=(python -m paddle.distributed.launch --devices "$(seq -s, 0 $((GPUS - 1)))")
  PRECISION=(--bf16 --fp16_opt_level O2)
  SHARDING_FLAGS=()
  if [ -n "${SHARDING}" ] && [ "${GPUS}" -gt 1 ]; then
    SHARDING_FLAGS=(--sharding "${SHARDING}" --sharding_parallel_degree $((GPUS / tensor_parallel_degree)))
  fi
else
  echo "NOTICE: no GPU found: running the same training on CPU, one process, float32, without sharding" \
       "(GPUS=${GPUS}, sharding '${SHARDING}' and bf16 are ignored here)." >&2
  GPUS=1
  LAUNCH=(python)
  PRECISION=()
  SHARDING_FLAGS=()
fi
DATA_PARALLEL=$(( GPUS / tensor_parallel_degree ))
ACCUMULATION=$(( BATCH_SIZE / (PER_DEVICE_BATCH_SIZE * DATA_PARALLEL) ))
ACCUMULATION=$(( ACCUMULATION > 0 ? ACCUMULATION : 1 ))
echo "Training ${MODE} ${MODEL}: ${GPUS} device(s), batch ${BATCH_SIZE} = ${PER_DEVICE_BATCH_SIZE} x ${DATA_PARALLEL} x ${ACCUMULATION} accumulation, lr ${LR}, output ${OUTPUT_DIR}"

"${LAUNCH[@]}" examples/qwen2_5_vl_finetune.py \
  --model_name_or_path "${MODEL}" \
  --meta_path "${META_PATH}" \
  --output_dir "${OUTPUT_DIR}" \
  --per_device_train_batch_size "${PER_DEVICE_BATCH_SIZE}" \
  --gradient_accumulation_steps "${ACCUMULATION}" \
  --tensor_parallel_degree "${tensor_parallel_degree}" \
  --learning_rate "${LR}" \
  --warmup_ratio 0.03 --lr_scheduler_type cosine --weight_decay 0.1 \
  --num_train_epochs 1 --max_seq_length 8192 --image_resolution 512 \
  --logging_steps 1 --save_steps 1000 --save_total_limit 1 \
  --dataloader_num_workers 1 --seed 42 --report_to none \
  "${TRAIN_FLAGS[@]}" "${PRECISION[@]}" "${SHARDING_FLAGS[@]}" "$@"
