"""The one attention dispatch point of the library.

``attn_implementation`` picks the kernel for both towers:

- ``"eager"``: matmul + additive mask + float32 softmax, exactly the reference's eager path;
- ``"sdpa"``: ``paddle.nn.functional.scaled_dot_product_attention``;
- ``"flash_attention_2"``: variable-length flash attention, Paddle's kernel on GPUs that
  have it, otherwise this library's custom operator (``external_ops/``); where neither is
  available it falls back to ``"sdpa"`` with one logged warning instead of crashing.

Two entry points: :func:`dense_attention` for padded batches ``[B, L, H, D]`` with an
additive mask (the decoder), and :func:`varlen_attention` for packed sequences
``[total, H, D]`` delimited by ``cu_seqlens`` (the vision tower's windows and frames,
packed training). Neither builds a mask spanning unrelated sequences.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F

from .ops.decode_attention import decode_attention, decode_attention_applies

__all__ = [
    "dense_attention",
    "varlen_attention",
    "causal_padding_mask",
    "sequence_runs",
    "resolve_attn_implementation",
    "top_left_causal_flag",
]

logger = logging.getLogger(__name__)
_warned = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _on_gpu(x: paddle.Tensor) -> bool:
    return "gpu" in str(x.place).lower()


def _paddle_flash_available(q: paddle.Tensor) -> bool:
    """Paddle's own flash kernels: CUDA builds on Ampere (sm80) or newer, fp16/bf16 only."""
    if not (paddle.is_compiled_with_cuda() and _on_gpu(q)):
        return False
    if q.dtype not in (paddle.float16, paddle.bfloat16):
        return False
    major, _ = paddle.device.cuda.get_device_capability()
    return major >= 8


def _custom_op_available() -> bool:
    try:
        from .ops import has_flash_attn_op
    except ImportError:
        return False
    return has_flash_attn_op()


def resolve_attn_implementation(requested: str, q: paddle.Tensor) -> str:
    """The implementation that will actually run for ``requested`` on ``q``'s device and dtype."""
    if requested != "flash_attention_2":
        return requested
    if _paddle_flash_available(q) or _custom_op_available():
        return requested
    _warn_once(
        "attn_implementation='flash_attention_2' is unavailable here (no Paddle flash kernel for this "
        f"device/dtype and the custom operator in external_ops/ is not built); using 'sdpa' instead."
    )
    return "sdpa"


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


def sequence_runs(attention_mask: np.ndarray, past_length: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unpadded layout of a batch for varlen attention.

    Returns flat row indices of the real queries (into ``[B * Lq]``) and keys (into
    ``[B * Lk]``) and their ``cu_seqlens``: one sequence per run of equal non-zero
    ``attention_mask`` values in a row (see :func:`causal_padding_mask`). The queries of a
    sequence are its last tokens, so bottom-right causal alignment is exact.
    """
    batch, key_length = attention_mask.shape
    query_length = key_length - past_length
    rows_q, rows_k, cu_q, cu_k = [], [], [0], [0]
    for b in range(batch):
        values = attention_mask[b]
        edges = np.flatnonzero(np.diff(values)) + 1
        for start, end in zip(np.concatenate([[0], edges]), np.concatenate([edges, [key_length]])):
            if values[start] == 0:
                continue
            q_start = max(start, past_length)
            rows_k.append(b * key_length + np.arange(start, end))
            rows_q.append(b * query_length + np.arange(q_start, end) - past_length)
            cu_k.append(cu_k[-1] + end - start)
            cu_q.append(cu_q[-1] + max(0, end - q_start))
    concat = lambda parts: np.concatenate(parts) if parts else np.zeros([0], dtype=np.int64)  # noqa: E731
    return concat(rows_q), concat(rows_k), np.asarray(cu_q), np.asarray(cu_k)


def _grouped_math(
    q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, mask: Optional[paddle.Tensor], scale: float
) -> paddle.Tensor:
    """softmax(q k^T * scale + mask) v on [B, L, H, D], softmax in float32 (the reference's eager math).

    Query head h uses kv head h // groups (the reference's repeat_kv). Instead of copying each kv
    head ``groups`` times, the queries of a group are stacked as rows against their one kv head.
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


def dense_attention(
    q: paddle.Tensor,
    k: paddle.Tensor,
    v: paddle.Tensor,
    mask: Optional[paddle.Tensor],
    implementation: str,
    scale: Optional[float] = None,
) -> paddle.Tensor:
    """Attention over padded batches: q ``[B, Lq, H, D]``, k/v ``[B, Lk, KVH, D]`` -> ``[B, Lq, H, D]``.

    ``mask`` is additive, ``[B or 1, 1, Lq, Lk]``. ``flash_attention_2`` is handled by the caller
    through :func:`varlen_attention` (it needs unpadded tokens). Off the GPU, ``sdpa`` with
    grouped-query heads runs the grouped math too: Paddle's CPU backend copies every kv head
    ``groups`` times first, which made each decode step 20x slower than the attention itself.
    A CPU decode step without mask (one query per sequence, no gradient) runs that math as one
    operator, :func:`~paddlemix_qwen25vl.ops.decode_attention.decode_attention`, when it is built.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    grouped = implementation == "eager" or (implementation == "sdpa" and q.shape[2] != k.shape[2] and not _on_gpu(q))
    if grouped and mask is None and decode_attention_applies(q):  # a CPU decode step: the same math in one op
        return decode_attention(q, k, v, scale)  # reads cache views in place
    if not k.is_contiguous():  # views of a preallocated cache: Paddle's matmul reads strided inputs far slower
        k, v = k.clone(), v.clone()
    if grouped:
        return _grouped_math(q, k, v, mask, scale)
    if implementation == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, training=False)
    raise ValueError(f"dense_attention does not run {implementation!r}")


def _bottom_right_causal(len_q: int, len_k: int, dtype: str) -> paddle.Tensor:
    """Additive causal mask ``[1, 1, Lq, Lk]`` aligning the last query with the last key (flash-attn convention)."""
    allowed = np.arange(len_k)[None, :] <= np.arange(len_q)[:, None] + (len_k - len_q)
    mask = np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)[None, None]
    return paddle.to_tensor(mask).astype(dtype)


def varlen_attention(
    q: paddle.Tensor,
    k: paddle.Tensor,
    v: paddle.Tensor,
    cu_seqlens_q: np.ndarray,
    cu_seqlens_k: np.ndarray,
    implementation: str,
    causal: bool = False,
    scale: Optional[float] = None,
) -> paddle.Tensor:
    """Attention within each packed sequence: q ``[Tq, H, D]``, k/v ``[Tk, KVH, D]`` -> ``[Tq, H, D]``.

    Sequence i spans ``cu_seqlens_q[i]:cu_seqlens_q[i+1]`` of q and the matching slice of k/v;
    tokens never attend across sequences. ``causal`` aligns the last query with the last key.
    For eager/sdpa, sequences of equal length run as one batch (no cross-sequence mask).
    """
    cu_q = np.asarray(cu_seqlens_q, dtype=np.int64)
    cu_k = np.asarray(cu_seqlens_k, dtype=np.int64)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if implementation == "flash_attention_2":
        return _flash_varlen(q, k, v, cu_q, cu_k, causal, scale)
    len_q, len_k = np.diff(cu_q), np.diff(cu_k)
    groups = {}
    for i, key in enumerate(zip(len_q.tolist(), len_k.tolist())):
        groups.setdefault(key, []).append(i)
    pieces, rows = [], []
    for (lq, lk), members in groups.items():
        if lq == 0:
            continue
        starts_q, starts_k = cu_q[members], cu_k[members]
        index_q = paddle.to_tensor((starts_q[:, None] + np.arange(lq)[None, :]).reshape(-1))
        index_k = paddle.to_tensor((starts_k[:, None] + np.arange(lk)[None, :]).reshape(-1))
        n = len(members)
        qg = paddle.gather(q, index_q).reshape([n, lq, q.shape[1], q.shape[2]])
        kg = paddle.gather(k, index_k).reshape([n, lk, k.shape[1], k.shape[2]])
        vg = paddle.gather(v, index_k).reshape([n, lk, v.shape[1], v.shape[2]])
        mask = _bottom_right_causal(lq, lk, q.dtype) if causal else None
        pieces.append(dense_attention(qg, kg, vg, mask, implementation, scale).reshape([n * lq, q.shape[1], -1]))
        rows.append(index_q)
    out = paddle.zeros_like(q)
    if not pieces:
        return out
    return paddle.scatter(out, paddle.concat(rows), paddle.concat(pieces), overwrite=True)


def top_left_causal_flag(len_q: np.ndarray, len_k: np.ndarray, causal: bool) -> Optional[bool]:
    """The ``causal`` flag that gives Paddle's flash kernel the bottom-right causal mask of segments
    with ``len_q``/``len_k`` queries/keys, or None when no flag does.

    Paddle's kernel (the PaddlePaddle/flash-attention v2 fork) aligns its causal mask top-left
    (softmax.h: ``col_idx_limit = min(max_seqlen_k, row_idx + 1)``): with fewer queries than keys
    query i would see keys 0..i only. Equal lengths: both alignments agree. At most one query per
    segment (a decode step): that last token sees every key, so no mask at all.
    """
    if not causal or (len_q <= 1).all():
        return False
    if (len_q == len_k).all():
        return True
    return None


def _flash_varlen(
    q: paddle.Tensor,
    k: paddle.Tensor,
    v: paddle.Tensor,
    cu_q: np.ndarray,
    cu_k: np.ndarray,
    causal: bool,
    scale: float,
) -> paddle.Tensor:
    len_q, len_k = np.diff(cu_q), np.diff(cu_k)
    max_q, max_k = int(len_q.max()), int(len_k.max())
    cu_q_t = paddle.to_tensor(cu_q.astype(np.int32))
    cu_k_t = paddle.to_tensor(cu_k.astype(np.int32))
    if _paddle_flash_available(q):
        top_left = top_left_causal_flag(len_q, len_k, causal)
        if top_left is not None:
            from paddle.nn.functional.flash_attention import flash_attn_unpadded

            out, _ = flash_attn_unpadded(
                q, k, v, cu_q_t, cu_k_t, max_q, max_k, scale=scale, dropout=0.0, causal=top_left, training=False
            )
            return out
        if not _custom_op_available():  # a chunk after a cache without the custom operator: masked sdpa
            return varlen_attention(q, k, v, cu_q, cu_k, "sdpa", causal=causal, scale=scale)
    from .ops import flash_attn_varlen_func  # its causal mask is bottom-right aligned

    return flash_attn_varlen_func(q, k, v, cu_q_t, cu_k_t, max_q, max_k, softmax_scale=scale, causal=causal)
