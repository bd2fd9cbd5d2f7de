"""Weight-only bfloat16 / int8 / int4 weights for CPU inference: formats, (de)quantisation and
the linear / embedding products that read them.

Every weight is stored OUTPUT-MAJOR, ``[N, K]`` (row n = output feature n's weights, contiguous
over the input): a Paddle ``nn.Linear`` weight ``[K, N]`` is transposed once when quantised.

* ``bfloat16``: ``qweight`` bfloat16 ``[N, K]``, no scales.
* ``weight_only_int8``: symmetric per output channel, ``s = max|w_n| / 127``
  (1 for an all-zero row), ``q = round(w / s)``; ``qweight`` int8 ``[N, K]``, ``scales`` float32 ``[N]``.
* ``weight_only_int4``: symmetric per group of ``INT4_GROUP`` inputs (the last group may be
  shorter), ``s = max|w_group| / 7`` (1 where zero), ``q = clip(round(w / s), -8, 7)``; two per
  byte, element 2j in the low nibble and 2j+1 in the high one, each stored as ``q + 8``:
  ``qweight`` uint8 ``[N, K / 2]`` (K even), ``scales`` float32 ``[N, G]``.

``round`` rounds halves away from zero (``paddle.round``).

:func:`weight_only_linear` and :func:`weight_only_embedding` run the compiled CPU kernels when
they are built (:func:`weight_only_ops_available`) and otherwise a pure-paddle fallback
(dequantise, then matmul / gather) that agrees up to float32 rounding.

Dimensions:
    M: rows of activations (batch x tokens)   K: input features   N: output features
    G: int4 groups per row, ceil(K / INT4_GROUP)
"""
from __future__ import annotations

import logging
import math

import paddle

from ..cpu import cpu_isa
from ..log import warn_once
from .loader import BUILD_DIR, build_ops, get_ops

logger = logging.getLogger(__name__)

__all__ = [
    "INT4_GROUP",
    "WEIGHT_KINDS",
    "check_quantized",
    "dequantize_weight",
    "quantize_weight",
    "weight_only_embedding",
    "weight_only_linear",
    "weight_only_matmul",
    "weight_only_ops_available",
    "ensure_weight_only_ops",
]

WEIGHT_KINDS = ("bfloat16", "weight_only_int8", "weight_only_int4")
INT4_GROUP = 128  # inputs sharing one int4 scale
INT8_MAX, INT4_MAX, INT4_MIN = 127, 7, -8
INT4_OFFSET = 8  # a nibble stores q + 8, 0..15
# Up to KERNEL_MAX_ROWS activation rows the kernel reads the quantised weight directly; beyond,
# dequantising tiles for MKL's GEMM is faster. On AVX-512 the bfloat16 kernel keeps winning while
# its float32 activations (M x K) fit the cache, BF16_AVX512_MAX_ACTIVATIONS (measured with
# benchmarks/bench_weight_only.py --prefill; benchmarks/README.md, "Prefill"). 16 MiB let a
# 672 x 672 image's vision tower (2304 x 1280) through the kernel, 1.4-1.7x slower than the tiles
# on one machine of this kind; the decoder's prompts up to 1024 rows stay in.
KERNEL_MAX_ROWS = 256
BF16_AVX512_MAX_ACTIVATIONS = 1 << 21  # floats: 8 MiB
DEQUANT_TILE = 1 << 23  # weight elements dequantised at once on the large-M path (32 MiB; 16 MiB tiles were 5-25% slower)


def _check_kind(kind: str) -> None:
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"weight kind {kind!r} is not one of {', '.join(WEIGHT_KINDS)}")


def _symmetric_scales(absmax: paddle.Tensor, qmax: int) -> paddle.Tensor:
    """``absmax / qmax``, 1 where absmax is 0 (an all-zero row or group quantises to zeros)."""
    return paddle.where(absmax > 0, absmax / qmax, paddle.ones_like(absmax))


def _grouped(weight: paddle.Tensor) -> paddle.Tensor:
    """[N, K] -> [N, G, INT4_GROUP], zero-padded: padding changes no group's max."""
    n, k = weight.shape
    groups = -(-k // INT4_GROUP)
    padded = paddle.nn.functional.pad(weight, [0, groups * INT4_GROUP - k]) if k % INT4_GROUP else weight
    return padded.reshape([n, groups, INT4_GROUP])


def quantize_weight(weight: paddle.Tensor, kind: str) -> tuple[paddle.Tensor, paddle.Tensor | None]:
    """Quantise an output-major weight ``[N, K]`` (any float dtype) to ``kind``:
    ``(qweight, scales)``, scales None for bfloat16 (formats in the module docstring)."""
    _check_kind(kind)
    if weight.ndim != 2:
        raise ValueError(f"quantize_weight expects an output-major [out, in] weight, got shape {list(weight.shape)}")
    if kind == "bfloat16":
        return weight.astype(paddle.bfloat16), None
    w = weight.astype(paddle.float32)
    if kind == "weight_only_int8":
        scales = _symmetric_scales(w.abs().max(axis=1), INT8_MAX)
        return paddle.round(w / scales.unsqueeze(1)).astype(paddle.int8), scales
    n, k = w.shape
    if k % 2:
        raise ValueError(f"weight_only_int4 packs two inputs per byte: in = {k} must be even (weight shape {[n, k]})")
    grouped = _grouped(w)  # [N, G, 128]
    scales = _symmetric_scales(grouped.abs().max(axis=2), INT4_MAX)  # [N, G]
    q = paddle.clip(paddle.round(grouped / scales.unsqueeze(2)), INT4_MIN, INT4_MAX)
    nibbles = (q.reshape([n, -1])[:, :k] + INT4_OFFSET).astype(paddle.int32).reshape([n, k // 2, 2])
    packed = nibbles[:, :, 0] + nibbles[:, :, 1] * 16  # element 2j low, 2j+1 high
    return packed.astype(paddle.uint8), scales


def check_quantized(qweight: paddle.Tensor, scales: paddle.Tensor | None, kind: str) -> None:
    """ValueError unless (qweight, scales) are a weight of ``kind`` in the formats above."""
    _check_kind(kind)
    expected = {"bfloat16": paddle.bfloat16, "weight_only_int8": paddle.int8, "weight_only_int4": paddle.uint8}[kind]
    if qweight.ndim != 2 or qweight.dtype != expected:
        raise ValueError(f"{kind} qweight must be 2-D {expected}, got {qweight.dtype} of shape {list(qweight.shape)}")
    n, packed_k = qweight.shape
    want = {"bfloat16": None, "weight_only_int8": [n], "weight_only_int4": [n, -(-2 * packed_k // INT4_GROUP)]}[kind]
    got = None if scales is None else list(scales.shape)
    if got != want or (scales is not None and scales.dtype != paddle.float32):
        raise ValueError(f"{kind} scales must be {'None' if want is None else f'float32 {want}'} for qweight "
                         f"{list(qweight.shape)}, got {got if scales is None else f'{scales.dtype} {got}'}")


def _dequantize_rows(qweight: paddle.Tensor, scales: paddle.Tensor | None, kind: str) -> paddle.Tensor:
    """Float32 weights of the (already checked) quantised rows."""
    if kind == "bfloat16":
        return qweight.astype(paddle.float32)
    if kind == "weight_only_int8":
        return qweight.astype(paddle.float32) * scales.unsqueeze(-1)
    rows, packed_k = qweight.shape
    byte = qweight.astype(paddle.int32)
    q = paddle.stack([byte % 16, byte // 16], axis=-1).reshape([rows, 2 * packed_k]).astype(paddle.float32)
    groups = scales.shape[1]
    # expand + reshape, not repeat_interleave: the same values, 10x faster on a 152k-row table
    per_input = paddle.expand(scales.unsqueeze(-1), [rows, groups, INT4_GROUP]).reshape([rows, groups * INT4_GROUP])
    return (q - INT4_OFFSET) * per_input[:, : 2 * packed_k]


def dequantize_weight(qweight: paddle.Tensor, scales: paddle.Tensor | None, kind: str) -> paddle.Tensor:
    """The float32 output-major weight ``[N, K]`` that ``(qweight, scales)`` of ``kind`` stand for."""
    check_quantized(qweight, scales, kind)
    return _dequantize_rows(qweight, scales, kind)


def in_features(qweight: paddle.Tensor, kind: str) -> int:
    """K of a quantised weight (int4 stores two inputs per byte)."""
    return qweight.shape[1] * (2 if kind == "weight_only_int4" else 1)


def weight_only_ops_available() -> bool:
    """Whether the compiled weight-only CPU kernels are loaded in this process."""
    ops = get_ops()
    return ops is not None and hasattr(ops, "qwen25vl_weight_only_linear")


def ensure_weight_only_ops() -> bool:
    """Load the compiled CPU kernels, compiling them on first use (once per machine, cached by
    :func:`~paddlemix_qwen25vl.ops.loader.build_ops`); returns whether they are loaded.

    Without them every weight-only layer dequantises its whole weight at every call: the quick
    benchmark model decodes at 0.2 tokens/s instead of 28 in int8, so a model load with
    bfloat16/int8/int4 weights on CPU (every script's default ``--dtype bfloat16``) builds
    them rather than fall back silently. When the build fails (no C++ compiler) this warns
    and the pure-Paddle fallback runs.
    """
    if weight_only_ops_available():
        return True
    logger.info("compiling the custom CPU operators once (cached in %s)", BUILD_DIR)
    try:
        build_ops()
    except Exception as error:  # a missing compiler or headers: the fallback still computes the same values
        warn_once(logger, f"the weight-only CPU kernels could not be built ({type(error).__name__}: {error}); "
                          "bfloat16/int8/int4 layers use the much slower pure-Paddle fallback. Install them with "
                          "`pip install --no-build-isolation ./external_ops` from a checkout.")
    return weight_only_ops_available()


def _kernels_apply(x: paddle.Tensor, qweight: paddle.Tensor) -> bool:
    """The compiled kernels run CPU tensors that need no gradient (they have no backward)."""
    no_grad = x.stop_gradient or not paddle.is_grad_enabled()
    return weight_only_ops_available() and x.place.is_cpu_place() and qweight.place.is_cpu_place() and no_grad


def dequantized_matmul(x: paddle.Tensor, qweight: paddle.Tensor, scales: paddle.Tensor | None,
                       bias: paddle.Tensor | None, kind: str) -> paddle.Tensor:
    """``x [M, K] @ W^T + bias`` with the compiled kernels: W dequantised DEQUANT_TILE elements
    at a time, each tile multiplied by MKL (the large-M path: GEMM, not bandwidth, bound)."""
    ops = get_ops()
    n, k = qweight.shape[0], in_features(qweight, kind)
    step = max(1, DEQUANT_TILE // k)
    tiles = [paddle.matmul(x, ops.qwen25vl_weight_only_rows(qweight, scales, paddle.arange(start, min(n, start + step))),
                           transpose_y=True) for start in range(0, n, step)]
    out = tiles[0] if len(tiles) == 1 else paddle.concat(tiles, axis=-1)
    del tiles  # the tiles' outputs before the bias: at most one [M, N] output alive beside x
    return out if bias is None else out.add_(bias)


def kernel_reads_directly(rows: int, k: int, kind: str) -> bool:
    """Whether ``rows`` activation rows of ``k`` inputs go through the kernel (else dequantised tiles)."""
    if rows <= KERNEL_MAX_ROWS:
        return True
    return kind == "bfloat16" and rows * k <= BF16_AVX512_MAX_ACTIVATIONS and cpu_isa() == "avx512"


def weight_only_linear(x: paddle.Tensor, qweight: paddle.Tensor, scales: paddle.Tensor | None,
                       bias: paddle.Tensor | None, kind: str) -> paddle.Tensor:
    """``x @ W^T + bias`` for float32 x ``[..., K]`` and the quantised W ``[N, K]``: ``[..., N]`` float32.

    Compiled kernels: up to the rows :func:`kernel_reads_directly` allows (decode, short
    prompts) read the quantised weight directly, more go through :func:`dequantized_matmul`."""
    check_quantized(qweight, scales, kind)
    k = in_features(qweight, kind)
    if x.shape[-1] != k or x.dtype != paddle.float32:
        raise ValueError(f"weight_only_linear: x must be float32 [..., {k}] for weight {list(qweight.shape)} "
                         f"({kind}), got {x.dtype} {list(x.shape)}")
    if bias is not None and (list(bias.shape) != [qweight.shape[0]] or bias.dtype != paddle.float32):
        raise ValueError(f"weight_only_linear: bias must be float32 [{qweight.shape[0]}], got {bias.dtype} {list(bias.shape)}")
    return weight_only_matmul(x, qweight, scales, bias, kind)


def weight_only_matmul(x: paddle.Tensor, qweight: paddle.Tensor, scales: paddle.Tensor | None,
                       bias: paddle.Tensor | None, kind: str) -> paddle.Tensor:
    """:func:`weight_only_linear` without its argument checks (~10 us a call, a few percent of a
    quick-model int4 decode step): for layers whose weights were checked when they were set."""
    if not _kernels_apply(x, qweight):
        out = paddle.matmul(x, _dequantize_rows(qweight, scales, kind), transpose_y=True)
        return out if bias is None else out + bias
    k = x.shape[-1]
    if kernel_reads_directly(math.prod(x.shape[:-1]), k, kind):
        return get_ops().qwen25vl_weight_only_linear(x, qweight, scales, bias)  # [..., N]
    out = dequantized_matmul(x.reshape([-1, k]), qweight, scales, bias, kind)
    return out.reshape([*x.shape[:-1], qweight.shape[0]])


def weight_only_embedding(ids: paddle.Tensor, qweight: paddle.Tensor, scales: paddle.Tensor | None,
                          kind: str) -> paddle.Tensor:
    """Rows ``ids`` (int64 ``[...]``) of the quantised table ``[V, C]``, dequantised: ``[..., C]`` float32."""
    check_quantized(qweight, scales, kind)
    if ids.dtype != paddle.int64:
        raise ValueError(f"weight_only_embedding: ids must be int64, got {ids.dtype}")
    flat = ids.reshape([-1])
    if weight_only_ops_available() and ids.place.is_cpu_place() and qweight.place.is_cpu_place():
        rows = get_ops().qwen25vl_weight_only_rows(qweight, scales, flat)
    else:
        rows = _dequantize_rows(paddle.gather(qweight, flat), None if scales is None else paddle.gather(scales, flat), kind)
    return rows.reshape([*ids.shape, in_features(qweight, kind)])
