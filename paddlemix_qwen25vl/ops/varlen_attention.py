"""Variable-length (packed) attention in the flash-attention convention.

Tokens of several segments are packed along the first axis; ``cu_seqlens`` (int32,
``[batch + 1]``, prefix sums of segment lengths) says where each segment starts.
Attention never crosses a segment boundary.

Shapes: ``q`` ``[total_q, heads, head_dim]``, ``k``/``v`` ``[total_k, kv_heads, head_dim]``
with ``heads % kv_heads == 0`` (grouped-query attention: query head ``h`` uses kv head
``h // (heads // kv_heads)``). The result has the shape of ``q``.

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

import math

import paddle
import paddle.nn.functional as F

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
    """Pure-paddle varlen attention: plain matmul/softmax per segment.

    Same contract as :func:`flash_attn_varlen_func`; differentiable through paddle's
    autograd. Used when the custom op is not built, and as its test oracle. Memory is
    quadratic in the longest segment (one ``[heads, seqlen_q, seqlen_k]`` score matrix
    at a time).
    """
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[2])
    group = q.shape[1] // k.shape[1]
    bounds_q = cu_seqlens_q.tolist()
    bounds_k = cu_seqlens_k.tolist()
    outputs = []
    for b in range(len(bounds_q) - 1):
        q0, q1, k0, k1 = bounds_q[b], bounds_q[b + 1], bounds_k[b], bounds_k[b + 1]
        if q1 == q0:
            continue
        if k1 == k0:  # no keys: flash-attn returns zeros
            outputs.append(paddle.zeros([q1 - q0, q.shape[1], q.shape[2]], dtype=q.dtype))
            continue
        qs = q[q0:q1].transpose([1, 0, 2])  # [heads, sq, dim]
        ks = k[k0:k1].transpose([1, 0, 2])  # [kv_heads, sk, dim]
        vs = v[k0:k1].transpose([1, 0, 2])
        if group > 1:
            ks = ks.repeat_interleave(group, axis=0)
            vs = vs.repeat_interleave(group, axis=0)
        scores = paddle.matmul(qs, ks, transpose_y=True) * scale  # [heads, sq, sk]
        if causal:
            sq, sk = q1 - q0, k1 - k0
            rows = paddle.arange(sq).unsqueeze(1)
            cols = paddle.arange(sk).unsqueeze(0)
            visible = cols <= rows + (sk - sq)  # [sq, sk], bottom-right aligned
            scores = paddle.where(visible, scores, paddle.full_like(scores, float("-inf")))
            # Rows that see no key would be softmax(all -inf) = NaN; flash-attn gives 0.
            row_has_key = visible.any(axis=1).astype(q.dtype).reshape([1, sq, 1])
            scores = paddle.where(row_has_key > 0, scores, paddle.zeros_like(scores))
            probs = F.softmax(scores, axis=-1) * row_has_key
        else:
            probs = F.softmax(scores, axis=-1)
        outputs.append(paddle.matmul(probs, vs).transpose([1, 0, 2]))
    if not outputs:
        return paddle.zeros_like(q)
    return paddle.concat(outputs, axis=0)


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
        q: ``[total_q, heads, head_dim]``.
        k, v: ``[total_k, kv_heads, head_dim]``, ``heads % kv_heads == 0``.
        cu_seqlens_q, cu_seqlens_k: int32 ``[batch + 1]`` segment offsets.
        max_seqlen_q, max_seqlen_k: longest segment of q / k (sizes the CUDA grid).
        dropout_p: must be 0.0 (ValueError otherwise).
        softmax_scale: defaults to ``1 / sqrt(head_dim)``.
        causal: bottom-right aligned causal mask (see the module docstring).

    Returns:
        ``[total_q, heads, head_dim]`` in the dtype of ``q``.
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
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[2])
    out, _ = ops.qwen25vl_flash_attn_varlen(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
        float(scale), bool(causal),
    )
    return out
