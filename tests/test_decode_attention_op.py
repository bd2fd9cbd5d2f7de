"""The CPU decode-attention operator against a float64 oracle, and when the decoder uses it."""
from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl import attention
from paddlemix_qwen25vl.attention import left_padding_starts
from paddlemix_qwen25vl.attention_math import causal_padding_mask, grouped_attention
from paddlemix_qwen25vl.ops import decode_attention as decode_module
from paddlemix_qwen25vl.ops.decode_attention import decode_attention, decode_attention_applies

pytestmark = pytest.mark.usefixtures("custom_ops")  # these tests run the compiled operators


def oracle(q, k, v, scale):
    """softmax(q k^T * scale) v in float64, query head h on kv head h // group."""
    batch, _, heads, dim = q.shape
    group = heads // k.shape[2]
    out = np.zeros(q.shape)
    for b in range(batch):
        for h in range(heads):
            scores = k[b, :, h // group].astype(np.float64) @ q[b, 0, h].astype(np.float64) * scale
            p = np.exp(scores - scores.max())
            out[b, 0, h] = (p / p.sum()) @ v[b, :, h // group].astype(np.float64)
    return out


def make(batch, heads, kv_heads, dim, length, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, 1, heads, dim)).astype(np.float32)
    k = rng.standard_normal((batch, length, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((batch, length, kv_heads, dim)).astype(np.float32)
    return q, k, v


SHAPES = {  # (batch, heads, kv_heads, head_dim, cached keys)
    "3B_decode": (1, 16, 2, 128, 621),
    "tiny_model": (2, 4, 2, 16, 37),
    "no_gqa": (3, 8, 8, 64, 5),
    "one_key": (2, 4, 1, 32, 1),
    "7B_heads_ragged_len": (1, 28, 4, 128, 130),
}


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_op_matches_float64_oracle(shape, cpu_level):
    q, k, v = make(*SHAPES[shape])
    scale = 1 / math.sqrt(q.shape[-1])
    with paddle.no_grad():
        got = decode_attention(*(paddle.to_tensor(x) for x in (q, k, v)), scale).numpy()
    err = float(np.abs(got - oracle(q, k, v, scale)).max())
    assert err <= 1e-5, f"max abs error {err:.2e}"


def test_op_reads_the_filled_prefix_of_a_preallocated_cache_in_place(cpu_level):
    """k/v as ``buffer[:, :length]`` views (what a preallocated KVCache returns): sequences are
    ``capacity`` rows apart, and the garbage after ``length`` must not be read."""
    q, k, v = make(3, 8, 2, 64, 40)
    capacity = 57
    k_buffer = np.full((3, capacity, 2, 64), 1e4, dtype=np.float32)  # unfilled slots: huge
    v_buffer = np.full((3, capacity, 2, 64), np.nan, dtype=np.float32)
    k_buffer[:, :40], v_buffer[:, :40] = k, v
    k_buffer, v_buffer = paddle.to_tensor(k_buffer), paddle.to_tensor(v_buffer)
    k_view, v_view = k_buffer[:, :40], v_buffer[:, :40]
    assert not k_view.is_contiguous()
    with paddle.no_grad():
        got = decode_attention(paddle.to_tensor(q), k_view, v_view, 0.125).numpy()
    err = float(np.abs(got - oracle(q, k, v, 0.125)).max())
    assert err <= 1e-5, f"max abs error {err:.2e}"


def test_op_skips_the_padding_keys_of_a_left_padded_batch(cpu_level):
    """key_starts [B]: row b attends to keys key_starts[b]: only, as a left-padding mask says."""
    q, k, v = make(3, 8, 2, 64, 40, seed=3)
    starts = np.array([0, 17, 39], dtype=np.int64)
    k_padded, v_padded = k.copy(), v.copy()
    for b, start in enumerate(starts):  # padding keys that would dominate any softmax they entered
        k_padded[b, :start], v_padded[b, :start] = 1e4, np.nan
    with paddle.no_grad():
        got = decode_attention(*(paddle.to_tensor(x) for x in (q, k_padded, v_padded)), 0.125,
                               paddle.to_tensor(starts)).numpy()
    for b, start in enumerate(starts):
        want = oracle(q[b:b + 1], k[b:b + 1, start:], v[b:b + 1, start:], 0.125)
        err = float(np.abs(got[b:b + 1] - want).max())
        assert err <= 1e-5, f"row {b}: max abs error {err:.2e}"


def test_op_rejects_a_start_past_the_cache():
    q, k, v = make(2, 4, 2, 16, 8)
    with pytest.raises(Exception, match=r"key_starts\[1\] = 8 leaves no key of the 8 cached"):
        decode_attention(*(paddle.to_tensor(x) for x in (q, k, v)), 0.1, paddle.to_tensor(np.array([0, 8])))


def test_left_padding_starts():
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(left_padding_starts(mask), [2, 0, 3])
    assert left_padding_starts(np.array([[1, 0, 1, 1]])) is None, "padding inside"
    assert left_padding_starts(np.array([[1, 1, 2, 2]])) is None, "packed samples"
    assert left_padding_starts(np.array([[0, 0, 0, 0]])) is None, "no real key"


def test_applies_only_to_cpu_float32_decode_without_gradient():
    q = paddle.zeros([1, 1, 4, 16])
    with paddle.no_grad():
        assert decode_attention_applies(q)
        assert not decode_attention_applies(paddle.zeros([1, 2, 4, 16])), "two queries are not a decode step"
        assert not decode_attention_applies(paddle.zeros([1, 1, 4, 48])), "48 is not a kernel width"
        assert not decode_attention_applies(q.astype("float64"))
    assert not decode_attention_applies(q), "the operator has no backward"


def test_op_rejects_unsupported_head_dim():
    q, k, v = make(1, 4, 2, 48, 8)
    with pytest.raises(Exception, match="head_dim must be 16, 32, 64 or 128"):
        decode_attention(*(paddle.to_tensor(x) for x in (q, k, v)), 0.1)


def test_dense_attention_runs_decode_steps_through_the_op(monkeypatch):
    q, k, v = (paddle.to_tensor(x) for x in make(2, 4, 2, 16, 37))
    calls = []
    monkeypatch.setattr(attention, "decode_attention", lambda *a: calls.append(1) or decode_module.decode_attention(*a))
    with paddle.no_grad():
        fast = attention.dense_attention(q, k, v, None, "eager")
        assert calls, "an unmasked CPU decode step should use the operator"
        math_path = grouped_attention(q, k, v, None, 1 / math.sqrt(16))
        mask = paddle.zeros([2, 1, 1, 37])
        attention.dense_attention(q, k, v, mask, "eager")
        assert len(calls) == 1, "a masked step without key_starts (any mask) keeps the grouped math"
        padded = causal_padding_mask(paddle.to_tensor(np.array([[0] * 5 + [1] * 32, [1] * 37])), 2, 1, 36, "float32")
        starts = paddle.to_tensor(np.array([5, 0]))
        left_padded = attention.dense_attention(q, k, v, padded, "eager", key_starts=starts)
        assert len(calls) == 2, "a left-padded decode step uses the operator"
        masked_math = grouped_attention(q, k, v, padded, 1 / math.sqrt(16))
    np.testing.assert_allclose(fast.numpy(), math_path.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(left_padded.numpy(), masked_math.numpy(), rtol=0, atol=1e-6)
