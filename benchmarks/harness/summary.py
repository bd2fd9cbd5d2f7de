"""From measured rows to the report's numbers: FLOP/s and fractions of the machine's limits
per row, each library's fastest attention, and the target verdicts (issue 8)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .counts import decode_bytes_per_token, prefill_flops

# Targets: (key, description, threshold, True when higher is better).
TARGETS = (
    ("prefill_vs_transformers", "prefill time / transformers'", 0.75, False),
    ("prefill_frac_gemm", "prefill FLOP/s / fp32 GEMM peak", 0.50, True),
    ("decode_vs_transformers", "decode tok/s / transformers'", 1.10, True),
    ("decode_frac_bound", "decode tok/s / bandwidth bound", 0.85, True),
    ("prefill_vs_paddleformers", "prefill time / PaddleFormers'", 1.00, False),
    ("decode_vs_paddleformers", "decode tok/s / PaddleFormers'", 1.00, True),
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


def _add_rates(row: Dict[str, Any], config: Dict[str, Any], gemm: Optional[float], bandwidth: Optional[float]) -> None:
    """The row's FLOP and byte counts, prefill FLOP/s against the GEMM peak, decode against the bound."""
    flops = prefill_flops(row["grids"], row["prompt_tokens"], config)
    nbytes = decode_bytes_per_token(config, row["prompt_tokens"] + row["new_tokens"] / 2)
    row["prefill_flops"] = flops
    row["decode_bytes_per_token"] = nbytes
    row["prefill_gflop_s"] = flops["total"] / row["prefill_s"] / 1e9
    row["prefill_frac_gemm"] = _ratio(row["prefill_gflop_s"], gemm)
    row["decode_bound_tok_s"] = bandwidth * 1e9 / nbytes["total"] if bandwidth else None
    row["decode_frac_bound"] = _ratio(row["decode_tok_s"], row["decode_bound_tok_s"])


def _verdict(key: str, value: Optional[float], threshold: float, higher: bool) -> str:
    if value is None:
        return "n/a"
    if key.endswith("paddleformers"):  # "ahead of" means strictly better
        return "PASS" if (value > threshold if higher else value < threshold) else "FAIL"
    return "PASS" if (value >= threshold if higher else value <= threshold) else "FAIL"


def _media_targets(media: str, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The targets on one input, each library with its fastest attention; marks the fastest
    rows and how many greedy tokens agree with transformers' (a check that weights load alike)."""
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
        targets += _media_targets(media, [r for r in measured if r["media"] == media])
    targets += [_memory_target(label, points) for label, points in results.get("vision_memory", {}).items()]
    results["targets"] = targets
    return results
