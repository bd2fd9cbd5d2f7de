"""Benchmark the varlen attention operator against eager attention and paddle's sdpa (CPU).

Methods:
  op     paddlemix_qwen25vl.ops.flash_attn_varlen_func (the compiled custom operator)
  eager  one [heads, T, T] score matrix over the whole packed sequence with a materialised
         block-diagonal (and causal) mask: what a model without varlen kernels does
  sdpa   paddle.nn.functional.scaled_dot_product_attention per segment (segments of equal
         length are batched in one call)

Shapes: vision tower (16 heads, head_dim 80): windows of 64 tokens, and single
full-attention segments of 2304 and 9216 tokens; language-model training: packed causal
sequences with GQA (16 query / 2 kv heads, head_dim 128).

Every (case, method, mode) runs in its own subprocess so its peak memory can be read from
/proc/self/status (VmHWM, reset right before the timed calls through /proc/self/clear_refs);
"extra_peak_mib" is that peak minus the resident memory when it was reset (inputs already
allocated). Cases whose dense score matrices would need more than --max-dense-gib are
skipped for eager/sdpa and recorded as such. Results: benchmarks/results/attention_op.json and a plot
attention_op.png next to it (when matplotlib is installed).

Usage: python benchmarks/bench_attention_op.py [--threads 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from harness.common import RESULTS_DIR, print_result, reset_peak_rss, run_worker, status_kib, timed

# name: (segment lengths, heads, kv_heads, head_dim, causal)
CASES = {
    "vision_windows64_2304tok": ([64] * 36, 16, 16, 80, False),
    "vision_windows64_9216tok": ([64] * 144, 16, 16, 80, False),
    "vision_full_2304": ([2304], 16, 16, 80, False),
    "vision_full_9216": ([9216], 16, 16, 80, False),
    "train_causal_gqa_4x512": ([512, 700, 324, 512], 16, 2, 128, True),
    "train_causal_gqa_2x2048": ([2048, 2048], 16, 2, 128, True),
}
QUICK_CASES = ["vision_windows64_2304tok", "vision_full_2304", "train_causal_gqa_4x512"]
METHODS = ["op", "sdpa", "eager"]
MODES = ["fwd", "fwd+bwd"]


def dense_peak_gib(lengths: list[int], heads: int, method: str, mode: str) -> float:
    """Rough peak of the dense methods: float32 score matrices alive at once (scores,
    probabilities and the mask in the forward; their gradients too in the backward)."""
    if method == "eager":
        total = sum(lengths)
        one = heads * total * total * 4
    elif method == "sdpa":
        longest = max(lengths)
        batch = len(lengths) if len(set(lengths)) == 1 else 1
        one = batch * heads * longest * longest * 4
    else:
        return 0.0
    return one * (3 if mode == "fwd" else 5) / 2**30


def _packed_inputs(case: str, backward: bool) -> Tuple[Any, Any, Any, Any]:
    """Random q [T, heads, D], k and v [T, kv_heads, D] of the case's packed segments, and cu_seqlens [S + 1]."""
    import numpy as np
    import paddle

    lengths, heads, kv_heads, dim, _ = CASES[case]
    rng = np.random.default_rng(0)
    total = sum(lengths)
    cu = paddle.to_tensor(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    q = paddle.to_tensor(rng.standard_normal((total, heads, dim), dtype=np.float32))
    k = paddle.to_tensor(rng.standard_normal((total, kv_heads, dim), dtype=np.float32))
    v = paddle.to_tensor(rng.standard_normal((total, kv_heads, dim), dtype=np.float32))
    for t in (q, k, v):
        t.stop_gradient = not backward
    return q, k, v, cu


def _expand_kv(x: Any, group: int) -> Any:
    """[T, kv_heads, D] -> [T, kv_heads * group, D]: one kv head per query head."""
    return x.repeat_interleave(group, axis=1) if group > 1 else x


def _attend_sdpa(q: Any, k: Any, v: Any, lengths: List[int], causal: bool) -> Any:
    """paddle's sdpa per segment; segments of equal length batched in one call ([B, S, H, D])."""
    import paddle
    import paddle.nn.functional as F

    total, heads, dim = q.shape
    if len(set(lengths)) == 1:
        shape = [len(lengths), lengths[0], -1, dim]
        out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), is_causal=causal)
        return out.reshape([total, heads, dim])
    outs, start = [], 0
    for n in lengths:
        sl = slice(start, start + n)
        outs.append(F.scaled_dot_product_attention(
            q[sl].unsqueeze(0), k[sl].unsqueeze(0), v[sl].unsqueeze(0), is_causal=causal
        )[0])
        start += n
    return paddle.concat(outs, axis=0)


def _block_mask(lengths: List[int], causal: bool) -> Any:
    """[T, T] additive mask: 0 within a segment (and not in the future when causal), -inf elsewhere."""
    import numpy as np
    import paddle

    total = sum(lengths)
    segment = np.repeat(np.arange(len(lengths)), lengths)
    allowed = segment[:, None] == segment[None, :]
    if causal:
        allowed &= np.arange(total)[None, :] <= np.arange(total)[:, None]
    return paddle.to_tensor(np.where(allowed, 0.0, -np.inf).astype(np.float32))


def _attend_eager(q: Any, k: Any, v: Any, mask: Any, scale: float) -> Any:
    """One [heads, T, T] score matrix over the whole packed sequence, masked."""
    import paddle
    import paddle.nn.functional as F

    scores = paddle.matmul(q.transpose([1, 0, 2]), k.transpose([1, 0, 2]), transpose_y=True)
    probs = F.softmax(scores * scale + mask, axis=-1)  # [heads, T, T]
    return paddle.matmul(probs, v.transpose([1, 0, 2])).transpose([1, 0, 2])


def _attention(case: str, method: str, backward: bool) -> Tuple[Callable[[], Any], List[Any]]:
    """The attention call of ``method`` on the case's inputs, and the inputs (for the backward)."""
    from paddlemix_qwen25vl.ops import flash_attn_varlen_func

    lengths, heads, kv_heads, dim, causal = CASES[case]
    q, k, v, cu = _packed_inputs(case, backward)
    group = heads // kv_heads
    if method == "op":
        return lambda: flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), causal=causal), [q, k, v]
    if method == "sdpa":
        return lambda: _attend_sdpa(q, _expand_kv(k, group), _expand_kv(v, group), lengths, causal), [q, k, v]
    mask = _block_mask(lengths, causal)
    return lambda: _attend_eager(q, _expand_kv(k, group), _expand_kv(v, group), mask, 1.0 / math.sqrt(dim)), [q, k, v]


def run_one(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Time one (case, method, mode) in this process; returns seconds and extra peak memory."""
    import paddle

    from paddlemix_qwen25vl.ops import build_ops

    build_ops()
    backward = spec["mode"] == "fwd+bwd"
    attend, inputs = _attention(spec["case"], spec["method"], backward)
    grad_out = paddle.ones(inputs[0].shape)

    def step() -> None:
        out = attend()
        if backward:
            paddle.grad([out], inputs, [grad_out])
        else:
            out.numpy()  # make sure the work is done

    rss_before = reset_peak_rss()
    times = timed(step, spec["reps"] + 1)  # the first call warms up allocators and caches
    peak = status_kib("VmHWM")
    measured = times[1:] or times
    return {
        "seconds_median": statistics.median(measured),
        "seconds_min": min(measured),
        "extra_peak_mib": (peak - rss_before) / 1024,
    }


def _measure(case: str, method: str, mode: str, args: argparse.Namespace) -> Dict[str, Any]:
    """The result row of one job: its shapes, and its timing (own worker) or why it was skipped."""
    lengths, heads, kv_heads, dim, causal = CASES[case]
    row = {"case": case, "method": method, "mode": mode, "tokens": sum(lengths),
           "segments": len(lengths), "heads": heads, "kv_heads": kv_heads, "head_dim": dim, "causal": causal}
    need = dense_peak_gib(lengths, heads, method, mode)
    if need > args.max_dense_gib:
        row["skipped"] = f"dense scores need ~{need:.0f} GiB > --max-dense-gib {args.max_dense_gib:g}"
        return row
    spec = {"case": case, "method": method, "mode": mode, "reps": args.reps, "threads": args.threads}
    result = run_worker(spec, script=Path(__file__).resolve())
    if "error" in result:
        row["skipped"] = "failed: " + result["error"].strip().splitlines()[-1][:200]
    else:
        row.update(result)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="threads of every run (OMP_NUM_THREADS and MKL's)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up")
    parser.add_argument("--max-dense-gib", type=float, default=8.0,
                        help="skip eager/sdpa when their estimated dense peak is larger")
    parser.add_argument("--quick", action="store_true", help="only the small cases")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print_result(run_one(json.loads(args.worker)))
        return

    from tqdm import tqdm

    from paddlemix_qwen25vl.ops import build_ops

    build_ops()  # compile once here, so the timed subprocesses only load it
    cases = QUICK_CASES if args.quick else list(CASES)
    jobs = [(c, m, mode) for c in cases for mode in MODES for m in METHODS]
    results = []
    for case, method, mode in tqdm(jobs, desc="attention benchmark"):
        row = _measure(case, method, mode, args)
        results.append(row)
        tqdm.write(f"{case:28s} {mode:8s} {method:6s} " + (
            f"{row['seconds_median'] * 1e3:9.1f} ms  +{row['extra_peak_mib']:8.1f} MiB"
            if "seconds_median" in row else row["skipped"]))

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    meta = {"threads": args.threads, "reps": args.reps, "cpu_count": os.cpu_count(),
            "note": "CPU float32; extra_peak_mib = VmHWM - VmRSS with inputs allocated"}
    out_json = RESULTS_DIR / "attention_op.json"
    out_json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out_json}")
    plot(results, RESULTS_DIR / "attention_op.png")


def plot(results: list[dict], path: Path) -> None:
    """Grouped bars: time and extra peak memory per case and method (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    labels = sorted({(r["case"], r["mode"]) for r in results}, key=lambda x: (list(CASES).index(x[0]), x[1]))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, len(labels) * 0.9), 8), sharex=True)
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        by_label = {(r["case"], r["mode"]): r for r in results if r["method"] == method}
        xs = [j + i * width for j in range(len(labels))]
        for ax, key, scale in ((axes[0], "seconds_median", 1e3), (axes[1], "extra_peak_mib", 1.0)):
            ys = [by_label[lab][key] * scale if key in by_label.get(lab, {}) else 0 for lab in labels]
            ax.bar(xs, ys, width, label=method)
    axes[0].set_ylabel("time (ms, log)")
    axes[1].set_ylabel("extra peak RSS (MiB, log)")
    for ax in axes:
        ax.set_yscale("log")
        ax.legend()
    axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    axes[1].set_xticklabels([f"{c}\n{m}" for c, m in labels], rotation=60, ha="right", fontsize=7)
    fig.suptitle("varlen attention on CPU (missing bar = skipped: dense scores too large)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
