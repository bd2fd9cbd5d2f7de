"""Weight-only bfloat16 / int8 / int4 weights: the formats against a numpy reference of their
formulas, and the linear / embedding products (pure-paddle fallback and compiled CPU kernels at
every instruction-set level this CPU runs) against float64 numpy."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddlemix_qwen25vl.ops import weight_only
from paddlemix_qwen25vl.ops.loader import get_ops
from paddlemix_qwen25vl.ops.weight_only import (
    INT4_GROUP,
    KERNEL_MAX_ROWS,
    WEIGHT_KINDS,
    dequantize_weight,
    quantize_weight,
    weight_only_embedding,
    weight_only_linear,
)

pytestmark = pytest.mark.usefixtures("custom_ops")  # the kernel tests run the compiled operators

QUANT_KINDS = ("weight_only_int8", "weight_only_int4")


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _reference_quantize(w: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(q as int, scales) by the formulas of the interface, in float32 like the code."""
    n, k = w.shape
    if kind == "weight_only_int8":
        absmax = np.abs(w).max(axis=1)
        s = np.where(absmax > 0, absmax / np.float32(127), np.float32(1)).astype(np.float32)
        return _round_half_away(w / s[:, None]).astype(np.int64), s
    groups = -(-k // INT4_GROUP)
    s = np.empty((n, groups), np.float32)
    q = np.empty((n, k), np.int64)
    for g in range(groups):
        block = w[:, g * INT4_GROUP:(g + 1) * INT4_GROUP]
        absmax = np.abs(block).max(axis=1)
        s[:, g] = np.where(absmax > 0, absmax / np.float32(7), np.float32(1))
        q[:, g * INT4_GROUP:(g + 1) * INT4_GROUP] = np.clip(_round_half_away(block / s[:, g:g + 1]), -8, 7)
    return q, s


def _reference_dequantize(q: np.ndarray, s: np.ndarray, kind: str) -> np.ndarray:
    """q * s, exact in float64 and then rounded once to float32 (what a float32 product gives)."""
    s64 = s[:, None].astype(np.float64) if kind == "weight_only_int8" else np.repeat(s.astype(np.float64), INT4_GROUP, axis=1)[:, : q.shape[1]]
    return (q * s64).astype(np.float32)


def _weight(n: int, k: int, seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 0.05
    w[1] = 0.0  # an all-zero row: scale 1, zeros back
    return w


@pytest.mark.parametrize("kind", QUANT_KINDS)
@pytest.mark.parametrize("n, k", [(5, 300), (3, 128), (7, 34)])
def test_quantize_matches_the_formulas(kind, n, k):
    w = _weight(n, k)
    qweight, scales = quantize_weight(paddle.to_tensor(w), kind)
    q, s = _reference_quantize(w, kind)
    np.testing.assert_array_equal(scales.numpy(), s)
    if kind == "weight_only_int8":
        assert qweight.dtype == paddle.int8 and qweight.shape == [n, k]
        np.testing.assert_array_equal(qweight.numpy().astype(np.int64), q)
    else:
        assert qweight.dtype == paddle.uint8 and qweight.shape == [n, k // 2]
        packed = qweight.numpy().astype(np.int64)
        np.testing.assert_array_equal(packed & 15, q[:, 0::2] + 8)  # element 2j: low nibble
        np.testing.assert_array_equal(packed >> 4, q[:, 1::2] + 8)
    np.testing.assert_array_equal(dequantize_weight(qweight, scales, kind).numpy(), _reference_dequantize(q, s, kind))
    # Half a step of the scale at most: the quantisation error the formats promise.
    error = np.abs(dequantize_weight(qweight, scales, kind).numpy() - w)
    step = s[:, None] if kind == "weight_only_int8" else np.repeat(s, INT4_GROUP, axis=1)[:, :k]
    assert np.all(error <= 0.5 * step * (1 + 1e-6))


def test_bfloat16_is_a_cast():
    w = _weight(4, 10)
    qweight, scales = quantize_weight(paddle.to_tensor(w), "bfloat16")
    assert scales is None and qweight.dtype == paddle.bfloat16
    bits = w.view(np.uint32)
    # round to nearest even on the upper 16 bits
    want = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(np.float32)
    np.testing.assert_array_equal(dequantize_weight(qweight, None, "bfloat16").numpy(), want)


def _activation_rounding(x: np.ndarray, kind: str, level: str) -> np.ndarray:
    """Half the quantisation step h_k of each input that the AVX2 / AVX-512 integer kernels round
    to int8 (|x_k - d q_k| <= d / 2, d = max|x_block| / 127): blocks of 32 inputs for int8 weights,
    each int4 group (128) for int4, up to the last full 32 (int8) or 64 (int4) inputs of a row, the
    rest staying float. 0 for bfloat16 and at the baseline level (float activations)."""
    half = np.zeros(x.shape, np.float64)
    if kind == "bfloat16" or level == "baseline":
        return half
    block, span = (32, 32) if kind == "weight_only_int8" else (INT4_GROUP, 64)
    covered = x.shape[1] // span * span
    for start in range(0, covered, block):
        end = min(start + block, covered)
        half[:, start:end] = np.abs(x[:, start:end]).max(axis=1, keepdims=True).astype(np.float64) / 127 / 2
    return half


def _kernel_error_bound(x: np.ndarray, qweight, scales, kind: str, level: str) -> np.ndarray:
    """sum_k h_k |w_k| (the activation rounding, _activation_rounding) plus 2e-6 (16 float32
    epsilons) of sum_k (|x_k| + h_k) (|w_k| + o_k): o_k = 8 s_k for int4, whose kernels sum nibbles
    unscaled and subtract 8 * sum(x) per group; 0 otherwise."""
    w_abs = np.abs(dequantize_weight(qweight, scales, kind).numpy().astype(np.float64))
    magnitude = w_abs.copy()
    if kind == "weight_only_int4":
        magnitude += 8 * np.repeat(scales.numpy().astype(np.float64), INT4_GROUP, axis=1)[:, : magnitude.shape[1]]
    half = _activation_rounding(x, kind, level)
    return half @ w_abs.T + 2e-6 * (np.abs(x.astype(np.float64)) + half) @ magnitude.T + 1e-6


@pytest.mark.parametrize("kind", WEIGHT_KINDS)
@pytest.mark.parametrize("m", [1, 3, 17])
def test_linear_and_embedding_fallback(kind, m, monkeypatch):
    monkeypatch.setattr(weight_only, "weight_only_ops_available", lambda: False)
    n, k = 37, 300
    rng = np.random.default_rng(1)
    w = _weight(n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    qweight, scales = quantize_weight(paddle.to_tensor(w), kind)
    w_hat = dequantize_weight(qweight, scales, kind).numpy().astype(np.float64)
    got = weight_only_linear(paddle.to_tensor(x).reshape([1, m, k]), qweight, scales, paddle.to_tensor(bias), kind)
    assert got.shape == [1, m, n]
    np.testing.assert_allclose(got.numpy()[0], x.astype(np.float64) @ w_hat.T + bias, atol=2e-5, rtol=1e-5)
    ids = np.array([[0, 36, 1], [5, 5, 2]], np.int64)
    rows = weight_only_embedding(paddle.to_tensor(ids), qweight, scales, kind)
    np.testing.assert_array_equal(rows.numpy(), w_hat[ids].astype(np.float32))


def test_bad_inputs_name_the_problem():
    w = paddle.to_tensor(_weight(4, 256))
    with pytest.raises(ValueError, match="is not one of"):
        quantize_weight(w, "int3")
    with pytest.raises(ValueError, match="in = 255 must be even"):
        quantize_weight(w[:, :255], "weight_only_int4")
    qweight, scales = quantize_weight(w, "weight_only_int4")
    with pytest.raises(ValueError, match=r"scales must be float32 \[4, 2\]"):
        dequantize_weight(qweight, scales[:, :1], "weight_only_int4")
    with pytest.raises(ValueError, match=r"x must be float32 \[\.\.\., 256\]"):
        weight_only_linear(paddle.zeros([2, 128]), qweight, scales, None, "weight_only_int4")


# in = 300: not a multiple of 128, 32 or 16 (int4: a 44-input last group); out = 37 and 6: not
# multiples of the 4-row tiles or the 32-row tasks.
@pytest.mark.parametrize("kind", WEIGHT_KINDS)
@pytest.mark.parametrize("n, k", [(37, 300), (6, 2050), (5, 192)])  # 192: an int4 group of one 32-byte chunk
def test_kernels_match_float64(cpu_level, kind, n, k):
    assert weight_only.weight_only_ops_available()
    rng = np.random.default_rng(2)
    qweight, scales = quantize_weight(paddle.to_tensor(_weight(n, k)), kind)
    w_hat = dequantize_weight(qweight, scales, kind).numpy().astype(np.float64)
    bias = rng.standard_normal(n).astype(np.float32)
    for m in (1, 3, 6, 17, KERNEL_MAX_ROWS + 1):  # 6: one wide tile (bfloat16, AVX-512); 17: four 4-row blocks and one row
        x = rng.standard_normal((m, k)).astype(np.float32)
        want = x.astype(np.float64) @ w_hat.T + bias
        bound = _kernel_error_bound(x, qweight, scales, kind, cpu_level)
        got = get_ops().qwen25vl_weight_only_linear(paddle.to_tensor(x), qweight, scales, paddle.to_tensor(bias))
        assert np.all(np.abs(got.numpy() - want) <= bound), (m, np.abs(got.numpy() - want).max())
        wrapped = weight_only_linear(paddle.to_tensor(x)[None], qweight, scales, paddle.to_tensor(bias), kind)
        assert np.all(np.abs(wrapped.numpy()[0] - want) <= bound), m
    tiles = weight_only.dequantized_matmul(paddle.to_tensor(x), qweight, scales, paddle.to_tensor(bias), kind)
    assert np.all(np.abs(tiles.numpy() - want) <= _kernel_error_bound(x, qweight, scales, kind, "baseline"))
    ids = np.array([[n - 1, 0], [2, 2]], np.int64)
    rows = weight_only_embedding(paddle.to_tensor(ids), qweight, scales, kind)
    np.testing.assert_array_equal(rows.numpy(), w_hat[ids].astype(np.float32))


@pytest.mark.parametrize("kind", WEIGHT_KINDS)
def test_a_rows_result_does_not_depend_on_the_other_rows(cpu_level, kind):
    # The serving engine's batched answers equal lone ones only if a row's product is the
    # same bits in any batch: tiles of 1-4 activation rows, bfloat16's 5-8-row tiles on AVX-512
    # and the lone row alike.
    # k = 2048: the decoder's width; n = 37: ragged weight tiles and a second 32-row task.
    rng = np.random.default_rng(3)
    qweight, scales = quantize_weight(paddle.to_tensor(_weight(37, 2048)), kind)
    x = rng.standard_normal((21, 2048)).astype(np.float32)
    alone = np.concatenate([get_ops().qwen25vl_weight_only_linear(paddle.to_tensor(x[i:i + 1]), qweight, scales, None)
                            .numpy() for i in range(len(x))])
    for m in (2, 4, 5, 8, 13, 21):
        together = get_ops().qwen25vl_weight_only_linear(paddle.to_tensor(x[:m]), qweight, scales, None).numpy()
        np.testing.assert_array_equal(together, alone[:m], err_msg=f"M = {m}")


@pytest.mark.parametrize("kind", WEIGHT_KINDS)
def test_large_m_takes_the_dequantized_matmul(monkeypatch, kind):
    calls = []
    monkeypatch.setattr(weight_only, "dequantized_matmul", lambda *args: calls.append(args[0].shape) or args[0][:, :4])
    qweight, scales = quantize_weight(paddle.to_tensor(_weight(4, 64)), kind)
    weight_only_linear(paddle.ones([2, KERNEL_MAX_ROWS // 2, 64]), qweight, scales, None, kind)
    assert calls == []  # up to KERNEL_MAX_ROWS rows: the kernel
    # past the activations a bfloat16 kernel keeps in cache: dequantised tiles at every level
    rows = 2 * (weight_only.BF16_AVX512_MAX_ACTIVATIONS // 64)
    weight_only_linear(paddle.ones([2, rows // 2, 64]), qweight, scales, None, kind)
    assert calls == [[rows, 64]]


def test_bfloat16_reads_directly_past_the_row_limit_on_avx512_only(monkeypatch):
    for isa, direct in (("avx512", True), ("avx2", False), ("baseline", False)):
        monkeypatch.setattr(weight_only, "cpu_isa", lambda isa=isa: isa)
        assert weight_only.kernel_reads_directly(512, 2048, "bfloat16") is direct
        assert not weight_only.kernel_reads_directly(512, 2048, "weight_only_int8")
        assert weight_only.kernel_reads_directly(KERNEL_MAX_ROWS, 2048, "weight_only_int4")


def test_kernel_rejects_an_out_of_range_row():
    qweight, scales = quantize_weight(paddle.to_tensor(_weight(4, 64)), "weight_only_int8")
    with pytest.raises(Exception, match=r"row id 4 is outside \[0, 4\)"):
        weight_only_embedding(paddle.to_tensor([4]), qweight, scales, "weight_only_int8")
