#!/bin/sh
# Launch examples/distributed_qwen2_5_vl_infer.py with one process per tensor-parallel rank.
# Used by shell/distributed_qwen2_5_vl_infer_{3B,7B,72B}.sh, which set MODEL_PATH and DEFAULT_MP.
#
#   MODEL_PATH  checkpoint directory or hub id; empty: the bundled demo model (mp 1 or 2)
#   MP_DEGREE   tensor-parallel ranks (default: the number of GPUs in GPUS, else DEFAULT_MP)
#   GPUS        GPU list such as 0,1,2,3 (default: the first MP_DEGREE GPUs nvidia-smi lists)
#   DEVICE      gpu or cpu (default: gpu when nvidia-smi lists GPUs and paddle has CUDA, else cpu)
#   LOG_DIR     the launcher's per-rank logs (default: log/distributed_infer)
# Other arguments go to the Python script, e.g. --question "..." --image_file photo.jpg --benchmark.
set -eu
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-log/distributed_infer}
if [ -z "${DEVICE:-}" ]; then
    DEVICE=cpu
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU' &&
        python -c "import paddle, sys; sys.exit(not paddle.is_compiled_with_cuda())" 2>/dev/null; then
        DEVICE=gpu
    fi
fi
if [ -n "${MODEL_PATH:-}" ]; then
    set -- --model_path "$MODEL_PATH" "$@"
fi
SCRIPT=examples/distributed_qwen2_5_vl_infer.py

if [ "$DEVICE" = gpu ]; then
    if [ -z "${GPUS:-}" ]; then
        GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | head -n "${MP_DEGREE:-$DEFAULT_MP}" | paste -sd, -)
    fi
    MP=${MP_DEGREE:-$(echo "$GPUS" | tr ',' '\n' | grep -c .)}
    echo "GPU mode: mp_degree $MP on GPUs $GPUS (logs in $LOG_DIR)" >&2
    exec python -m paddle.distributed.launch --devices "$GPUS" --log_dir "$LOG_DIR" \
        "$SCRIPT" --device gpu --mp_degree "$MP" "$@"
fi

MP=${MP_DEGREE:-$DEFAULT_MP}
CORES=$(nproc)
THREADS=$((CORES / MP > 0 ? CORES / MP : 1))
echo "CPU mode (no GPU found, or DEVICE=cpu): mp_degree $MP as $MP processes over gloo" \
    "(--nproc_per_node $MP, $THREADS threads each; logs in $LOG_DIR)" >&2
OMP_NUM_THREADS=$THREADS PADDLEMIX_NUM_THREADS=$THREADS exec python -m paddle.distributed.launch \
    --nproc_per_node "$MP" --log_dir "$LOG_DIR" "$SCRIPT" --device cpu --mp_degree "$MP" "$@"
