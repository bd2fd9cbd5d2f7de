"""The KV cache: a preallocated one returns exactly what the concatenating one does."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl.cache import KVCache


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
