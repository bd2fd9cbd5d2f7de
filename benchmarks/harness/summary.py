"""From measured rows to the report's numbers: FLOP/s and fractions of the machine's limits
per row, each library's fastest attention, and the target verdicts (issue 8 on the float32
rows, issue 20 on the other precisions)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .counts import decode_bytes_per_token, kv_cache_bytes, prefill_flops

# Targets: (key, description, threshold, True when higher is better).
TARGETS = (
    ("prefill_vs_transformers", "prefill time / transformers'", 0.75, False),
    ("prefill_frac_gemm", "prefill FLOP/s / fp32 GEMM peak", 0.50, True),
    ("decode_vs_transformers", "decode tok/s / transformers'", 1.10, True),
    ("decode_frac_bound", "decode tok/s / bandwidth bound", 0.85, True),
    ("prefill_vs_paddleformers", "prefill time / PaddleFormers'", 1.00, False),
    ("decode_vs_paddleformers", "decode tok/s / PaddleFormers'", 1.00, True),
)
# Issue 20: (precision, metric, baseline (impl, precision) or None, threshold, True when higher
# is better); a ratio to the baseline's metric, or the metric itself without one.
PRECISION_TARGETS = (
    ("bfloat16", "decode_tok_s", ("transformers", "float32"), 1.8, True),
    ("bfloat16", "decode_frac_bound", None, 0.85, True),
    ("bfloat16", "prefill_s", ("paddlemix", "float32"), 1.1, False),
    ("bfloat16", "peak_rss_mib", ("paddlemix", "float32"), 0.6, False),
    ("weight_only_int8", "decode_tok_s", ("transformers", "float32"), 3.0, True),
    ("weight_only_int8", "decode_tok_s", ("llamacpp", "Q8_0"), 1.0, True),
    ("weight_only_int8", "top1_agreement", None, 0.99, True),
    ("weight_only_int4", "decode_tok_s", ("transformers", "float32"), 4.5, True),
    ("weight_only_int4", "decode_tok_s", ("llamacpp", "Q4_0"), 1.0, True),
    ("weight_only_int4", "top1_agreement", None, 0.95, True),
)
# Vision memory is "linear" when the extra peak per added patch at the largest size is at
# most this multiple of that at the smallest (quadratic attention buffers give far more).
LINEAR_SLOPE_TOLERANCE = 1.25


def fastest(rows: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The row whose whole generate call (prefill and every new token) was quickest."""
    return min(rows, key=lambda r: r["generate_s"]) if rows else None


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def precision_of(row: Dict[str, Any]) -> str:
    """The row's weight precision (issue 8's rows are float32; llama.cpp's are GGUF types)."""
    return row.get("precision", "float32")


def _bytes_per_token(row: Dict[str, Any], config: Dict[str, Any]) -> Dict[str, float]:
    """Bytes one decode step reads at the mean context: llama.cpp's from its GGUF file, the
    others' from the precision of their weights (transformers' KV cache is in its dtype)."""
    context = row["prompt_tokens"] + row["new_tokens"] / 2
    if "weight_bytes" in row:
        kv = kv_cache_bytes(config, context, row["kv_bytes"])
        return {"weights": float(row["weight_bytes"]), "kv_cache": kv, "total": row["weight_bytes"] + kv}
    precision = precision_of(row)
    kv_bytes = 2 if row["impl"] == "transformers" and precision == "bfloat16" else 4
    return decode_bytes_per_token(config, context, precision, kv_bytes)


def _add_rates(row: Dict[str, Any], config: Dict[str, Any], gemm: Optional[float], bandwidth: Optional[float]) -> None:
    """The row's FLOP and byte counts, prefill FLOP/s against the GEMM peak, decode against the bound."""
    flops = prefill_flops(row["grids"], row["prompt_tokens"], config)
    nbytes = _bytes_per_token(row, config)
    row["prefill_flops"] = flops
    row["decode_bytes_per_token"] = nbytes
    row["prefill_gflop_s"] = flops["total"] / row["prefill_s"] / 1e9
    row["prefill_frac_gemm"] = _ratio(row["prefill_gflop_s"], gemm)
    # The machine is shared and its bandwidth moves within minutes: the bound is the higher of the
    # run's probe and the read this row's worker measured right after its decode.
    bandwidth = max(filter(None, (bandwidth, row.get("read_gb_s_after_decode"))), default=None)
    row["bound_gb_s"] = bandwidth
    row["decode_bound_tok_s"] = bandwidth * 1e9 / nbytes["total"] if bandwidth else None
    row["decode_frac_bound"] = _ratio(row["decode_tok_s"], row["decode_bound_tok_s"])


def _verdict(key: str, value: Optional[float], threshold: float, higher: bool) -> str:
    if value is None:
        return "n/a"
    if key.endswith("paddleformers"):  # "ahead of" means strictly better
        return "PASS" if (value > threshold if higher else value < threshold) else "FAIL"
    return "PASS" if (value >= threshold if higher else value <= threshold) else "FAIL"


def _media_targets(media: str, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The targets on one input (float32 rows), each library with its fastest attention; marks
    the fastest rows and how many greedy tokens agree with transformers' (a check that weights
    load alike)."""
    rows = [r for r in rows if precision_of(r) == "float32"]
    ours_rows = [r for r in rows if r["impl"] == "paddlemix"]
    hf = [r for r in rows if r["impl"] == "transformers"]
    ours, hf_best = fastest(ours_rows), fastest(hf)
    pf = next((r for r in rows if r["impl"] == "paddleformers"), None)
    for row in ours_rows + hf:  # summarize runs again after every new row: the fastest may change
        row["fastest"] = row is ours or row is hf_best
    if hf_best:
        for row in rows:
            row["tokens_agree_with_transformers"] = _common_prefix(row["tokens"], hf_best["tokens"])
    values = {
        "prefill_vs_transformers": _ratio(ours and ours["prefill_s"], hf_best and hf_best["prefill_s"]),
        "prefill_frac_gemm": ours and ours["prefill_frac_gemm"],
        "decode_vs_transformers": _ratio(ours and ours["decode_tok_s"], hf_best and hf_best["decode_tok_s"]),
        "decode_frac_bound": ours and ours["decode_frac_bound"],
        "prefill_vs_paddleformers": _ratio(ours and ours["prefill_s"], pf and pf["prefill_s"]),
        "decode_vs_paddleformers": _ratio(ours and ours["decode_tok_s"], pf and pf["decode_tok_s"]),
    }
    return [{"media": media, "target": key, "description": text, "value": values[key], "threshold": threshold,
             "higher_is_better": higher, "verdict": _verdict(key, values[key], threshold, higher),
             "ours": ours and ours["label"],
             "baseline": hf_best["label"] if hf_best and "transformers" in key else None}
            for key, text, threshold, higher in TARGETS]


def _precision_targets(media: str, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Issue 20's targets on one input, for the precisions that were run (each library's fastest attention)."""
    def pick(impl: str, precision: str) -> Optional[Dict[str, Any]]:
        return fastest([r for r in rows if r["impl"] == impl and precision_of(r) == precision])

    targets = []
    for precision, metric, baseline, threshold, higher in PRECISION_TARGETS:
        ours = pick("paddlemix", precision)
        if ours is None:
            continue
        base = pick(*baseline) if baseline else None
        value = _ratio(ours.get(metric), base and base.get(metric)) if baseline else ours.get(metric)
        against = f" / {baseline[0]} {baseline[1]}'s" if baseline else ""
        targets.append({"media": media, "target": f"{precision}_{metric}" + (f"_vs_{baseline[0]}_{baseline[1]}" if baseline else ""),
                        "description": f"{precision} {metric}{against}", "value": value, "threshold": threshold,
                        "higher_is_better": higher, "verdict": _verdict("", value, threshold, higher),
                        "ours": ours["label"], "baseline": base["label"] if base else None})
    return targets


def vision_memory_linearity(points: Sequence[Dict[str, Any]]) -> Tuple[str, Optional[float]]:
    """("PASS"/"FAIL"/"n/a", growth): growth is the extra peak per added patch between the two
    largest sizes over that between the two smallest (1 when linear, > 2 when quadratic)."""
    pts = sorted((p["patches"], p["extra_peak_mib"]) for p in points if "extra_peak_mib" in p)
    if len(pts) < 3:
        return "n/a", None
    first = (pts[1][1] - pts[0][1]) / (pts[1][0] - pts[0][0])
    last = (pts[-1][1] - pts[-2][1]) / (pts[-1][0] - pts[-2][0])
    if first <= 0:
        return "n/a", None
    growth = last / first
    return ("PASS" if growth <= LINEAR_SLOPE_TOLERANCE else "FAIL"), growth


def _memory_target(label: str, points: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Linearity of one library's vision memory; only this library's verdict counts (others in parentheses)."""
    verdict, growth = vision_memory_linearity(points)
    return {"media": "image", "target": "vision_memory_linear",
            "description": f"vision peak memory linear in patches ({label}): slope growth", "value": growth,
            "threshold": LINEAR_SLOPE_TOLERANCE, "higher_is_better": False,
            "verdict": verdict if label.startswith("paddlemix") else f"({verdict})", "baseline": None}


def summarize(results: Dict[str, Any]) -> Dict[str, Any]:
    """Add FLOP/byte counts, fractions of peak and bound, ratios and the target verdicts.

    ``results`` holds ``config`` (transformers dict), ``machine``, ``rows`` (one per
    implementation and input, each with ``impl``, ``label``, ``media`` and the timing) and
    ``vision_memory`` (implementation label -> list of {patches, extra_peak_mib}).
    """
    machine = results["machine"]
    bandwidth = max(machine["bandwidth_gb_s"].values()) if machine.get("bandwidth_gb_s") else None
    measured = [r for r in results["rows"] if "error" not in r and "prefill_s" in r]
    for row in measured:
        _add_rates(row, results["config"], machine.get("gemm_gflop_s"), bandwidth)
    targets = []
    for media in sorted({r["media"] for r in results["rows"]}):
        media_rows = [r for r in measured if r["media"] == media]
        targets += _media_targets(media, media_rows) + _precision_targets(media, media_rows)
    targets += [_memory_target(label, points) for label, points in results.get("vision_memory", {}).items()]
    results["targets"] = targets
    return results
