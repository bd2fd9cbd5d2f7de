"""The vision tower (real Qwen2.5-VL shapes: 32 blocks, 1280 wide, 16 heads) on CPU with each
attention implementation: the custom varlen operator (``flash_attention_2``), ``sdpa`` and
``eager``. Reports time and peak memory per input, and how peak memory grows with the number
of patches. Each run is a fresh subprocess so that its peak RSS is its own.

    python benchmarks/bench_vision_tower.py                       # 1344x1344 image and 16 video frames
    python benchmarks/bench_vision_tower.py --depth 8 --sizes 336 672 1008 1344

Writes ``benchmarks/results/vision_tower.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Dict, List

from harness.common import RESULTS_DIR, print_result, run_worker, status_kib, timed

IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")


def worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Build the tower, run it once to warm up, then time ``repeats`` runs; peak memory above the model's."""
    import paddle

    from paddlemix_qwen25vl import config_preset, set_num_threads
    from paddlemix_qwen25vl.ops import build_ops
    from paddlemix_qwen25vl.vision import Qwen2_5_VisionTransformer

    set_num_threads(spec["threads"])
    if spec["impl"] == "flash_attention_2":
        build_ops()
    vision = config_preset("3B").vision_config
    vision.depth = spec["depth"]
    vision.fullatt_block_indexes = [i for i in vision.fullatt_block_indexes if i < spec["depth"]] or [spec["depth"] - 1]
    tower = Qwen2_5_VisionTransformer(vision, spec["impl"])
    tower.eval()
    t, h, w = spec["grid"]
    pixels = paddle.randn([t * h * w, 1176])
    grid = paddle.to_tensor([[t, h, w]])
    baseline = status_kib("VmHWM")
    with paddle.no_grad():
        tower(pixels, grid).numpy()  # warm-up
        times = timed(lambda: tower(pixels, grid).numpy(), spec["repeats"])
    return {"seconds": min(times), "extra_peak_mib": (status_kib("VmHWM") - baseline) / 1024, "patches": t * h * w}


def run(spec: Dict[str, Any]) -> Dict[str, Any]:
    """``worker(spec)`` in a fresh interpreter; an error keeps the last line of its stderr."""
    result = run_worker(spec, script=Path(__file__).resolve())
    if "error" in result:
        return {"error": result["error"].strip().splitlines()[-1] if result["error"].strip() else "failed"}
    return result


def estimated_eager_mib(grid: List[int], heads: int = 16) -> float:
    """Eager attention materialises float32 scores for the largest full-attention frame (x2 for softmax)."""
    _, h, w = grid
    return 2 * heads * (h * w) ** 2 * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, default=32, help="vision blocks (32 in the released models)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1344], help="square image sides (multiples of 28)")
    parser.add_argument("--video_frames", type=int, default=16, help="0 to skip the video input")
    parser.add_argument("--video_size", type=int, default=448)
    parser.add_argument("--eager_limit_mib", type=float, default=8192, help="skip eager runs estimated above this")
    args = parser.parse_args()
    if args.worker:
        print_result(worker(json.loads(args.worker)))
        return
    from tqdm.auto import tqdm

    inputs = {f"image {s}x{s}": [1, s // 14, s // 14] for s in args.sizes}
    if args.video_frames:
        side = args.video_size // 14
        inputs[f"video {args.video_frames}x{args.video_size}x{args.video_size}"] = [args.video_frames // 2, side, side]
    rows = []
    cases = [(name, grid, impl) for name, grid in inputs.items() for impl in IMPLEMENTATIONS]
    for name, grid, impl in tqdm(cases, desc="vision tower runs"):
        if impl == "eager" and estimated_eager_mib(grid) > args.eager_limit_mib:
            rows.append({"input": name, "impl": impl, "skipped": f"eager scores estimated at {estimated_eager_mib(grid):.0f} MiB"})
            continue
        spec = {"impl": impl, "grid": grid, "depth": args.depth, "threads": args.threads, "repeats": args.repeats}
        rows.append({"input": name, "impl": impl, "grid": grid, **run(spec)})
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report = {"depth": args.depth, "threads": args.threads, "rows": rows}
    (RESULTS_DIR / "vision_tower.json").write_text(json.dumps(report, indent=2))
    lines = [f"Vision tower, {args.depth} blocks, {args.threads} threads, float32 (best of {args.repeats})", "",
             "| input | patches | implementation | seconds | extra peak MiB |", "|---|---:|---|---:|---:|"]
    for row in rows:
        if "seconds" in row:
            lines.append(f"| {row['input']} | {row['patches']} | {row['impl']} | {row['seconds']:.2f} | {row['extra_peak_mib']:.0f} |")
        else:
            lines.append(f"| {row['input']} | | {row['impl']} | {row.get('skipped') or row.get('error')} | |")
    (RESULTS_DIR / "vision_tower.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
