"""The compiled varlen attention operator against a float64 dense oracle.

The op is built just in time once per session (``build_ops``, cached under
``~/.cache/paddlemix_qwen25vl/ops/<hash>``; about 30 s on two cores on a fresh clone).
"""
from __future__ import annotations

import logging
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl.ops import (
    build_ops,
    flash_attn_varlen_func,
    has_flash_attn_op,
    varlen_attention_reference,
)
from paddlemix_qwen25vl import log
from paddlemix_qwen25vl.ops import loader

from helpers.paths import REPO

FWD_TOL = 1e-5
GRAD_TOL = 1e-4


@pytest.fixture(scope="module")
def ops():
    return build_ops()


def dense_attention_f64(q, k, v, dout, cu_q, cu_k, scale, causal):
    """Forward and (dq, dk, dv) in float64 numpy, one dense matrix per segment."""
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    q, k, v, dout = (x.astype(np.float64) for x in (q, k, v, dout))
    out, dq = np.zeros_like(q), np.zeros_like(q)
    dk, dv = np.zeros_like(k), np.zeros_like(v)
    for b in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        sq, sk = q1 - q0, k1 - k0
        if sq == 0 or sk == 0:
            continue
        visible = np.ones((sq, sk), dtype=bool)
        if causal:  # bottom-right aligned, as flash-attn
            visible = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
        for h in range(heads):
            hk = h // group
            qs, ks, vs, dos = q[q0:q1, h], k[k0:k1, hk], v[k0:k1, hk], dout[q0:q1, h]
            s = np.where(visible, qs @ ks.T * scale, -np.inf)
            row_max = s.max(axis=1, keepdims=True)
            row_max[~np.isfinite(row_max)] = 0.0
            p = np.exp(s - row_max)
            denom = p.sum(axis=1, keepdims=True)
            p = np.divide(p, denom, out=np.zeros_like(p), where=denom > 0)
            out[q0:q1, h] = p @ vs
            dp = dos @ vs.T
            ds = p * (dp - (dp * p).sum(axis=1, keepdims=True))
            dq[q0:q1, h] = ds @ ks * scale
            dk[k0:k1, hk] += ds.T @ qs * scale
            dv[k0:k1, hk] += p.T @ dos
    return out, dq, dk, dv


def make_case(lens_q, lens_k, heads, kv_heads, dim, seed=0):
    rng = np.random.default_rng(seed)
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q = rng.standard_normal((cu_q[-1], heads, dim)).astype(np.float32)
    k = rng.standard_normal((cu_k[-1], kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((cu_k[-1], kv_heads, dim)).astype(np.float32)
    dout = rng.standard_normal((cu_q[-1], heads, dim)).astype(np.float32)
    return q, k, v, dout, cu_q, cu_k


def run_paddle(fn, q, k, v, dout, cu_q, cu_k, causal, scale=None):
    tq, tk, tv = (paddle.to_tensor(x, stop_gradient=False) for x in (q, k, v))
    out = fn(
        tq, tk, tv, paddle.to_tensor(cu_q), paddle.to_tensor(cu_k),
        int(np.diff(cu_q).max()), int(np.diff(cu_k).max()),
        softmax_scale=scale, causal=causal,
    )
    grads = paddle.grad([out], [tq, tk, tv], [paddle.to_tensor(dout)])
    return [out.numpy()] + [g.numpy() for g in grads]


CASES = {
    # name: (lens_q, lens_k, heads, kv_heads, dim)
    "seqlen1": ([1], [1], 2, 2, 64),
    "uneven": ([5, 100, 1, 67], [5, 100, 1, 67], 4, 4, 80),
    "gqa_8_2": ([37, 130, 64], [37, 130, 64], 8, 2, 128),
    "q_shorter_than_k": ([3, 50, 70], [9, 130, 70], 8, 2, 64),
    "q_longer_than_k": ([130, 9, 20], [70, 3, 20], 4, 1, 80),
    "long_1k": ([1100, 30], [1100, 30], 2, 1, 80),
    "odd_dim": ([33, 17], [33, 17], 3, 1, 37),
    "empty_segments": ([0, 10, 6], [4, 10, 0], 2, 2, 64),
}


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_op_matches_float64_oracle(ops, case, causal, cpu_level):
    lens_q, lens_k, heads, kv_heads, dim = CASES[case]
    q, k, v, dout, cu_q, cu_k = make_case(lens_q, lens_k, heads, kv_heads, dim)
    got = run_paddle(flash_attn_varlen_func, q, k, v, dout, cu_q, cu_k, causal)
    want = dense_attention_f64(q, k, v, dout, cu_q, cu_k, 1 / math.sqrt(dim), causal)
    for name, g, w, tol in zip(["out", "dq", "dk", "dv"], got, want, [FWD_TOL] + [GRAD_TOL] * 3):
        assert g.shape == w.shape, name
        err = float(np.abs(g - w).max())
        assert err <= tol, f"{name}: max abs error {err:.2e} > {tol:.0e}"


def test_softmax_scale_and_lse(ops):
    q, k, v, dout, cu_q, cu_k = make_case([20, 45], [30, 45], 4, 2, 80, seed=1)
    got = run_paddle(flash_attn_varlen_func, q, k, v, dout, cu_q, cu_k, True, scale=0.37)
    want = dense_attention_f64(q, k, v, dout, cu_q, cu_k, 0.37, True)
    for g, w, tol in zip(got, want, [FWD_TOL] + [GRAD_TOL] * 3):
        assert float(np.abs(g - w).max()) <= tol
    # The saved logsumexp is [heads, total_q] and is what the backward relies on.
    _, lse = ops.qwen25vl_flash_attn_varlen(
        paddle.to_tensor(q), paddle.to_tensor(k), paddle.to_tensor(v),
        paddle.to_tensor(cu_q), paddle.to_tensor(cu_k), 45, 45, 0.37, False,
    )
    s = np.einsum("qhd,khd->hqk", q[:20].astype(np.float64), np.repeat(k[:30], 2, axis=1)) * 0.37
    want_lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    assert lse.shape == [4, 65]
    np.testing.assert_allclose(lse.numpy()[:, :20], want_lse, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_fallback_equals_op(ops, causal):
    q, k, v, dout, cu_q, cu_k = make_case([7, 64, 129], [7, 80, 129], 8, 2, 80, seed=2)
    got = run_paddle(flash_attn_varlen_func, q, k, v, dout, cu_q, cu_k, causal)
    ref = run_paddle(varlen_attention_reference, q, k, v, dout, cu_q, cu_k, causal)
    for g, r, tol in zip(got, ref, [FWD_TOL] + [GRAD_TOL] * 3):
        assert float(np.abs(g - r).max()) <= tol


def test_without_op_falls_back_and_warns_once(ops, monkeypatch, caplog):
    monkeypatch.setattr(loader, "_ops", False)
    monkeypatch.setattr(log, "_warned", set())
    assert not has_flash_attn_op()
    q, k, v, dout, cu_q, cu_k = make_case([5, 9], [5, 9], 2, 2, 64, seed=3)
    with caplog.at_level(logging.WARNING, logger=loader.__name__):
        first = run_paddle(flash_attn_varlen_func, q, k, v, dout, cu_q, cu_k, True)
        run_paddle(flash_attn_varlen_func, q, k, v, dout, cu_q, cu_k, True)
    assert len([r for r in caplog.records if "not built" in r.getMessage()]) == 1
    want = dense_attention_f64(q, k, v, dout, cu_q, cu_k, 1 / 8, True)
    assert float(np.abs(first[0] - want[0]).max()) <= FWD_TOL


def test_has_op_after_build(ops):
    assert has_flash_attn_op()
    assert build_ops() is ops  # a second build reuses the loaded module


def test_build_holds_the_build_directory_lock(tmp_path, monkeypatch):
    """Processes that start together (tensor-parallel ranks) build one after another: the build
    runs under an exclusive lock of its directory, released when it ends."""
    import fcntl

    import paddle.utils.cpp_extension

    def lock_is_free(build_directory):
        with open(Path(build_directory) / ".build.lock") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other, fcntl.LOCK_UN)
            return True

    seen = {}

    def fake_load(**kwargs):
        seen["free while building"] = lock_is_free(kwargs["build_directory"])
        seen["build_directory"] = kwargs["build_directory"]
        return "built module"

    monkeypatch.setattr(loader, "_ops", None)
    monkeypatch.setattr(loader, "get_ops", lambda: None)
    monkeypatch.setattr(loader, "BUILD_DIR", tmp_path)
    monkeypatch.setattr(paddle.utils.cpp_extension, "load", fake_load)
    assert build_ops() == "built module"
    assert seen["free while building"] is False
    assert lock_is_free(seen["build_directory"])


def _bad_inputs():
    q, k, v, _, cu_q, cu_k = make_case([4, 6], [4, 6], 4, 2, 64)
    good = dict(q=q, k=k, v=v, cu_q=cu_q, cu_k=cu_k, max_q=6, max_k=6, dropout_p=0.0)
    bad = {
        "int32": dict(cu_q=cu_q.astype(np.int64)),
        "not a multiple of the 3 kv heads": dict(k=k[:, :1].repeat(3, 1), v=v[:, :1].repeat(3, 1)),
        "ends at 10 but the tensor has 9 tokens": dict(q=q[:9]),
        "ends at 10 but the tensor has 12 tokens": dict(k=np.concatenate([k, k[:2]]), v=np.concatenate([v, v[:2]])),
        "k and v must have the same shape": dict(v=v[:, :, :32]),
        "head_dim": dict(k=k[:, :, :32], v=v[:, :, :32]),
        "dropout": dict(dropout_p=0.1),
        "longer than its max_seqlen": dict(max_q=5),
        "same length": dict(cu_k=np.array([0, 10], dtype=np.int32), max_k=10),
        "non-decreasing": dict(cu_q=np.array([0, 7, 4, 10], dtype=np.int32), cu_k=np.array([0, 4, 6, 10], dtype=np.int32)),
    }
    return good, bad


@pytest.mark.parametrize("fn", [flash_attn_varlen_func, varlen_attention_reference], ids=["op", "fallback"])
@pytest.mark.parametrize("problem", list(_bad_inputs()[1]))
def test_bad_input_raises_value_error(ops, fn, problem):
    good, bad = _bad_inputs()
    args = {**good, **bad[problem]}
    tensors = {name: paddle.to_tensor(args[name]) for name in ("q", "k", "v", "cu_q", "cu_k")}
    with pytest.raises(ValueError, match=problem):
        fn(
            tensors["q"], tensors["k"], tensors["v"], tensors["cu_q"], tensors["cu_k"],
            args["max_q"], args["max_k"], dropout_p=args["dropout_p"],
        )


def test_cpu_op_rejects_half_precision(ops):
    q, k, v, _, cu_q, cu_k = make_case([4], [4], 2, 2, 64)
    with pytest.raises(ValueError, match="float32"):
        flash_attn_varlen_func(
            *(paddle.to_tensor(x).astype("bfloat16") for x in (q, k, v)),
            paddle.to_tensor(cu_q), paddle.to_tensor(cu_k), 4, 4,
        )


@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists(),
                    reason="nvcc not installed: the CUDA kernels cannot be compile-checked")
def test_cuda_kernels_compile_for_sm80_and_sm90():
    result = subprocess.run(
        ["bash", str(REPO / "external_ops" / "check_cuda_compile.sh")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(
    not paddle.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0,
    reason="needs a CUDA build of paddle and a GPU (none on the CI machines)",
)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_op_matches_oracle(ops, dtype):
    q, k, v, dout, cu_q, cu_k = make_case([5, 100, 64], [9, 100, 64], 8, 2, 128)
    gpu = paddle.CUDAPlace(0)
    tensors = [paddle.to_tensor(x, place=gpu).astype(dtype) for x in (q, k, v)]
    for t in tensors:
        t.stop_gradient = False
    out = flash_attn_varlen_func(
        *tensors, paddle.to_tensor(cu_q, place=gpu), paddle.to_tensor(cu_k, place=gpu), 100, 100, causal=True
    )
    grads = paddle.grad([out], tensors, [paddle.to_tensor(dout, place=gpu).astype(dtype)])
    got = [x.astype("float32").numpy() for x in [out, *grads]]
    want = dense_attention_f64(q, k, v, dout, cu_q, cu_k, 1 / math.sqrt(128), True)
    for g, w, tol in zip(got, want, [2e-2, 5e-2, 5e-2, 5e-2]):
        assert float(np.abs(g - w).max()) <= tol
