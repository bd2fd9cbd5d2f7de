"""RMSNorm's inference and autograd paths, and the roll form of rotary, against their definitions."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl.layers import RMSNorm
from paddlemix_qwen25vl.rope import _rotary_op_applies, apply_rotary, apply_rotary_qk, signed_sin


def test_rms_norm_fused_inference_path_equals_autograd_path_and_float64():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 64)).astype(np.float32) * 3
    norm = RMSNorm(64, eps=1e-6)
    norm.weight.set_value(rng.standard_normal(64).astype(np.float32))
    with paddle.no_grad():
        fused = norm(paddle.to_tensor(x)).numpy()
    plain = norm(paddle.to_tensor(x, stop_gradient=False))
    plain.sum().backward()  # the autograd path must stay differentiable on the CPU
    x64 = x.astype(np.float64)
    expected = norm.weight.numpy().astype(np.float64) * x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(fused, expected, rtol=0, atol=2e-5)
    np.testing.assert_allclose(plain.numpy(), expected, rtol=0, atol=2e-5)


def test_apply_rotary_is_bit_identical_to_rotate_half():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 2, 16)).astype(np.float32)
    angles = rng.standard_normal((3, 4, 1, 8)).astype(np.float32)
    cos = np.cos(np.concatenate([angles, angles], -1))
    sin = np.sin(np.concatenate([angles, angles], -1))
    rotated_half = np.concatenate([-x[..., 8:], x[..., :8]], -1)
    expected = x * cos + rotated_half * sin  # the reference's formula, in float32
    got = apply_rotary(paddle.to_tensor(x), paddle.to_tensor(cos), signed_sin(paddle.to_tensor(sin))).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("q_shape, kv_heads, table_heads", [
    ((2, 3, 16, 128), 2, 1),  # decoder prefill: tables [B, L, 1, D] shared by the heads, GQA k
    ((1, 1, 16, 128), 2, 1),  # a decode step
    ((300, 16, 80), 16, 16),  # vision tower: a table row per head, enough rows for the threads
])
def test_rotary_qk_operator_is_bit_identical_to_apply_rotary(custom_ops, q_shape, kv_heads, table_heads):
    rng = np.random.default_rng(2)
    *lead, heads, d = q_shape
    qkv = rng.standard_normal((*lead, heads + kv_heads, d)).astype(np.float32) * 4
    angles = rng.standard_normal((*lead, table_heads, d // 2)).astype(np.float32) * 30
    cos = paddle.to_tensor(np.cos(np.concatenate([angles, angles], -1)))
    sin_signed = signed_sin(paddle.to_tensor(np.sin(np.concatenate([angles, angles], -1))))
    q_k = paddle.to_tensor(qkv)
    q, k = q_k[..., :heads, :], q_k[..., heads:, :]  # slices of one tensor, as after a fused projection
    expected = apply_rotary(q, cos, sin_signed).numpy(), apply_rotary(k, cos, sin_signed).numpy()
    with paddle.no_grad():
        assert _rotary_op_applies(q, k, cos)  # the compiled operator, not the fallback
        got = apply_rotary_qk(q, k, cos, sin_signed)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g.numpy(), e)
    assert not _rotary_op_applies(q, k, cos)  # a recorded graph takes Paddle's differentiable path
