"""GPU checklist: the GPU-only paths end to end, on a machine with one or more CUDA GPUs.

    python -m pytest -q -p no:cacheprovider tests/gpu               # skipped without a GPU
    GPU_MODEL_PATH=Qwen/Qwen2.5-VL-3B-Instruct python -m pytest -q -p no:cacheprovider tests/gpu

Without ``GPU_MODEL_PATH`` the bundled demo checkpoint runs (small: sharding stage3 slices only
its embedding; the real 3B also has ViT weights over stage3's 2^20-element threshold).
Checks: flash-attention generation == sdpa generation (greedy tokens); the custom operator ==
Paddle's flash kernel; 2-GPU tensor-parallel generation == 1 GPU; a few sharding stage2 /
stage3 (LoRA and full) and tensor-parallel training steps, saved, resumed, and equal to the
uninterrupted run, with the frozen ViT saved intact.
"""

import glob
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from paddlemix_qwen25vl.checkpoint_io import SafetensorsFile
from paddlemix_qwen25vl.demo import DEMO_IMAGE, DEMO_QUESTION, resolve_model_or_demo
from paddlemix_qwen25vl.loading import shard_files

from helpers.data import qa_records, write_dataset
from helpers.paths import REPO

GPUS = paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0
pytestmark = pytest.mark.skipif(GPUS == 0, reason="the GPU checklist needs a CUDA GPU")
two_gpus = pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")


@pytest.fixture(scope="module")
def model_path():
    return resolve_model_or_demo(os.environ.get("GPU_MODEL_PATH"))


def prompt_inputs(processor):
    """Two left-padded conversations of different lengths: the varlen decode path with padding."""
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": DEMO_IMAGE}, {"type": "text", "text": DEMO_QUESTION}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Describe a square in a few words, please."}]}],
    ]
    from paddlemix_qwen25vl.processing import process_vision_info

    texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    images, _ = process_vision_info([m for c in conversations for m in c])
    return processor(text=texts, images=images, return_tensors="pd", padding=True)


def greedy(model, inputs, tokens=32):
    out, _ = model.generate(**inputs, max_new_tokens=tokens, decode_strategy="greedy_search")
    return out.numpy()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_flash_attention_generation_equals_sdpa(model_path, dtype):
    processor = Qwen2_5_VLProcessor.from_pretrained(model_path)
    inputs = prompt_inputs(processor)
    results = {}
    for implementation in ("sdpa", "flash_attention_2"):
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype, attn_implementation=implementation)
        results[implementation] = greedy(model, inputs)
        del model
    np.testing.assert_array_equal(results["flash_attention_2"], results["sdpa"])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("len_q, len_k, causal", [
    ([37, 128, 5], [37, 128, 5], True),  # prefill / training
    ([1, 1, 1], [37, 300, 6], True),  # decode steps
    ([64, 200], [64, 200], False),  # vision windows
])
def test_custom_operator_matches_paddle_kernel(dtype, len_q, len_k, causal):
    from paddlemix_qwen25vl import attention
    from paddlemix_qwen25vl.ops import build_ops, flash_attn_varlen_func

    build_ops()
    rng = np.random.default_rng(0)
    cu_q, cu_k = np.concatenate([[0], np.cumsum(len_q)]), np.concatenate([[0], np.cumsum(len_k)])
    for head_dim in (80, 128):  # the vision tower's and the decoder's
        q = paddle.to_tensor(rng.standard_normal((cu_q[-1], 16, head_dim)), dtype=dtype)
        k, v = (paddle.to_tensor(rng.standard_normal((cu_k[-1], 2, head_dim)), dtype=dtype) for _ in range(2))
        expected = attention.varlen_attention(q, k, v, cu_q, cu_k, "flash_attention_2", causal=causal)  # Paddle's on sm80+
        cu_q_t, cu_k_t = paddle.to_tensor(cu_q.astype("int32")), paddle.to_tensor(cu_k.astype("int32"))
        actual = flash_attn_varlen_func(q, k, v, cu_q_t, cu_k_t, max(len_q), max(len_k), causal=causal)
        eager = attention.varlen_attention(q, k, v, cu_q, cu_k, "eager", causal=causal)
        for result in (actual, expected):
            np.testing.assert_allclose(result.astype("float32").numpy(), eager.astype("float32").numpy(), rtol=0, atol=2e-2)


def launch(script_args, log_dir, devices="0,1"):
    command = [sys.executable, "-m", "paddle.distributed.launch", "--devices", devices, "--log_dir", str(log_dir), *script_args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800)
    logs = "".join(open(p).read()[-3000:] for p in sorted(glob.glob(os.path.join(str(log_dir), "workerlog.*"))))
    assert result.returncode == 0, result.stderr[-3000:] + logs
    return result.stdout


@two_gpus
def test_tensor_parallel_generation_equals_one_gpu(model_path, tmp_path):
    flags = ["--model_path", model_path, "--max_new_tokens", "32", "--dtype", "bfloat16"]
    script = os.path.join("examples", "distributed_qwen2_5_vl_infer.py")
    alone = subprocess.run([sys.executable, script, *flags], capture_output=True, text=True, cwd=REPO, check=True).stdout
    both = launch([script, *flags, "--mp_degree", "2"], tmp_path / "logs")
    answer = alone[alone.index("output_text:"):]
    assert answer.strip() and answer in both


def read_weights(path):
    tensors = {}
    for file in shard_files(path):
        reader = SafetensorsFile(file)
        tensors.update({key: np.asarray(reader.raw(key)).astype(np.float32) for key in reader.keys()})
    return tensors


def finetune(model_path, meta_path, output_dir, log_dir, extra):
    launch([os.path.join("examples", "qwen2_5_vl_finetune.py"), "--do_train", "--model_name_or_path", model_path, "--meta_path",
            meta_path, "--output_dir", str(output_dir), "--per_device_train_batch_size", "1", "--learning_rate", "1e-4",
            "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1", "--report_to", "none", "--seed", "7",
            "--image_resolution", "224", "--freeze_vit", "True", "--tune_mm_mlp", "True", "--bf16", "True",
            "--fp16_opt_level", "O2", "--overwrite_output_dir", "True", *extra], log_dir)


@two_gpus
@pytest.mark.parametrize("mode", [
    ["--sharding", "stage2", "--sharding_parallel_degree", "2"],
    ["--sharding", "stage3", "--sharding_parallel_degree", "2"],
    ["--sharding", "stage2", "--sharding_parallel_degree", "2", "--lora", "True", "--lora_rank", "8"],
    ["--sharding", "stage3", "--sharding_parallel_degree", "2", "--lora", "True", "--lora_rank", "8"],
    ["--tensor_parallel_degree", "2"],
], ids=["stage2_full", "stage3_full", "stage2_lora", "stage3_lora", "tp2_full"])
def test_training_steps_save_and_resume(model_path, tmp_path, mode):
    """4 steps straight == 2 steps, save, resume, 2 more (text-only samples in the data: the merger
    is trained, so every rank must run the vision tower); the frozen ViT is saved as loaded."""
    meta = write_dataset(str(tmp_path / "data"), qa_records(str(tmp_path / "data"), count=8))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    finetune(model_path, meta, straight, tmp_path / "logs_a", mode)
    finetune(model_path, meta, resumed, tmp_path / "logs_b",
             [*mode, "--resume_from_checkpoint", str(straight / "checkpoint-2")])
    lora = "--lora" in mode
    if "--tensor_parallel_degree" in mode:
        from paddlemix_qwen25vl.distributed import merge_tensor_parallel

        for run in (straight, resumed):
            merge_tensor_parallel(str(run), str(run) + "_merged")
        straight, resumed = tmp_path / "straight_merged", tmp_path / "resumed_merged"
    if lora:
        a, b = (paddle.load(str(run / "lora_model_state.pdparams")) for run in (straight, resumed))
        a, b = ({k: v.astype("float32").numpy() for k, v in d.items()} for d in (a, b))
    else:
        a, b = read_weights(str(straight)), read_weights(str(resumed))
        source = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype="float32")
        for name, param in source.named_parameters():
            if name.startswith("visual.") and not name.startswith("visual.merger."):
                np.testing.assert_allclose(a[name], param.numpy(), rtol=0, atol=1e-2, err_msg=name)  # frozen, intact
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.isfinite(a[name]).all(), name
        np.testing.assert_allclose(b[name], a[name], rtol=1e-2, atol=1e-3, err_msg=name)
