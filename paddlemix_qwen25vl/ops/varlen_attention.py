"""Variable-length (packed) attention in the flash-attention convention.

Tokens of several segments are packed along the first axis; ``cu_seqlens`` (int32,
``[batch + 1]``, prefix sums of segment lengths) says where each segment starts.
Attention never crosses a segment boundary.

Dimensions:
    Tq, Tk: packed query / key tokens (``total_q``/``total_k`` in flash-attn's names)
    H: query heads      KVH: kv heads, H % KVH == 0 (query head h uses kv head h // (H // KVH))
    D: head dim

``q`` is ``[Tq, H, D]``, ``k``/``v`` ``[Tk, KVH, D]``; the result has the shape of ``q``.

Causal masking follows flash-attn (>= 2.1) and aligns the mask to the bottom-right
corner when a segment has ``seqlen_q != seqlen_k``: query ``i`` sees key ``j`` iff
``j <= i + seqlen_k - seqlen_q``. So the last query always sees every key (decoding
with a cache), and a query row that sees no key at all (possible when
``seqlen_q > seqlen_k``) returns zeros.

``dropout_p`` must be 0.0: neither the kernels nor the fallback implement attention
dropout (Qwen2.5-VL trains with ``attention_dropout=0.0``); a positive value raises
ValueError instead of being silently ignored.
"""
from __future__ import annotations

import paddle

from .. import attention_math
from .loader import get_ops, warn_fallback_once

__all__ = ["flash_attn_varlen_func", "varlen_attention_reference"]


def _check_inputs(
    q: paddle.Tensor,
    k: paddle.Tensor,
    v: paddle.Tensor,
    cu_seqlens_q: paddle.Tensor,
    cu_seqlens_k: paddle.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
) -> None:
    """Raise ValueError naming the first problem with the arguments.

    The values of ``cu_seqlens`` are checked only when they live on the CPU: reading
    them from a GPU would synchronise the device on every attention call.
    """
    if dropout_p != 0.0:
        raise ValueError(
            f"dropout_p={dropout_p}: attention dropout is not implemented (only 0.0 is supported)"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim != 3:
            raise ValueError(f"{name} must be 3-D [tokens, heads, head_dim], got shape {t.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q head_dim {q.shape[2]} differs from k head_dim {k.shape[2]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"q has {q.shape[1]} heads, not a multiple of the {k.shape[1]} kv heads of k/v"
        )
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, cu, total, max_len in (
        ("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q),
        ("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k),
    ):
        if cu.dtype != paddle.int32:
            raise ValueError(f"{name} must be int32, got {cu.dtype}")
        if cu.ndim != 1 or cu.shape[0] < 1:
            raise ValueError(f"{name} must be 1-D [batch + 1], got shape {cu.shape}")
        if cu.place.is_cpu_place() != q.place.is_cpu_place():
            raise ValueError(f"{name} must be on the device of q ({q.place}), got {cu.place}")
        if not cu.place.is_cpu_place():
            continue
        values = cu.numpy()
        if values[0] != 0:
            raise ValueError(f"{name} must start at 0, got {values[0]}")
        if values[-1] != total:
            raise ValueError(
                f"{name} ends at {values[-1]} but the tensor has {total} tokens"
            )
        lengths = values[1:] - values[:-1]
        if (lengths < 0).any():
            raise ValueError(f"{name} must be non-decreasing, got {values.tolist()}")
        if lengths.size and lengths.max() > max_len:
            raise ValueError(
                f"{name} has a segment of {lengths.max()} tokens, longer than its max_seqlen {max_len}"
            )
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must have the same length, got "
            f"{cu_seqlens_q.shape[0]} and {cu_seqlens_k.shape[0]}"
        )


def varlen_attention_reference(
    q: paddle.Tensor,
    k: paddle.Tensor,
    v: paddle.Tensor,
    cu_seqlens_q: paddle.Tensor,
    cu_seqlens_k: paddle.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
) -> paddle.Tensor:
    """Pure-paddle varlen attention: :func:`~paddlemix_qwen25vl.attention_math.packed_attention`
    (the eager math, sequences of equal length batched) behind this module's argument checks.

    Same contract as :func:`flash_attn_varlen_func`; differentiable through paddle's
    autograd. Used when the custom op is not built, and as its test oracle. Memory is
    quadratic in sequence length (one ``[n, H, Lq, Lk]`` score tensor per group of ``n``
    equally long segments).
    """
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p)
    scale = attention_math.softmax_scale(softmax_scale, q.shape[2])
    return attention_math.packed_attention(q, k, v, cu_seqlens_q.numpy(), cu_seqlens_k.numpy(), causal, scale)


def flash_attn_varlen_func(
    q: paddle.Tensor,
    k: paddle.Tensor,
    v: paddle.Tensor,
    cu_seqlens_q: paddle.Tensor,
    cu_seqlens_k: paddle.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
) -> paddle.Tensor:
    """Variable-length attention, ``softmax(q k^T * scale) v`` within each segment.

    Runs the custom operator (tiled online softmax, memory linear in sequence length;
    float32 on CPU, float16/bfloat16/float32 on CUDA) when it is built, else
    :func:`varlen_attention_reference` after logging one warning. Differentiable: the
    operator registers its backward (dq, dk, dv), which recomputes the probabilities
    from the saved logsumexp.

    Args:
        q: ``[Tq, H, D]``.
        k, v: ``[Tk, KVH, D]``, ``H % KVH == 0``.
        cu_seqlens_q, cu_seqlens_k: int32 ``[batch + 1]`` segment offsets.
        max_seqlen_q, max_seqlen_k: longest segment of q / k (sizes the CUDA grid).
        dropout_p: must be 0.0 (ValueError otherwise).
        softmax_scale: defaults to ``1 / sqrt(D)``.
        causal: bottom-right aligned causal mask (see the module docstring).

    Returns:
        ``[Tq, H, D]`` in the dtype of ``q``.
    """
    ops = get_ops()
    if ops is None:
        warn_fallback_once()
        return varlen_attention_reference(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
            dropout_p, softmax_scale, causal,
        )
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p)
    if q.place.is_cpu_place() and q.dtype != paddle.float32:
        raise ValueError(f"the CPU attention kernel supports float32 only, got {q.dtype}")
    scale = attention_math.softmax_scale(softmax_scale, q.shape[2])
    out, _ = ops.qwen25vl_flash_attn_varlen(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
        float(scale), bool(causal),
    )
    return out
