"""Tensor parallelism on CPU: two gloo processes give the single-process logits, greedy tokens
and gradients (tied and untied heads, GQA with kv heads == mp == 2); each rank loads only its
slice from every checkpoint format; per-rank checkpoints merge and split exactly; a degree
that does not divide the heads fails before any work."""

import json
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.distributed as dist
import pytest
import torch

from paddlemix_qwen25vl import CheckpointError, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from paddlemix_qwen25vl.checkpoint_io import SafetensorsFile
from paddlemix_qwen25vl.convert import convert_hf_to_paddle
from paddlemix_qwen25vl.distributed import (
    ParallelContext,
    check_tensor_parallel_supported,
    merge_tensor_parallel,
    split_axes,
)
from paddlemix_qwen25vl.tools.tensor_parallel import split_tensor_parallel
from paddlemix_qwen25vl.loading import TensorSlicing, load_weights, shard_files

from helpers.paths import REPO
from helpers.reference import build_reference_model
from helpers.tensor_parallel import WORKER_ENV, run_workload

MP = 2


def launch(command, log_dir, env=None, processes=MP):
    """Run ``command`` under paddle.distributed.launch with ``processes`` CPU processes; fail with the workers' logs."""
    full = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(processes), "--log_dir", str(log_dir)]
    try:  # a rank that never connects would otherwise hang the suite
        result = subprocess.run(full + command, capture_output=True, text=True, env=env or WORKER_ENV, cwd=REPO, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"launch of {command[0]} with {processes} processes hung for 300 s")
    if result.returncode != 0:
        logs = "".join(open(os.path.join(log_dir, f)).read()[-3000:] for f in sorted(os.listdir(log_dir)) if f.startswith("workerlog"))
        pytest.fail(f"launch failed ({result.returncode}):\n{result.stderr[-3000:]}\n{logs}")
    return result


def read_checkpoint_tensors(path):
    """{name: (dtype name, array)} of every tensor of a safetensors checkpoint directory."""
    tensors = {}
    for file in shard_files(path):
        reader = SafetensorsFile(file)
        tensors.update({key: (reader.dtype_name(key), np.array(reader.raw(key))) for key in reader.keys()})
    return tensors


def assert_same_tensors(actual_dir, expected_dir):
    actual, expected = read_checkpoint_tensors(actual_dir), read_checkpoint_tensors(expected_dir)
    assert sorted(actual) == sorted(expected)
    for name, (dtype, array) in expected.items():
        assert actual[name][0] == dtype, name
        np.testing.assert_array_equal(actual[name][1], array, err_msg=name)


def rank_slice(full, name, axes, rank):
    if name not in axes:
        return full
    width = full.shape[axes[name]] // MP
    return np.take(full, np.arange(rank * width, (rank + 1) * width), axis=axes[name])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny HF checkpoints (the same weights as conftest's) and a pre-split copy of the tied one."""
    root = tmp_path_factory.mktemp("tp")
    paths = {}
    for name, tied in (("tied", True), ("untied", False)):
        paths[name] = str(root / name)
        build_reference_model(tie_word_embeddings=tied).save_pretrained(paths[name])
    paths["tied_split"] = str(root / "tied_split")
    split_tensor_parallel(paths["tied"], paths["tied_split"], MP)
    return root, paths


@pytest.fixture(scope="module")
def tp_run(checkpoints):
    """The one 2-process run of tp_worker.py over all three checkpoints; returns its output directory."""
    root, paths = checkpoints
    out = root / "out"
    out.mkdir()
    launch(
        [os.path.join("tests", "tp_scripts", "tp_worker.py"), "--out", str(out), "--save", "tied",
         "--checkpoints", *(f"{name}={path}" for name, path in paths.items())],
        root / "launch_logs",
    )
    return out


@pytest.fixture(scope="module")
def single(checkpoints):
    """Single-process (logits, tokens, loss, grads) and the model, per checkpoint."""
    _, paths = checkpoints
    results = {}
    for name in ("tied", "untied"):
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(paths[name])
        results[name] = (run_workload(model), model)
    return results


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_logits_and_greedy_tokens_match_single_process(tp_run, single, name):
    (logits, tokens, _, _), _ = single[name]
    np.testing.assert_allclose(np.load(tp_run / f"{name}.logits.npy"), logits, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(np.load(tp_run / f"{name}.tokens.npy"), tokens)


def test_per_rank_checkpoint_loads_directly(tp_run):
    np.testing.assert_array_equal(np.load(tp_run / "tied_split.logits.npy"), np.load(tp_run / "tied.logits.npy"))
    np.testing.assert_array_equal(np.load(tp_run / "tied_split.tokens.npy"), np.load(tp_run / "tied.tokens.npy"))


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_gradients_match_single_process(tp_run, single, name):
    """Column/row/vocab-parallel and replicated parameters get the single-process gradient (their slice)."""
    (_, _, loss, grads), model = single[name]
    axes = split_axes(Qwen2_5_VLForConditionalGeneration(model.config, mp=ParallelContext(0, MP)))
    for rank in range(MP):
        report = json.loads((tp_run / f"{name}.rank{rank}.json").read_text())
        assert report["loss"] == pytest.approx(loss, abs=1e-5)
        rank_grads = np.load(tp_run / f"{name}.rank{rank}.grads.npz")
        assert set(rank_grads.files) == set(grads)
        for param, grad in grads.items():
            np.testing.assert_allclose(rank_grads[param], rank_slice(grad, param, axes, rank), rtol=0, atol=1e-5, err_msg=param)


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_rank_holds_its_share_of_the_parameters(tp_run, single, name):
    """Per rank: 1/mp of every split (decoder, vocabulary) tensor plus the replicated ones (vision tower, norms)."""
    _, model = single[name]
    axes = split_axes(Qwen2_5_VLForConditionalGeneration(model.config, mp=ParallelContext(0, MP)))
    expected = sum(int(np.prod(p.shape)) * 4 // (MP if n in axes else 1) for n, p in model.named_parameters())
    vision = sum(int(np.prod(p.shape)) * 4 for n, p in model.named_parameters() if n.startswith("visual."))
    assert not any(n.startswith("visual.") for n in axes)  # the vision tower is replicated
    for rank in range(MP):
        report = json.loads((tp_run / f"{name}.rank{rank}.json").read_text())
        assert report["param_bytes"] == expected
        assert report["param_bytes"] < vision + (sum(int(np.prod(p.shape)) * 4 for p in model.parameters()) - vision) / MP * 1.01


def test_saved_rank_checkpoints_merge_exactly(tp_run, single, tmp_path):
    _, model = single["tied"]
    model.save_pretrained(str(tmp_path / "single"))
    saved = tp_run / "tied_saved"
    assert json.loads((saved / "tensor_parallel.json").read_text())["mp_degree"] == MP
    merge_tensor_parallel(str(saved), str(tmp_path / "merged"))
    assert_same_tensors(str(tmp_path / "merged"), str(tmp_path / "single"))
    assert (tmp_path / "merged" / "config.json").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_split_merge_round_trip_is_exact(dtype, tmp_path):
    """HF sharded checkpoint -> split for mp=2 -> merge == the converted Paddle checkpoint, bit for bit."""
    hf = tmp_path / "hf"
    build_reference_model(tie_word_embeddings=False).to(dtype).save_pretrained(str(hf), max_shard_size="150KB")
    convert_hf_to_paddle(str(hf), str(tmp_path / "paddle"))
    split = tmp_path / "split"
    subprocess.run(
        [sys.executable, "examples/merge_tensor_parallel_params.py", "split", "--src", str(hf), "--dest", str(split),
         "--mp_degree", str(MP), "--max_shard_size_gb", str(200e3 / 1024**3)],
        check=True, capture_output=True, env=WORKER_ENV, cwd=REPO,
    )
    assert len(list((split / "tp_rank_01").glob("model-*.safetensors"))) > 1  # sharded per rank
    merge_tensor_parallel(str(split), str(tmp_path / "merged"))
    assert_same_tensors(str(tmp_path / "merged"), str(tmp_path / "paddle"))
    split_again = tmp_path / "split_again"
    split_tensor_parallel(str(tmp_path / "merged"), str(split_again), MP)
    for rank in range(MP):
        assert_same_tensors(str(split_again / f"tp_rank_0{rank}"), str(split / f"tp_rank_0{rank}"))


def test_each_format_gives_the_rank_slice(reference_checkpoint, tmp_path):
    """Rank 1 of 2 reads exactly its slices from HF (single, sharded), Paddle safetensors and pdparams."""
    ref_model, path = reference_checkpoint
    full = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    ref_model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="100KB")
    full.save_pretrained(str(tmp_path / "paddle"))
    pdparams = tmp_path / "pdparams"
    pdparams.mkdir()
    paddle.save(full.state_dict(), str(pdparams / "model_state.pdparams"))
    full_params = {n: p.numpy() for n, p in full.named_parameters()}
    ignore = ("lm_head.weight",) if full.config.tie_word_embeddings else ()
    for source in (path, tmp_path / "sharded", tmp_path / "paddle", pdparams):
        shard = Qwen2_5_VLForConditionalGeneration.build(full.config, "float32", ParallelContext(1, MP))
        axes = split_axes(shard)
        load_weights(shard, str(source), ignore_keys=ignore, slicing=TensorSlicing(1, MP, axes))
        for name, param in shard.named_parameters():
            np.testing.assert_array_equal(param.numpy(), rank_slice(full_params[name], name, axes, 1), err_msg=f"{source}: {name}")


def test_bad_degrees_fail_before_any_work(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    with pytest.raises(ValueError, match=r"mp_degree=3 does not divide num_attention_heads=4, num_key_value_heads=2.*Valid degrees for this model: \[1, 2\]"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(path, mp_degree=3)
    with pytest.raises(ValueError, match="mp_degree=4 does not divide num_key_value_heads=2"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(path, mp_degree=4)
    with pytest.raises(ValueError, match="mp_degree=2 needs a multiple of 2 processes.*paddle.distributed.launch"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(path, mp_degree=2)
    assert not dist.is_initialized()
    split_tensor_parallel(path, str(tmp_path / "split"), MP)
    with pytest.raises(CheckpointError, match="slices for mp_degree=2.*Merge it first"):
        Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "split"))
    with pytest.raises(ValueError, match="mp_degree=3 does not divide"):
        split_tensor_parallel(path, str(tmp_path / "split3"), 3)
    config = Qwen2_5_VLConfig.from_pretrained(path)
    with pytest.raises(ValueError, match="vocab_size"):
        Qwen2_5_VLForConditionalGeneration(config, mp=ParallelContext(0, 5))


def test_replicas_create_their_groups_together(tmp_path):
    """4 processes = 2 replicas of mp 2, all entering init_tensor_parallel at once: Paddle's gloo
    rendezvous of two groups created together fails (every run before the fix); each group then
    sums its own two ranks."""
    launch([os.path.join("tests", "tp_scripts", "replica_groups_worker.py"), str(tmp_path)], tmp_path / "logs", processes=4)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(4)]
    assert [r["mp_rank"] for r in reports] == [0, 1, 0, 1]
    assert [r["group_sum"] for r in reports] == [1.0, 1.0, 5.0, 5.0]


def test_tensor_parallel_training_check():
    check_tensor_parallel_supported(1)
    if paddle.get_device().startswith("gpu"):
        pytest.skip("the CPU message is what is tested here")
    with pytest.raises(RuntimeError, match="tensor_parallel_degree=2 needs GPUs"):
        check_tensor_parallel_supported(2)


def test_shell_script_cpu_mode_gives_the_single_process_answer(tmp_path, portable_cpu):
    """sh shell/distributed_qwen2_5_vl_infer_7B.sh in CPU mode (demo model, mp 2) == one process, sampled tokens included."""
    flags = ["--max_new_tokens", "12", "--decode_strategy", "sampling", "--temperature", "1.0", "--top_p", "0.9"]
    script = os.path.join("examples", "distributed_qwen2_5_vl_infer.py")
    worker_env = {**WORKER_ENV, "PADDLEMIX_CPU_ISA": portable_cpu}
    alone = subprocess.run([sys.executable, script, *flags], capture_output=True, text=True, env=worker_env, cwd=REPO, check=True)
    env = {**worker_env, "MODEL_PATH": "", "MP_DEGREE": str(MP), "DEVICE": "cpu", "LOG_DIR": str(tmp_path / "logs")}
    both = subprocess.run(["sh", "shell/distributed_qwen2_5_vl_infer_7B.sh", *flags], capture_output=True, text=True, env=env, cwd=REPO)
    assert both.returncode == 0, both.stderr[-3000:]
    assert "CPU mode" in both.stderr
    answer = alone.stdout[alone.stdout.index("output_text:"):]
    assert answer.strip() and answer in both.stdout
    assert both.stdout.count("output_text:") == 1
    assert "output_text:" not in (tmp_path / "logs" / "workerlog.1").read_text()  # only rank 0 prints
