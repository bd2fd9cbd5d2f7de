#!/bin/sh
# Shared body of the shell/baseline_*.sh fine-tuning recipes (PaddleMIX's, flag for flag).
# POSIX sh (runs the same under dash and bash); each recipe sets its RECIPE_* values and
# sources this file with `.`, which sees the recipe's own arguments in "$@".
#
# Environment overrides (PaddleMIX's): GPUS, BATCH_SIZE, PER_DEVICE_BATCH_SIZE,
# tensor_parallel_degree, sharding_parallel_degree; and ours: MODEL, META_PATH, OUTPUT_DIR, LR,
# DEVICE=cpu (run the CPU form on a GPU machine), DRY_RUN=1 (print the training command's
# arguments, one per line, and stop). Extra arguments go to the training script
# ($RECIPE_SCRIPT, default examples/qwen2_5_vl_finetune.py) after the recipe's, so they
# override it (e.g. --max_steps 100). Relative paths are taken from the repository root.
# RECIPE_DATASETS (the "official" recipe) trains on registered datasets with its pixel budget
# and packing instead of --image_resolution; RECIPE_EPOCHS, RECIPE_LR, RECIPE_WARMUP_RATIO and
# RECIPE_WEIGHT_DECAY default to the baseline recipes' 1, 1e-8, 0.1 (and 100 warmup steps), 0.1.
#
# Without a GPU the same recipe runs as one CPU process (instead of paddle.distributed.launch
# over GPUS devices), with the global batch kept by gradient accumulation; the training script
# switches off, each with a NOTICE, what needs GPUs: sharding, bf16 and master gradients.
set -eu
cd "$(dirname "$0")/.."

GPUS=${GPUS:-$RECIPE_GPUS}
BATCH_SIZE=${BATCH_SIZE:-$RECIPE_BATCH_SIZE}
PER_DEVICE_BATCH_SIZE=${PER_DEVICE_BATCH_SIZE:-$RECIPE_PER_DEVICE_BATCH_SIZE}
tensor_parallel_degree=${tensor_parallel_degree:-1}
MODEL=${MODEL:-$RECIPE_MODEL}
META_PATH=${META_PATH:-configs/baseline_6data_330k.json}
OUTPUT_DIR=${OUTPUT_DIR:-$RECIPE_OUTPUT_DIR}
LR=${LR:-${RECIPE_LR:-1e-8}}
RECIPE_SCRIPT=${RECIPE_SCRIPT:-examples/qwen2_5_vl_finetune.py}

export PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
export MASTER_PORT=34229
export TF_CPP_MIN_LOG_LEVEL=3

ON_GPU=0
if [ "${DEVICE:-}" != cpu ] && python -c "import paddle, sys; sys.exit(0 if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else 1)" 2>/dev/null; then
    ON_GPU=1
fi
if [ "$ON_GPU" = 0 ]; then
    if [ "$GPUS" -gt 1 ]; then
        echo "NOTICE: no GPU found: one CPU process instead of paddle.distributed.launch over GPUS=$GPUS;" \
             "the global batch stays $BATCH_SIZE through gradient accumulation" >&2
    fi
    echo "NOTICE: no GPU found: training on CPU; sharding '$RECIPE_SHARDING', bf16 and --amp_master_grad" \
         "are switched off by the training script" >&2
    GPUS=1
fi
GRADIENT_ACC=$((BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS))
GRADIENT_ACC=$((GRADIENT_ACC > 0 ? GRADIENT_ACC : 1))
sharding_parallel_degree=${sharding_parallel_degree:-$((GPUS / tensor_parallel_degree))}

if [ "$RECIPE_MODE" = lora ]; then
    set -- --lora True --lora_rank="$RECIPE_LORA_RANK" --lora_alpha="$RECIPE_LORA_ALPHA" --lora_dropout=0.0 \
        --lora_target_modules="model.layers.*q_proj.*,model.layers.*k_proj.*,model.layers.*v_proj.*,model.layers.*gate_proj.*,model.layers.*up_proj.*,model.layers.*down_proj.*,model.layers.*o_proj.*" \
        "$@"
fi
if [ -n "${RECIPE_DATASETS:-}" ]; then
    set -- --dataset_use "$RECIPE_DATASETS" --max_pixels 50176 --min_pixels 784 --data_flatten True "$@"
else
    set -- --image_resolution "$RECIPE_IMAGE_RESOLUTION" --warmup_steps 100 "$@"
fi
set -- \
    --do_train \
    --model_name_or_path "$MODEL" \
    --output_dir "$OUTPUT_DIR" \
    --logging_dir "$OUTPUT_DIR/logs" \
    --meta_path "$META_PATH" \
    --overwrite_output_dir True \
    --dataloader_num_workers 8 \
    --bf16 True \
    --fp16 False \
    --fp16_opt_level "O2" \
    --num_train_epochs "${RECIPE_EPOCHS:-1}" \
    --per_device_train_batch_size "$PER_DEVICE_BATCH_SIZE" \
    --gradient_accumulation_steps "$GRADIENT_ACC" \
    --freeze_vit True \
    --max_seq_length 8192 \
    --recompute False \
    --max_grad_norm 1.0 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 1000 \
    --save_total_limit 1 \
    --learning_rate "$LR" \
    --warmup_ratio "${RECIPE_WARMUP_RATIO:-0.1}" \
    --weight_decay "${RECIPE_WEIGHT_DECAY:-0.1}" \
    --optim "adamw" \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --report_to "visualdl" \
    --tensor_parallel_degree="$tensor_parallel_degree" \
    --sharding_parallel_degree="$sharding_parallel_degree" \
    --pipeline_parallel_degree=1 \
    --sep_parallel_degree=1 \
    --sharding="$RECIPE_SHARDING" \
    --amp_master_grad=1 \
    --hybrid_parallel_topo_order="sharding_first" \
    "$@"

if [ -n "${DRY_RUN:-}" ]; then
    printf '%s\n' "$@"
    exit 0
fi
if [ "$ON_GPU" = 1 ] && [ "$RECIPE_LAUNCH" = distributed ]; then
    set -- python -m paddle.distributed.launch --master 127.0.0.1:8080 --nnodes 1 --nproc_per_node "$GPUS" \
        --rank 0 --ips 127.0.0.1 --run_mode=collective --log_dir "$OUTPUT_DIR/paddle_distributed_logs" \
        "$RECIPE_SCRIPT" "$@"
else
    set -- python "$RECIPE_SCRIPT" "$@"
fi

mkdir -p "$OUTPUT_DIR"
echo "+ $*" >&2
# POSIX sh has no pipefail: the training's exit status goes through a file past tee.
STATUS_FILE=$(mktemp)
{ "$@" && echo 0 >"$STATUS_FILE" || echo $? >"$STATUS_FILE"; } 2>&1 | tee -a "$OUTPUT_DIR/training_log.txt"
STATUS=$(cat "$STATUS_FILE")
rm -f "$STATUS_FILE"
exit "$STATUS"
