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
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]

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


def _read_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run_one(case: str, method: str, mode: str, reps: int) -> dict:
    """Time one configuration in this process; returns seconds and extra peak memory."""
    import numpy as np
    import paddle
    import paddle.nn.functional as F

    from paddlemix_qwen25vl.ops import build_ops, flash_attn_varlen_func

    lengths, heads, kv_heads, dim, causal = CASES[case]
    build_ops()
    rng = np.random.default_rng(0)
    total = sum(lengths)
    cu = paddle.to_tensor(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    q = paddle.to_tensor(rng.standard_normal((total, heads, dim), dtype=np.float32))
    k = paddle.to_tensor(rng.standard_normal((total, kv_heads, dim), dtype=np.float32))
    v = paddle.to_tensor(rng.standard_normal((total, kv_heads, dim), dtype=np.float32))
    backward = mode == "fwd+bwd"
    for t in (q, k, v):
        t.stop_gradient = not backward
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(dim)

    def attend_op() -> paddle.Tensor:
        return flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), causal=causal)

    def attend_sdpa() -> paddle.Tensor:
        kk = k.repeat_interleave(group, axis=1) if group > 1 else k
        vv = v.repeat_interleave(group, axis=1) if group > 1 else v
        if len(set(lengths)) == 1:  # equal segments: one batched call, [B, S, H, D]
            shape = [len(lengths), lengths[0], -1, dim]
            out = F.scaled_dot_product_attention(
                q.reshape(shape), kk.reshape(shape), vv.reshape(shape), is_causal=causal
            )
            return out.reshape([total, heads, dim])
        outs, start = [], 0
        for n in lengths:
            sl = slice(start, start + n)
            outs.append(F.scaled_dot_product_attention(
                q[sl].unsqueeze(0), kk[sl].unsqueeze(0), vv[sl].unsqueeze(0), is_causal=causal
            )[0])
            start += n
        return paddle.concat(outs, axis=0)

    if method == "eager":
        segment = np.repeat(np.arange(len(lengths)), lengths)
        allowed = segment[:, None] == segment[None, :]
        if causal:
            allowed &= np.arange(total)[None, :] <= np.arange(total)[:, None]
        mask = paddle.to_tensor(np.where(allowed, 0.0, -np.inf).astype(np.float32))

    def attend_eager() -> paddle.Tensor:
        kk = k.repeat_interleave(group, axis=1) if group > 1 else k
        vv = v.repeat_interleave(group, axis=1) if group > 1 else v
        scores = paddle.matmul(q.transpose([1, 0, 2]), kk.transpose([1, 0, 2]), transpose_y=True)
        probs = F.softmax(scores * scale + mask, axis=-1)  # [heads, T, T]
        return paddle.matmul(probs, vv.transpose([1, 0, 2])).transpose([1, 0, 2])

    attend = {"op": attend_op, "sdpa": attend_sdpa, "eager": attend_eager}[method]
    grad_out = paddle.ones([total, heads, dim])

    def step() -> None:
        out = attend()
        if backward:
            paddle.grad([out], [q, k, v], [grad_out])
        else:
            out.numpy()  # make sure the work is done

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    rss_before = _read_status_kib("VmRSS")
    times = []
    for _ in range(reps + 1):  # the first call warms up allocators and caches
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _read_status_kib("VmHWM")
    timed = times[1:] if len(times) > 1 else times
    return {
        "seconds_median": statistics.median(timed),
        "seconds_min": min(timed),
        "extra_peak_mib": (peak - rss_before) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up")
    parser.add_argument("--max-dense-gib", type=float, default=8.0,
                        help="skip eager/sdpa when their estimated dense peak is larger")
    parser.add_argument("--quick", action="store_true", help="only the small cases")
    parser.add_argument("--run-one", nargs=3, metavar=("CASE", "METHOD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run_one:
        print(json.dumps(run_one(*args.run_one, reps=args.reps)))
        return

    from tqdm import tqdm

    from paddlemix_qwen25vl.ops import build_ops

    build_ops()  # compile once here, so the timed subprocesses only load it
    cases = QUICK_CASES if args.quick else list(CASES)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    jobs = [(c, m, mode) for c in cases for mode in MODES for m in METHODS]
    results = []
    for case, method, mode in tqdm(jobs, desc="attention benchmark"):
        lengths, heads, kv_heads, dim, causal = CASES[case]
        row = {"case": case, "method": method, "mode": mode, "tokens": sum(lengths),
               "segments": len(lengths), "heads": heads, "kv_heads": kv_heads,
               "head_dim": dim, "causal": causal}
        need = dense_peak_gib(lengths, heads, method, mode)
        if need > args.max_dense_gib:
            row["skipped"] = f"dense scores need ~{need:.0f} GiB > --max-dense-gib {args.max_dense_gib:g}"
        else:
            proc = subprocess.run(
                [sys.executable, __file__, "--run-one", case, method, mode, "--reps", str(args.reps)],
                capture_output=True, text=True, env=env,
            )
            if proc.returncode == 0:
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                row["skipped"] = "failed: " + proc.stderr.strip().splitlines()[-1][:200]
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
