"""The KV cache: a preallocated one returns exactly what the concatenating one does; the decode
rotary tables it holds equal the per-step ones."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl.cache import KVCache
from paddlemix_qwen25vl.rope import DecodeRotaryTable, mrope_cos_sin, rotary_inv_freq


def steps(seed=0):
    """A 9-token prompt then four single-token steps, [B=2, L, kv_heads=2, head_dim=8] each."""
    rng = np.random.default_rng(seed)
    for length in (9, 1, 1, 1, 1):
        yield (paddle.to_tensor(rng.standard_normal((2, length, 2, 8)).astype(np.float32)) for _ in range(2))


def test_preallocated_cache_equals_concatenating_cache():
    grown, preallocated = KVCache(num_layers=2), KVCache(num_layers=2, capacity=16)
    for key, value in steps():
        for layer in range(2):
            expected = grown.update(layer, key, value)
            got = preallocated.update(layer, key, value)
            for e, g in zip(expected, got):
                assert g.shape == e.shape
                np.testing.assert_array_equal(g.numpy(), e.numpy())
    assert preallocated.get_seq_length() == grown.get_seq_length() == 13
    assert preallocated.keys[0].shape == [2, 16, 2, 8], "allocated once, at capacity"


def test_full_cache_names_its_capacity_and_keeps_its_contents():
    cache = KVCache(num_layers=1, capacity=10)
    prompt = [t for t in next(steps())]
    cache.update(0, *prompt)
    with pytest.raises(ValueError, match="capacity 10 tokens is full: layer 0 holds 9 and 2 more arrived"):
        cache.update(0, paddle.zeros([2, 2, 2, 8]), paddle.zeros([2, 2, 2, 8]))
    assert cache.get_seq_length() == 9
    keys, _ = cache.update(0, paddle.zeros([2, 1, 2, 8]), paddle.zeros([2, 1, 2, 8]))
    np.testing.assert_array_equal(keys[:, :9].numpy(), prompt[0].numpy())
    with pytest.raises(ValueError, match="positive number of tokens, got 0"):
        KVCache(num_layers=1, capacity=0)


def test_decode_rotary_table_rows_equal_per_step_tables():
    """DecodeRotaryTable's rows are bitwise the per-step tables of past_len + delta, and only
    for the deltas, positions and dtype it was built for."""
    head_dim, section = 16, [2, 3, 3]
    inv_freq = paddle.to_tensor(rotary_inv_freq(head_dim, 1e6))
    deltas = paddle.to_tensor([[-7], [3]], dtype="int64")  # [B, 1]
    steps = 9 + paddle.arange(11, dtype="int64").reshape([1, -1]) + deltas  # [B, 11]: past 9 .. 19
    table = DecodeRotaryTable(deltas, 9, steps.unsqueeze(0).expand([3, 2, 11]), inv_freq, section, paddle.float32)
    for past_len in (9, 14, 19):
        positions = (past_len + deltas).unsqueeze(0).expand([3, 2, 1])  # [3, B, 1]
        cos, sin_signed = mrope_cos_sin(positions, inv_freq, section, paddle.float32)  # [B, 1, 1, D]
        got_cos, got_sin = table.rows(deltas, past_len, 1, paddle.float32)
        assert got_cos.shape == [2, 1, 1, head_dim]
        np.testing.assert_array_equal(got_cos.numpy(), cos.numpy())
        np.testing.assert_array_equal(got_sin.numpy(), sin_signed.numpy())
    assert table.rows(deltas.clone(), 9, 1, paddle.float32) is None, "other deltas: per-step tables"
    assert table.rows(deltas, 8, 1, paddle.float32) is None and table.rows(deltas, 20, 1, paddle.float32) is None
    assert table.rows(deltas, 9, 1, paddle.bfloat16) is None
