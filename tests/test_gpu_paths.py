"""The GPU-only paths checked on CPU (issue 22): what each would do wrong on a GPU is emulated
here with the semantics of the code it meets there (Paddle's flash kernel's causal alignment,
fleet's parameter broadcast, sharding stage3's parameter release, O2's buffer cast, the
Trainer's save on every tensor-parallel rank, data-parallel gradient reduction)."""

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import paddle
import pytest
from paddle.amp.auto_cast import amp_initialize
from paddle.distributed.fleet.meta_parallel.sharding.group_sharded_stage3 import _current_layer_params
from paddlenlp.trainer import Trainer
from paddlenlp.trainer.trainer_utils import ShardingOption

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, attention
from paddlemix_qwen25vl.distributed import ParallelContext, split_axes
from paddlemix_qwen25vl.ops import has_flash_attn_op
from paddlemix_qwen25vl.rope import rotary_inv_freq
from paddlemix_qwen25vl.training.arguments import DEFAULT_LORA_TARGETS
from paddlemix_qwen25vl.training.lora import add_lora
from paddlemix_qwen25vl.training.trainer import Qwen2_5_VLTrainer

from helpers.checkpoints import tiny_config
from helpers.paths import REPO
from helpers.scripts import import_script
from helpers.tensor_parallel import WORKER_ENV

build_config = import_script("external_ops/build_config.py")
qwen2_5_vl_finetune = import_script("examples/qwen2_5_vl_finetune.py")

IMAGE_TOKEN = tiny_config().image_token_id


def tiny_model(tied=True, mp=None):
    config = tiny_config()
    config.tie_word_embeddings = tied
    paddle.seed(1)
    return Qwen2_5_VLForConditionalGeneration(config, **({"mp": mp} if mp else {}))


def text_batch(seed=0, length=12):
    rng = np.random.default_rng(seed)
    ids = paddle.to_tensor(rng.integers(0, 1000, size=(2, length)))
    return ids, ids.clone()


def image_batch(seed=0):
    """One row: 3 text tokens, an image of grid (1, 4, 4) (4 pad tokens), 5 text tokens."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([rng.integers(0, 1000, 3), [IMAGE_TOKEN] * 4, rng.integers(0, 1000, 5)])[None]
    pixels = paddle.to_tensor(rng.standard_normal((16, 1176)).astype("float32"))
    return dict(input_ids=paddle.to_tensor(ids), pixel_values=pixels, image_grid_thw=np.array([[1, 4, 4]]))


# ----------------------------------------------------------- 1: flash attention's causal alignment
@pytest.mark.parametrize(
    "len_q, len_k, causal, flag",
    [
        ([5, 7], [5, 7], True, True),  # prefill / training: square segments, both alignments agree
        ([1, 1], [9, 4], True, False),  # decode step: the last token sees every key
        ([1, 0], [6, 3], True, False),  # decode with a sequence that has no new token
        ([1, 1], [1, 1], True, False),
        ([3, 1], [7, 5], True, None),  # a chunk after a cache: no flag gives bottom-right
        ([4, 2], [4, 5], True, None),  # mixed square and chunk
        ([3, 4], [7, 4], False, False),  # non-causal (vision windows)
    ],
)
def test_top_left_kernel_never_gets_a_causal_flag_it_misaligns(len_q, len_k, causal, flag):
    assert attention.top_left_causal_flag(np.array(len_q), np.array(len_k), causal) is flag


def top_left_flash_kernel(calls):
    """Paddle's flash_attn_unpadded as the PaddlePaddle/flash-attention fork computes it
    (causal mask ``col < min(len_k, row + 1)``, top-left), in float32 numpy."""

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale, dropout=0.0, causal=False, training=True):
        calls.append(causal)
        q, k, v, cu_q, cu_k = (t.numpy() for t in (q, k, v, cu_q, cu_k))
        groups = q.shape[1] // k.shape[1]
        out = np.zeros_like(q)
        for i in range(len(cu_q) - 1):
            qs = q[cu_q[i]:cu_q[i + 1]].transpose(1, 0, 2)  # [H, Lq, D]
            ks = np.repeat(k[cu_k[i]:cu_k[i + 1]].transpose(1, 0, 2), groups, axis=0)
            vs = np.repeat(v[cu_k[i]:cu_k[i + 1]].transpose(1, 0, 2), groups, axis=0)
            scores = qs @ ks.transpose(0, 2, 1) * scale
            if causal:
                rows, cols = np.indices(scores.shape[1:])
                scores = np.where(cols < np.minimum(ks.shape[1], rows + 1), scores, -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            out[cu_q[i]:cu_q[i + 1]] = ((probs / probs.sum(-1, keepdims=True)) @ vs).transpose(1, 0, 2)
        return paddle.to_tensor(out), None

    return kernel


@pytest.mark.parametrize("custom_op", [False, True], ids=["no_custom_op", "custom_op"])
@pytest.mark.parametrize("len_q, len_k", [([1, 1], [9, 4]), ([5, 7], [5, 7]), ([3, 1], [7, 5])], ids=["decode", "square", "chunk"])
def test_flash_dispatch_with_a_top_left_kernel_equals_eager(monkeypatch, len_q, len_k, custom_op):
    if custom_op and not has_flash_attn_op():
        pytest.skip("the custom operator is not built")
    calls = []
    monkeypatch.setattr(attention, "_paddle_flash_available", lambda q: True)
    monkeypatch.setattr(attention, "_custom_op_available", lambda: custom_op)
    monkeypatch.setattr(paddle.nn.functional.flash_attention, "flash_attn_unpadded", top_left_flash_kernel(calls))
    rng = np.random.default_rng(0)
    cu_q, cu_k = np.concatenate([[0], np.cumsum(len_q)]), np.concatenate([[0], np.cumsum(len_k)])
    q = paddle.to_tensor(rng.standard_normal((cu_q[-1], 4, 16)).astype("float32"))
    k, v = (paddle.to_tensor(rng.standard_normal((cu_k[-1], 2, 16)).astype("float32")) for _ in range(2))
    expected = attention.varlen_attention(q, k, v, cu_q, cu_k, "eager", causal=True)
    actual = attention.varlen_attention(q, k, v, cu_q, cu_k, "flash_attention_2", causal=True)
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=0, atol=1e-5)
    assert calls == ([] if len_q == [3, 1] else [len_q == len_k])  # the chunk never reaches Paddle's kernel


# ------------------------------------------------------- 2: split parameters are rank-local
def test_split_parameters_are_marked_distributed():
    model = tiny_model(tied=False, mp=ParallelContext(0, 2))
    axes = split_axes(model)
    assert "model.layers.0.self_attn.q_proj.bias" in axes and "lm_head.weight" in axes
    for name, param in model.named_parameters():
        assert param.is_distributed == (name in axes), name
        if name in axes:
            assert param.split_axis == axes[name], name
    assert not any(p.is_distributed for p in tiny_model().parameters())  # unsplit model


# -------------------------------------- 3: saving and resuming under tensor parallelism (gloo)
def test_trainer_saves_and_resumes_every_tensor_parallel_rank(tmp_path):
    """4 processes = 2 data-parallel replicas of mp 2; as in paddlenlp only the first replica calls
    _save (should_save_model_state), process 0 alone with should_save; then every rank resumes."""
    source = tmp_path / "source"
    tiny_model().save_pretrained(str(source))
    out, logs = tmp_path / "out", tmp_path / "logs"
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "4", "--log_dir", str(logs),
               os.path.join("tests", "tp_scripts", "trainer_save_worker.py"), "--model", str(source), "--out", str(out)]
    try:  # a save that waits for the ranks that do not save hangs: the timeout fails the test
        result = subprocess.run(command, capture_output=True, text=True, env=WORKER_ENV, cwd=REPO, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("the 4-process save/resume run hung")
    worker_logs = "".join(open(logs / f).read()[-2000:] for f in sorted(os.listdir(logs)) if f.startswith("workerlog"))
    assert result.returncode == 0, result.stderr[-2000:] + worker_logs
    saved = out / "saved"
    assert json.loads((saved / "tensor_parallel.json").read_text())["mp_degree"] == 2
    for rank in range(2):
        assert any(f.endswith(".safetensors") for f in os.listdir(saved / f"tp_rank_0{rank}"))
    assert (saved / "training_args.bin").exists() and (saved / "config.json").exists()
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(4)]
    assert all(report["restored"] for report in reports), reports


# ----------------------------------------------------------------- 4: LoRA under tensor parallelism
def test_lora_under_tensor_parallelism_is_refused():
    with pytest.raises(ValueError, match=r"LoRA with tensor parallelism \(tensor_parallel_degree=2\) is not supported"):
        add_lora(tiny_model(mp=ParallelContext(0, 2)), DEFAULT_LORA_TARGETS.split(","), 4, 8, 0.0)


# ------------------------------------------------------- 5: sharding stage3's parameter release
def stage3_emulation(model):
    """Parameters hold NaN except inside the forward of a layer that owns them by stage3's rule
    (``_current_layer_params``: its own parameters plus ``extra_parameters``), as stage3 gathers
    them in that layer's pre-hook and releases them in its post-hook."""
    values = {id(p): p.numpy().copy() for p in model.parameters()}

    def release(params):
        for p in params:
            p.set_value(np.full(p.shape, np.nan, dtype="float32"))

    def gather(layer, *_):
        for p in _current_layer_params(layer):
            p.set_value(values[id(p)])

    for layer in model.sublayers(include_self=True):
        if _current_layer_params(layer):
            layer.register_forward_pre_hook(gather)
            layer.register_forward_post_hook(lambda layer, inputs, outputs: release(_current_layer_params(layer)))
    release(model.parameters())


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_no_weight_is_read_outside_the_layers_stage3_gathers_it_for(tied):
    model = tiny_model(tied)
    model.eval()
    with paddle.no_grad():
        expected = model(**image_batch(), use_cache=False).logits.numpy()
        stage3_emulation(model)
        actual = model(**image_batch(), use_cache=False).logits.numpy()
    np.testing.assert_array_equal(actual, expected)


class GatherRecorder:
    def __init__(self):
        self.calls = []

    def get_all_parameters(self, **kwargs):
        self.calls.append(kwargs)


@pytest.mark.parametrize("sharding, lora, gathers", [
    ([ShardingOption.FULL_SHARD], False, True),
    ([ShardingOption.SHARD_GRAD_OP], False, False),
    ([ShardingOption.FULL_SHARD], True, False),  # adapters only: they are trainable
])
def test_stage3_save_gathers_the_frozen_weights(monkeypatch, sharding, lora, gathers):
    monkeypatch.setattr(Trainer, "save_model", lambda self, output_dir=None, merge_tensor_parallel=False: None)
    model = tiny_model()
    for param in model.visual.parameters():
        param.stop_gradient = True  # a frozen ViT
    trainer = Qwen2_5_VLTrainer.__new__(Qwen2_5_VLTrainer)  # save_model reads only these three
    trainer.model = add_lora(model, DEFAULT_LORA_TARGETS.split(","), 4, 8, 0.0) if lora else model
    trainer.args, trainer.model_wrapped = SimpleNamespace(sharding=sharding), GatherRecorder()
    trainer.save_model("unused")
    assert trainer.model_wrapped.calls == ([{"convert2cpu": True, "with_freeze_param": True}] if gathers else [])


# ------------------------------------- 6: text-only batches under data parallelism touch the tower
def vision_grads(model, world_size, monkeypatch):
    monkeypatch.setattr(paddle.distributed, "get_world_size", lambda *args: world_size)
    model.train()
    ids, labels = text_batch()
    loss = model(input_ids=ids, labels=labels, use_cache=False).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("visual.")}
    model.clear_gradients()
    return float(loss), grads


def test_text_only_batch_touches_the_vision_tower_when_distributed(monkeypatch):
    model = tiny_model()
    loss_alone, alone = vision_grads(model, 1, monkeypatch)
    loss_dp, dp = vision_grads(model, 2, monkeypatch)
    assert loss_dp == loss_alone  # adds exactly zero
    assert all(g is None for g in alone.values())  # one process: unchanged (no reduction to match)
    assert any(n.startswith("visual.merger.") for n in dp)
    for name, grad in dp.items():
        assert grad is not None, name
        assert not grad.numpy().any(), name


# ------------------------------------------------------------- 7: O2 keeps the rotary frequencies
def test_rotary_frequencies_stay_float32_under_o2():
    model = tiny_model()
    # What paddle.amp.decorate(level="O2") does to the models on a GPU (on a CPU it returns them untouched).
    amp_initialize(models=[model], dtype="bfloat16", excluded_layers=None)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == paddle.bfloat16  # decorate did cast
    inv_freq = model.model.rotary.inv_freq
    assert inv_freq.dtype == paddle.float32
    np.testing.assert_array_equal(inv_freq.numpy(), rotary_inv_freq(model.config.head_dim, model.config.rope_theta))


# --------------------------------------------- 8: --bf16 runs with float32 master weights (O2)
def test_bf16_commands_launch_o2():
    """Every documented or scripted command with --bf16 also passes --fp16_opt_level O2."""
    with open(os.path.join(REPO, "shell", "baseline_common.sh")) as f:
        commands = [f.read()]
    with open(os.path.join(REPO, "examples", "README_finetune.md")) as f:
        commands += f.read().split("```")[1::2]  # the code blocks
    commands.append(qwen2_5_vl_finetune.__doc__)
    with_bf16 = [command for command in commands if "--bf16" in command]
    assert len(with_bf16) >= 3
    for command in with_bf16:
        assert re.search(r"--fp16_opt_level[ =]\"?O2", command), command
    o1 = SimpleNamespace(bf16=True, fp16=False, fp16_opt_level="O1")
    assert qwen2_5_vl_finetune.weight_dtype(o1) == "float32"  # O1: float32 weights under autocast
    assert qwen2_5_vl_finetune.weight_dtype(SimpleNamespace(bf16=True, fp16=False, fp16_opt_level="O2")) == "bfloat16"


# ------------------------------------------ 9: the CUDA operator's code for every GPU it serves
def test_cuda_flags_cover_pre_ampere_and_newer_gpus():
    flags = build_config.nvcc_flags([70, 75, 80, 86, 90, 100, 120])
    assert [f for f in flags if f.startswith("-gencode")] == [
        "-gencode=arch=compute_70,code=sm_70", "-gencode=arch=compute_75,code=sm_75",
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",  # PTX: JIT-compiled on sm_100 / sm_120
    ]
    assert "-gencode=arch=compute_70,code=sm_70" not in build_config.nvcc_flags([75, 80, 90, 100])  # CUDA 13
    with pytest.raises(RuntimeError, match="compiles none of"):
        build_config.nvcc_flags([50, 60])


@pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v nvcc"], capture_output=True).returncode != 0, reason="no nvcc")
def test_cuda_kernels_compile_with_these_flags(tmp_path):
    flags = build_config.nvcc_flags(build_config.toolkit_archs())
    source = os.path.join(REPO, "external_ops", "csrc", "flash_attn_varlen_cuda.cu")
    result = subprocess.run(["nvcc", "-std=c++17", *flags, "-c", source, "-o", str(tmp_path / "op.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


# --------------------------------------------------- 10: LoRA gradients through recompute
def lora_grads(recompute):
    model = add_lora(tiny_model(), DEFAULT_LORA_TARGETS.split(","), 4, 8, 0.0)
    model.model.set_recompute(vision=False, decoder=recompute)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero adapters, so that lora_A gets a gradient too
            param.set_value(paddle.full(param.shape, 0.01, dtype=param.dtype))
    model.train()
    ids, labels = text_batch(1)
    model(input_ids=ids, labels=labels, use_cache=False).loss.backward()
    return {n: p.grad.numpy() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}, len(
        [n for n, _ in model.named_parameters() if "lora_" in n])


def test_lora_gets_gradients_under_recompute_on_text_only_batches():
    plain, count = lora_grads(recompute=False)
    recomputed, _ = lora_grads(recompute=True)
    assert len(plain) == count and set(recomputed) == set(plain)
    for name, grad in plain.items():
        assert np.abs(grad).max() > 0, name
        np.testing.assert_allclose(recomputed[name], grad, rtol=1e-5, atol=1e-7, err_msg=name)

