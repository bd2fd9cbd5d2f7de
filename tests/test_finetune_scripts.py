"""The shell/baseline_*.sh scripts run a few steps on CPU under sh (sharding and bf16 switched off with a notice)."""

import glob
import os
import subprocess
import sys

import pytest

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration
from helpers.paths import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "shell", "baseline_*.sh")))


def test_every_script_parses():
    assert len(SCRIPTS) == 9  # 8 launchers (the _official one included) + the shared baseline_common.sh
    for script in SCRIPTS:
        subprocess.run(["sh", "-n", script], check=True)


@pytest.mark.parametrize("name", ["baseline_3b_bs32_1e8", "baseline_7b_lora_bs32_1e8", "baseline_3b_bs32_1e8_stage3"])
def test_script_trains_on_cpu(name, tiny_checkpoint, meta_path, tmp_path):
    out = str(tmp_path / name)
    env = dict(os.environ, MODEL=tiny_checkpoint, META_PATH=meta_path, OUTPUT_DIR=out, BATCH_SIZE="4",
               PER_DEVICE_BATCH_SIZE="2", LR="1e-3")
    run = subprocess.run(["sh", os.path.join(REPO, "shell", f"{name}.sh"), "--max_steps", "2", "--image_resolution", "112"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "NOTICE: no GPU found" in run.stderr
    if "lora" in name:
        assert os.path.exists(os.path.join(out, "lora_model_state.pdparams"))
    else:  # the final model (stage3 included) is a checkpoint from_pretrained loads
        Qwen2_5_VLForConditionalGeneration.from_pretrained(out)


def test_tensor_parallel_training_needs_gpus_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "qwen2_5_vl_finetune.py"), "--meta_path", "x.json",
         "--output_dir", str(tmp_path), "--tensor_parallel_degree", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0 and "tensor_parallel_degree=2 needs GPUs" in result.stderr
