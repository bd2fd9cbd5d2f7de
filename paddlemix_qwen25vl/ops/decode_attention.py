"""One decode step's attention on the CPU in one operator call.

The eager math of a decode step (reshape, transposes of the whole cache, two matmuls, a
softmax) is a dozen Paddle ops per layer, and between the weight GEMVs each of them runs
with cold caches. ``qwen25vl_decode_attention`` reads the cache in place instead, in a
fraction of the time (benchmarks/README.md, "Why the code is the way it is").

Dimensions:
    B: batch rows     L: cached keys     H: query heads     KVH: kv heads     D: head dim
"""
from __future__ import annotations

from typing import Optional

import paddle

from .loader import get_ops

__all__ = ["decode_attention", "decode_attention_applies"]

HEAD_DIMS = (16, 32, 64, 128)  # the kernel's register-blocked widths D


def decode_attention_applies(q: paddle.Tensor) -> bool:
    """Whether :func:`decode_attention` runs ``q``: one float32 query per sequence on the CPU,
    a supported D, no gradient (the operator has no backward), and an ops build that
    has the operator."""
    ops = get_ops()
    return (
        ops is not None
        and hasattr(ops, "qwen25vl_decode_attention")
        and q.shape[1] == 1
        and q.shape[-1] in HEAD_DIMS
        and q.dtype == paddle.float32
        and q.place.is_cpu_place()
        and not paddle.is_grad_enabled()
    )


def decode_attention(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, scale: float,
                     key_starts: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """``softmax(q k^T * scale) v`` of q ``[B, 1, H, D]`` against the cached keys of k/v
    ``[B, L, KVH, D]`` (query head h reads kv head ``h // (H // KVH)``): every key, or from
    ``key_starts [B]`` (int64) on for a left-padded batch, whose padding keys are skipped.
    ``[B, 1, H, D]``. Only for inputs :func:`decode_attention_applies` accepts."""
    return get_ops().qwen25vl_decode_attention(q, k, v, key_starts, float(scale))
