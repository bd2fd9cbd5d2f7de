"""Weight-only linear on the CPU: GB/s of the compiled kernels for each weight kind against a
float32 paddle.matmul of the same shape, on the quick model's decoder shapes.

Decode (M activation rows, default 1 and 4): ``weight_only_linear`` reading bfloat16 / int8 /
int4 weights against ``paddle.matmul(x, W)`` with the float32 weight in nn.Linear's [in, out]
layout (what the float32 model runs). GB/s counts the weight bytes read (qweight + scales).
Each method cycles through enough copies of its weight to exceed the last-level cache, so the
weights stream from memory as in a model.

Prefill (``--prefill``): the kernel against dequantise-then-matmul (the wrapper's large-M path)
and float32 matmul for growing M on decoder and vision shapes, to place the wrapper's routing
(``kernel_reads_directly``: KERNEL_MAX_ROWS, BF16_AVX512_MAX_ACTIVATIONS). Run it once more with
``PADDLEMIX_CPU_ISA=avx2 ... --output results/weight_only_avx2.json`` for the AVX2 kernels.

Results: benchmarks/results/weight_only.json. The machine is shared: numbers move with other
load, the JSON records the thread count, clock, load average and CPU. ``--threads 1`` times the
calling thread's CPU time, which that load inflates least (2-thread wall time on a loaded
2-core machine measures the scheduler: a preempted OpenMP thread holds the call for a time slice).

Usage: python benchmarks/bench_weight_only.py [--threads 2] [--rows 1,4] [--quick] [--prefill] [--output PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

from harness.common import RESULTS_DIR

# name: (out N, in K) of the output-major weight
SHAPES = {
    "q_o_proj_2048x2048": (2048, 2048),
    "kv_proj_256x2048": (256, 2048),
    "gate_up_11008x2048": (11008, 2048),
    "down_2048x11008": (2048, 11008),
    "lm_head_151936x2048": (151936, 2048),
    "vision_up_3420x1280": (3420, 1280),
    "vision_down_1280x3420": (1280, 3420),
}
QUICK_SHAPES = ["q_o_proj_2048x2048", "kv_proj_256x2048", "gate_up_11008x2048", "down_2048x11008"]
PREFILL_SHAPES = ["q_o_proj_2048x2048", "gate_up_11008x2048", "down_2048x11008", "vision_up_3420x1280",
                  "vision_down_1280x3420"]
PREFILL_ROWS = [1, 8, 32, 128, 256, 512, 1024]
STREAM_BYTES = 96 << 20  # each method's weight copies together: 3x this CPU's 32 MiB L3


# With one thread every kernel runs on the calling thread, so its CPU time is what the call
# costs, whatever else the shared machine runs (wall time then also counts preemption); with
# more threads only wall time sees all of them.
CLOCK = {"seconds": time.perf_counter}


def median_seconds(calls: List[Callable[[], object]], repeats: int) -> float:
    """Median seconds per call, cycling through ``calls`` (one per weight copy) after a warm-up."""
    clock = CLOCK["seconds"]
    for call in calls:
        call()
    times = []
    for i in range(repeats):
        start = clock()
        calls[i % len(calls)]()
        times.append(clock() - start)
    return statistics.median(times)


def copies(nbytes: int) -> int:
    return max(1, -(-STREAM_BYTES // nbytes))


def bench_shape(n: int, k: int, rows: List[int], repeats: int) -> Dict[str, Dict[str, float]]:
    """{f"M={m}": {kind: seconds, kind + "_gb_s": ..., kind + "_speedup": ...}} for one weight shape."""
    import paddle

    from paddlemix_qwen25vl.ops.weight_only import WEIGHT_KINDS, quantize_weight, weight_only_linear

    weight = paddle.randn([n, k], dtype="float32") * 0.02
    fp32 = [weight.t().contiguous() for _ in range(copies(4 * n * k))]  # nn.Linear layout [K, N]
    quantized = {}
    for kind in WEIGHT_KINDS:
        qweight, scales = quantize_weight(weight, kind)
        nbytes = qweight.numel().item() * qweight.element_size() + (0 if scales is None else 4 * scales.numel().item())
        quantized[kind] = (nbytes, [(qweight.clone(), None if scales is None else scales.clone())
                                    for _ in range(copies(nbytes))])
    del weight
    result = {}
    for m in rows:
        x = paddle.randn([m, k], dtype="float32")
        row = {"float32": median_seconds([lambda w=w: paddle.matmul(x, w) for w in fp32], repeats)}
        row["float32_gb_s"] = 4 * n * k / row["float32"] / 1e9
        for kind, (nbytes, weights) in quantized.items():
            calls = [lambda q=q, s=s: weight_only_linear(x, q, s, None, kind) for q, s in weights]
            row[kind] = median_seconds(calls, repeats)
            row[f"{kind}_gb_s"] = nbytes / row[kind] / 1e9
            row[f"{kind}_speedup"] = row["float32"] / row[kind]
        result[f"M={m}"] = row
        print(f"  M={m}: " + ", ".join(f"{key} {value:.3g}" for key, value in row.items()), flush=True)
    return result


def bench_prefill(n: int, k: int, repeats: int) -> Dict[str, Dict[str, float]]:
    """Seconds of the GEMV kernel, dequantise + matmul and float32 matmul for PREFILL_ROWS."""
    import paddle

    from paddlemix_qwen25vl.ops import weight_only
    from paddlemix_qwen25vl.ops.loader import get_ops

    weight = paddle.randn([n, k], dtype="float32") * 0.02
    fp32 = weight.t().contiguous()
    result = {}
    for kind in weight_only.WEIGHT_KINDS:
        qweight, scales = weight_only.quantize_weight(weight, kind)
        for m in PREFILL_ROWS:
            x = paddle.randn([m, k], dtype="float32")
            row = {
                "kernel": median_seconds([lambda: get_ops().qwen25vl_weight_only_linear(x, qweight, scales, None)], repeats),
                "dequantize_matmul": median_seconds([lambda: weight_only.dequantized_matmul(x, qweight, scales, None, kind)], repeats),
                "float32": median_seconds([lambda: paddle.matmul(x, fp32)], repeats),
            }
            result[f"{kind} M={m}"] = row
            print(f"  {kind} M={m}: " + ", ".join(f"{key} {value * 1e3:.2f} ms" for key, value in row.items()), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,4", help="activation rows M of the decode runs, comma-separated")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="skip the lm_head shape")
    parser.add_argument("--prefill", action="store_true", help="also time growing M (the large-M routing)")
    parser.add_argument("--output", default=str(RESULTS_DIR / "weight_only.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # the kernels' OpenMP pool
    import paddle

    from paddlemix_qwen25vl.cpu import cpu_description, prepare_process
    from paddlemix_qwen25vl.ops import build_ops
    from paddlemix_qwen25vl.ops.weight_only import weight_only_ops_available

    prepare_process()  # as a model load does, before the first matmul
    paddle.base.core.set_num_threads(args.threads)
    build_ops()
    if not weight_only_ops_available():
        raise SystemExit("the weight-only kernels are not in the built operators: rebuild external_ops")
    rows = [int(m) for m in args.rows.split(",")]
    if args.threads == 1:
        CLOCK["seconds"] = time.thread_time
    record = {"threads": args.threads, "clock": "thread CPU time" if args.threads == 1 else "wall time",
              "cpu": cpu_description(), "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d"),
              "note": "shared machine: other jobs ran alongside", "decode": {}, "prefill": {}}
    with paddle.no_grad():
        for name in QUICK_SHAPES if args.quick else SHAPES:
            print(name, flush=True)
            record["decode"][name] = bench_shape(*SHAPES[name], rows, args.repeats)
        if args.prefill:
            for name in PREFILL_SHAPES:
                print(f"prefill {name}", flush=True)
                record["prefill"][name] = bench_prefill(*SHAPES[name], max(3, args.repeats // 10))
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
