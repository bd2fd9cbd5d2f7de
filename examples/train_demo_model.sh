#!/usr/bin/env bash
# Train the bundled demo model from its random initialisation on the synthetic shapes task
# (CPU, 2 threads: about 16 minutes for 750 steps), score it on 300 held-out images and export
# it to examples/assets/demo_weights (float16, ~22 MB). Usage: bash examples/train_demo_model.sh [WORK_DIR]
# The shipped weights came from this script: 0.980 on the 300 held-out questions. The demo images
# are draw_sample(np.random.default_rng(7), "red", "circle") and (8, "blue", "triangle").
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-work_dirs/demo_model}
python -m paddlemix_qwen25vl.tools.make_synthetic_dataset --output_dir "${WORK}/data" --num_samples 12000 --num_eval 300
python -m paddlemix_qwen25vl.training.demo_model init --output_dir "${WORK}/init"
python examples/qwen2_5_vl_finetune.py --do_train --model_name_or_path "${WORK}/init" --meta_path "${WORK}/data/meta.json" \
  --output_dir "${WORK}/trained" --per_device_train_batch_size 16 --num_train_epochs 1 --learning_rate 2e-3 \
  --warmup_steps 30 --lr_scheduler_type cosine --logging_steps 10 --save_steps 250 --max_seq_length 256 \
  --seed 42 --report_to none
python -m paddlemix_qwen25vl.training.demo_model evaluate --model_path "${WORK}/trained" --annotation "${WORK}/data/eval.jsonl"
python -m paddlemix_qwen25vl.training.demo_model export --model_path "${WORK}/trained" --output_dir examples/assets/demo_weights
