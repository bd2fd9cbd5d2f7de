"""Attention in plain Paddle ops, the reference's eager math; no kernel choice is made here.

:mod:`.attention` dispatches to it (``"eager"``, and ``"sdpa"``/``"eager"`` per packed
sequence), and :func:`~paddlemix_qwen25vl.ops.flash_attn_varlen_func` falls back to it when
the custom operator is not built (its tests use it as the oracle).

Dimensions:
    B: batch rows                 Lq, Lk: query / key positions of a row (Lk = past + Lq)
    H: query heads                KVH: kv heads, H % KVH == 0; G = H // KVH queries per kv head
    D: head dim                   Tq, Tk: packed query / key tokens; sequence i spans
                                  ``cu_seqlens_q[i]:cu_seqlens_q[i + 1]`` (likewise for keys)
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import paddle
import paddle.nn.functional as F

__all__ = [
    "DenseAttention",
    "bottom_right_causal_mask",
    "causal_padding_mask",
    "grouped_attention",
    "packed_attention",
    "softmax_scale",
]

# dense(q [B, Lq, H, D], k/v [B, Lk, KVH, D], additive mask [B or 1, 1, Lq, Lk] or None, scale) -> [B, Lq, H, D]
DenseAttention = Callable[[paddle.Tensor, paddle.Tensor, paddle.Tensor, Optional[paddle.Tensor], float], paddle.Tensor]


def softmax_scale(scale: Optional[float], head_dim: int) -> float:
    """``scale``, or the default ``1 / sqrt(D)``."""
    return scale if scale is not None else 1.0 / math.sqrt(head_dim)


def causal_padding_mask(
    attention_mask: Optional[paddle.Tensor], batch_size: int, query_length: int, past_length: int, dtype: str
) -> paddle.Tensor:
    """Additive mask ``[B, 1, Lq, past + Lq]``: 0 where query i may attend key j, dtype-min elsewhere.

    ``attention_mask [B, past + Lq]`` holds 0 for padding and a sequence number for real tokens:
    1 everywhere for ordinary batches, 1, 2, 3, ... for samples packed into one row. Query i
    (absolute position ``past + i``) sees the keys at positions <= its own in its own sequence.
    """
    key_length = past_length + query_length
    query_pos = paddle.arange(past_length, key_length).reshape([-1, 1])
    allowed = paddle.arange(key_length).reshape([1, -1]) <= query_pos  # [Lq, Lk]
    allowed = allowed.unsqueeze(0).expand([batch_size, query_length, key_length])
    if attention_mask is not None:
        if attention_mask.shape[-1] != key_length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} tokens but the cache holds {past_length} and "
                f"{query_length} are new: expected {key_length}"
            )
        keys = attention_mask.unsqueeze(1)  # [B, 1, Lk]
        queries = attention_mask[:, past_length:].unsqueeze(-1)  # [B, Lq, 1]
        allowed = paddle.logical_and(allowed, paddle.logical_and(keys != 0, keys == queries))
    zero = paddle.zeros([], dtype=dtype)
    minimum = paddle.full([], paddle.finfo(dtype).min, dtype=dtype)
    return paddle.where(allowed, zero, minimum).unsqueeze(1)


def bottom_right_causal_mask(len_q: int, len_k: int, dtype: str) -> paddle.Tensor:
    """Additive causal mask ``[1, 1, Lq, Lk]`` (``Lq <= Lk``) aligning the last query with the last key
    (flash-attn >= 2.1): query i sees key j iff ``j <= i + Lk - Lq``, as if the first ``Lk - Lq``
    keys were a cache."""
    return causal_padding_mask(None, 1, len_q, len_k - len_q, dtype)


def grouped_attention(
    q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, mask: Optional[paddle.Tensor], scale: float
) -> paddle.Tensor:
    """softmax(q k^T * scale + mask) v, q ``[B, Lq, H, D]``, k/v ``[B, Lk, KVH, D]`` -> ``[B, Lq, H, D]``,
    softmax in float32 (the reference's eager math).

    Query head h uses kv head h // G (the reference's repeat_kv). Instead of copying each kv
    head G times, the queries of a group are stacked as rows against their one kv head.
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    groups = heads // kv_heads
    q = q.reshape([batch, q_len, kv_heads, groups, head_dim]).transpose([0, 2, 3, 1, 4])
    q = q.reshape([batch, kv_heads, groups * q_len, head_dim])  # rows: (group, query)
    k, v = k.transpose([0, 2, 1, 3]), v.transpose([0, 2, 1, 3])  # [B, KVH, Lk, D]
    scores = paddle.matmul(q, k, transpose_y=True) * scale  # [B, KVH, G * Lq, Lk]
    if mask is not None:  # [B or 1, 1, Lq, Lk]: the same for every head
        key_len = scores.shape[-1]
        scores = scores.reshape([batch, kv_heads, groups, q_len, key_len]) + mask.unsqueeze(2)
        scores = scores.reshape([batch, kv_heads, groups * q_len, key_len])
    probs = F.softmax(scores.astype("float32"), axis=-1).astype(q.dtype)
    out = paddle.matmul(probs, v).reshape([batch, kv_heads, groups, q_len, head_dim])
    return out.transpose([0, 3, 1, 2, 4]).reshape([batch, q_len, heads, head_dim])


def packed_attention(
    q: paddle.Tensor,
    k: paddle.Tensor,
    v: paddle.Tensor,
    cu_seqlens_q: np.ndarray,
    cu_seqlens_k: np.ndarray,
    causal: bool,
    scale: float,
    dense: DenseAttention = grouped_attention,
) -> paddle.Tensor:
    """Attention within each packed sequence: q ``[Tq, H, D]``, k/v ``[Tk, KVH, D]`` -> ``[Tq, H, D]``.

    Tokens never attend across sequences: sequences of equal length run as one batch ``[n, L, ., D]``
    through ``dense``, without a mask spanning two of them. ``causal`` is
    :func:`bottom_right_causal_mask`. As in flash-attn, a query row that sees no key (with
    ``causal``, the first ``Lq - Lk`` queries of a sequence with more queries than keys; every
    query of a sequence without keys) is zeros.
    """
    cu_q, cu_k = np.asarray(cu_seqlens_q, dtype=np.int64), np.asarray(cu_seqlens_k, dtype=np.int64)
    len_q, len_k = np.diff(cu_q), np.diff(cu_k)
    blind = np.maximum(len_q - len_k, 0) if causal else np.where(len_k == 0, len_q, 0)  # queries that see no key
    starts_q, starts_k, len_q = cu_q[:-1] + blind, cu_k[:-1], len_q - blind
    groups = {}  # (Lq, Lk) -> the sequences of those lengths
    for i, lengths in enumerate(zip(len_q.tolist(), len_k.tolist())):
        if lengths[0] > 0:
            groups.setdefault(lengths, []).append(i)
    heads, kv_heads = q.shape[1], k.shape[1]
    pieces, rows = [], []
    for (lq, lk), members in groups.items():
        n = len(members)
        index_q = paddle.to_tensor((starts_q[members][:, None] + np.arange(lq)[None, :]).reshape(-1))
        index_k = paddle.to_tensor((starts_k[members][:, None] + np.arange(lk)[None, :]).reshape(-1))
        qg = paddle.gather(q, index_q).reshape([n, lq, heads, -1])
        kg = paddle.gather(k, index_k).reshape([n, lk, kv_heads, -1])
        vg = paddle.gather(v, index_k).reshape([n, lk, kv_heads, -1])
        mask = bottom_right_causal_mask(lq, lk, q.dtype) if causal else None
        pieces.append(dense(qg, kg, vg, mask, scale).reshape([n * lq, heads, -1]))
        rows.append(index_q)
    out = paddle.zeros_like(q)
    if not pieces:
        return out
    return paddle.scatter(out, paddle.concat(rows), paddle.concat(pieces), overwrite=True)
