"""Analytic work of one request: prefill FLOPs and decode bytes per token (formulas in
benchmarks/README.md), from a transformers config dict."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence


def vision_window_lengths(grid: Sequence[int], vision: Dict[str, Any]) -> List[int]:
    """Patches per attention window of one image/video (``grid`` = (t, h, w) in patches), as
    the reference ``get_window_index`` partitions them (edge windows are smaller)."""
    t, h, w = grid
    merge = vision["spatial_merge_size"]
    win = vision["window_size"] // merge // vision["patch_size"]  # merged tokens per window side
    mh, mw = h // merge, w // merge
    rows = [min(win, mh - i) for i in range(0, mh, win)]
    cols = [min(win, mw - j) for j in range(0, mw, win)]
    return [r * c * merge * merge for r in rows for c in cols] * t


def vision_flops(grids: Sequence[Sequence[int]], config: Dict[str, Any]) -> float:
    """Multiply-add FLOPs (2 per MAC) of the vision tower over ``grids``: patch embedding,
    each block's linears and attention score/value matmuls (window or full), the merger."""
    v = config["vision_config"]
    d, inter, out = v["hidden_size"], v["intermediate_size"], v["out_hidden_size"]
    patch_in = v["in_chans"] * v["temporal_patch_size"] * v["patch_size"] ** 2
    unit = v["spatial_merge_size"] ** 2
    patches = sum(t * h * w for t, h, w in grids)
    window_sq = sum(s * s for g in grids for s in vision_window_lengths(g, v))
    full_sq = sum(t * (h * w) ** 2 for t, h, w in grids)  # full attention is per temporal slice
    full_blocks = len(v["fullatt_block_indexes"])
    block_linear = 2 * (d * 3 * d + d * d + 3 * d * inter)
    flops = 2 * patch_in * d * patches + v["depth"] * block_linear * patches
    flops += 4 * d * ((v["depth"] - full_blocks) * window_sq + full_blocks * full_sq)
    flops += (patches // unit) * 2 * (unit * d * unit * d + unit * d * out)
    return float(flops)


def decoder_linear_params(config: Dict[str, Any]) -> int:
    """Weights of one decoder layer's linears (q, k, v, o, gate, up, down), without biases."""
    h, inter = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * (h // config["num_attention_heads"])
    return 2 * h * h + 2 * h * kv + 3 * h * inter


def prefill_flops(grids: Sequence[Sequence[int]], prompt_tokens: int, config: Dict[str, Any]) -> Dict[str, float]:
    """FLOPs a prefill must do: vision tower, decoder linears over every prompt token, causal
    attention, and the lm_head for the last token only (the one whose logits are sampled)."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    length = prompt_tokens
    parts = {
        "vision": vision_flops(grids, config),
        "decoder_linear": float(2 * decoder_linear_params(config) * length * layers),
        # QK^T and AV over the causal triangle: 2 matmuls x 2 FLOPs x h x L(L+1)/2
        "decoder_attention": float(2 * h * length * (length + 1) * layers),
        "lm_head_last_token": float(2 * h * vocab),
    }
    parts["total"] = sum(parts.values())
    return parts


INT4_GROUP = 128  # ops/weight_only.INT4_GROUP: int4 scales per group of this many inputs


def matrix_bytes(rows: int, cols: int, kind: str) -> float:
    """Bytes of one ``[rows = out, cols = in]`` weight stored as ``kind`` (the layouts of
    ops/weight_only.py: int8 with one float32 scale per row, int4 two per byte with one
    float32 scale per row and group of INT4_GROUP inputs)."""
    if kind == "float32":
        return 4.0 * rows * cols
    if kind == "bfloat16":
        return 2.0 * rows * cols
    if kind == "weight_only_int8":
        return float(rows * cols + 4 * rows)
    if kind == "weight_only_int4":
        return float(rows * math.ceil(cols / 2) + 4 * rows * math.ceil(cols / INT4_GROUP))
    raise ValueError(f"unknown weight kind {kind!r}")


def kv_cache_bytes(config: Dict[str, Any], context: float, kv_bytes: int) -> float:
    """Bytes of the keys and values of every layer at ``context`` tokens, ``kv_bytes`` per value."""
    kv = config["num_key_value_heads"] * (config["hidden_size"] // config["num_attention_heads"])
    return float(kv_bytes * config["num_hidden_layers"] * 2 * kv * context)


def decode_bytes_per_token(config: Dict[str, Any], context: float, kind: str = "float32",
                           kv_bytes: int = 4) -> Dict[str, float]:
    """Bytes read per decoded token: decoder linears stored as ``kind``, biases and norms in
    float32, the final norm, the lm_head (the tied embedding when tied) as ``kind``, and the KV
    cache at ``context`` tokens with ``kv_bytes`` per value."""
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    inter = config["intermediate_size"]
    kv = config["num_key_value_heads"] * (h // config["num_attention_heads"])
    # q, k, v, o, gate, up, down as [out, in]
    linears = [(h, h), (kv, h), (kv, h), (h, h), (inter, h), (inter, h), (h, inter)]
    per_layer = sum(matrix_bytes(o, i, kind) for o, i in linears) + 4.0 * ((h + 2 * kv) + 2 * h)  # + biases, norms
    parts = {
        "decoder_weights": layers * per_layer + 4.0 * h,
        "lm_head": matrix_bytes(vocab, h, kind),
        "kv_cache": kv_cache_bytes(config, context, kv_bytes),
    }
    parts["total"] = sum(parts.values())
    return parts
