#!/bin/sh
# Qwen2.5-VL-7B-Instruct with tensor parallelism (mp_degree 4 by default).
#   sh shell/distributed_qwen2_5_vl_infer_7B.sh                     # GPUs if nvidia-smi finds them, else CPU
#   GPUS=0,1,2,3 sh shell/distributed_qwen2_5_vl_infer_7B.sh --benchmark
#   DEVICE=cpu MP_DEGREE=2 sh shell/distributed_qwen2_5_vl_infer_7B.sh   # CPU: 2 processes over gloo
#   MODEL_PATH= MP_DEGREE=2 sh shell/distributed_qwen2_5_vl_infer_7B.sh  # the bundled demo model
# All settings: shell/distributed_infer_launch.sh. Extra arguments go to the Python script.
MODEL_PATH=${MODEL_PATH-Qwen/Qwen2.5-VL-7B-Instruct} DEFAULT_MP=4 exec sh "$(dirname "$0")/distributed_infer_launch.sh" "$@"
