"""The one attention dispatch point of the library.

``attn_implementation`` picks the kernel for both towers:

- ``"eager"``: matmul + additive mask + float32 softmax, exactly the reference's eager path;
- ``"sdpa"``: ``paddle.nn.functional.scaled_dot_product_attention``;
- ``"flash_attention_2"``: variable-length flash attention, Paddle's kernel on GPUs that
  have it, otherwise this library's custom operator (``external_ops/``); where neither is
  available it falls back to ``"sdpa"`` with one logged warning instead of crashing.

Two entry points: :func:`dense_attention` for padded batches with an additive mask (the
decoder), and :func:`varlen_attention` for packed sequences delimited by ``cu_seqlens`` (the
vision tower's windows and frames, packed training). Neither builds a mask spanning unrelated
sequences. The math itself (and the masks) is in :mod:`.attention_math`.

Dimensions:
    B: batch rows                 Lq, Lk: query / key positions of a row
    H: query heads                KVH: kv heads, H % KVH == 0; G = H // KVH queries per kv head
    D: head dim                   Tq, Tk: packed query / key tokens
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F

from .attention_math import grouped_attention, packed_attention, softmax_scale
from .log import warn_once
from .ops import flash_attn_varlen_func, has_flash_attn_op
from .ops.decode_attention import decode_attention, decode_attention_applies
from .runtime import tensor_on_gpu

__all__ = [
    "dense_attention",
    "varlen_attention",
    "sequence_runs",
    "left_padding_starts",
    "resolve_attn_implementation",
    "top_left_causal_flag",
]

logger = logging.getLogger(__name__)


def _paddle_flash_available(q: paddle.Tensor) -> bool:
    """Paddle's own flash kernels: CUDA builds on Ampere (sm80) or newer, fp16/bf16 only."""
    if not tensor_on_gpu(q):
        return False
    if q.dtype not in (paddle.float16, paddle.bfloat16):
        return False
    major, _ = paddle.device.cuda.get_device_capability()
    return major >= 8


def _custom_op_available() -> bool:
    return has_flash_attn_op()


def resolve_attn_implementation(requested: str, q: paddle.Tensor) -> str:
    """The implementation that will actually run for ``requested`` on ``q``'s device and dtype."""
    if requested != "flash_attention_2":
        return requested
    if _paddle_flash_available(q) or _custom_op_available():
        return requested
    warn_once(
        logger,
        "attn_implementation='flash_attention_2' is unavailable here (no Paddle flash kernel for this "
        f"device/dtype and the custom operator in external_ops/ is not built); using 'sdpa' instead."
    )
    return "sdpa"


def sequence_runs(attention_mask: np.ndarray, past_length: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unpadded layout of a batch for varlen attention.

    Returns flat row indices of the real queries (into ``[B * Lq]``) and keys (into
    ``[B * Lk]``) and their ``cu_seqlens``: one sequence per run of equal non-zero
    ``attention_mask`` values in a row (see :func:`~.attention_math.causal_padding_mask`). The queries of a
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


def left_padding_starts(attention_mask: np.ndarray) -> Optional[np.ndarray]:
    """Each row's first real key, ``[B]`` int64, when every row of ``attention_mask [B, Lk]`` is
    zeros then ones with at least one one (a left-padded batch); else None (packed samples, or
    padding elsewhere). For a decode step's last query that is exactly what
    :func:`~.attention_math.causal_padding_mask` lets it see."""
    starts = (attention_mask == 0).sum(axis=1)
    left_padded = np.arange(attention_mask.shape[1])[None, :] >= starts[:, None]
    if np.any(starts >= attention_mask.shape[1]) or not np.array_equal(attention_mask, left_padded.astype(attention_mask.dtype)):
        return None
    return starts.astype(np.int64)


def dense_attention(
    q: paddle.Tensor,
    k: paddle.Tensor,
    v: paddle.Tensor,
    mask: Optional[paddle.Tensor],
    implementation: str,
    scale: Optional[float] = None,
    key_starts: Optional[paddle.Tensor] = None,
) -> paddle.Tensor:
    """Attention over padded batches: q ``[B, Lq, H, D]``, k/v ``[B, Lk, KVH, D]`` -> ``[B, Lq, H, D]``.

    ``mask`` is additive, ``[B or 1, 1, Lq, Lk]``; ``key_starts [B]`` (int64, a decode step of a
    left-padded batch, see :func:`left_padding_starts`) says the same mask as each
    row's first real key. ``flash_attention_2`` is handled by the caller
    through :func:`varlen_attention` (it needs unpadded tokens). Off the GPU, ``sdpa`` with
    grouped-query heads runs the grouped math too: Paddle's CPU backend copies every kv head
    G times first, which dominated decode steps (benchmarks/README.md, "Why the code is the way it is").
    A CPU decode step without mask or with ``key_starts`` (one query per sequence, no gradient)
    runs that math as one operator, :func:`~paddlemix_qwen25vl.ops.decode_attention.decode_attention`,
    when it is built.
    """
    scale = softmax_scale(scale, q.shape[-1])
    grouped = implementation == "eager" or (implementation == "sdpa" and q.shape[2] != k.shape[2] and not tensor_on_gpu(q))
    if grouped and (mask is None or key_starts is not None) and decode_attention_applies(q):
        return decode_attention(q, k, v, scale, key_starts)  # a CPU decode step in one op, cache views read in place
    if not k.is_contiguous():  # views of a preallocated cache: Paddle's matmul reads strided inputs far slower
        k, v = k.clone(), v.clone()
    if grouped:
        return grouped_attention(q, k, v, mask, scale)
    if implementation == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, training=False)
    raise ValueError(f"dense_attention does not run {implementation!r}")


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
    For eager/sdpa, :func:`~.attention_math.packed_attention` runs sequences of equal length
    as one batch through :func:`dense_attention`.
    """
    cu_q = np.asarray(cu_seqlens_q, dtype=np.int64)
    cu_k = np.asarray(cu_seqlens_k, dtype=np.int64)
    scale = softmax_scale(scale, q.shape[-1])
    if implementation == "flash_attention_2":
        return _flash_varlen(q, k, v, cu_q, cu_k, causal, scale)

    def dense(qg: paddle.Tensor, kg: paddle.Tensor, vg: paddle.Tensor, mask: Optional[paddle.Tensor], s: float) -> paddle.Tensor:
        return dense_attention(qg, kg, vg, mask, implementation, s)

    return packed_attention(q, k, v, cu_q, cu_k, causal, scale, dense)


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
    # The custom operator's causal mask is bottom-right aligned.
    return flash_attn_varlen_func(q, k, v, cu_q_t, cu_k_t, max_q, max_k, softmax_scale=scale, causal=causal)
