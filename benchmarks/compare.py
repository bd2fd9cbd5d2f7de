"""Compare this library with transformers 4.51.3 and PaddleFormers on Qwen2.5-VL inference (CPU).

Runs the same inputs -- a 672x672 image with a prompt, and a 16-frame 336x336 video at fps 2
-- through each implementation, each (implementation, input) in a fresh subprocess so its
peak RSS is its own, with the same CPU thread count. Measures preprocessing, the vision
tower, prefill (time to first token), decode tokens/s and peak RSS; in the same run it
measures the machine's streaming read bandwidth and fp32 GEMM throughput, and reports
prefill as a fraction of GEMM peak and decode as a fraction of the bandwidth bound
(formulas in benchmarks/README.md). It also checks that the vision tower's peak memory
grows linearly with the number of patches.

Precisions (issue 20): ``--pm_precisions float32 bfloat16 weight_only_int8 weight_only_int4``
runs this library with each weight precision, ``--hf_dtypes float32 bfloat16`` transformers in
each dtype, and ``--impls ... llamacpp`` llama.cpp (llama-cpp-python, benchmarks/requirements.txt)
on the same decoder as GGUF ``--gguf_types F16 Q8_0 Q4_0``; every precision's top-1 agreement
with this library's float32 greedy tokens is measured by teacher forcing (``--teacher_steps``).

Checkpoints are random (seeded), in real Qwen2.5-VL 3B shapes, saved by transformers and
cached under ``~/.cache/paddlemix_qwen25vl/bench/`` (``--cache_dir``):
  quick (default)  3B widths, 4 decoder layers, 8 vision blocks (full attention in 3 and 7)
  full (--full)    the whole 3B model (written shard by shard)
  tiny             a toy model for the harness's own test

Outputs: benchmarks/results/compare.json, compare.md and compare.png (``--out_prefix``).

Usage:
  python benchmarks/compare.py [--threads N] [--full] [--paddleformers_python /tmp/pf_venv/bin/python]
  python benchmarks/compare.py --impls paddlemix transformers llamacpp --pm_attn flash_attention_2 --hf_attn sdpa \
      --pm_precisions float32 bfloat16 weight_only_int8 weight_only_int4 --hf_dtypes float32 bfloat16 \
      --media image --memory_sizes --out_prefix benchmarks/results/compare_precisions

This file is also the worker (``--worker JSON``), run by the interpreter of the
implementation it measures; the harness package next to it (benchmarks/harness/) imports
only the standard library at module level, so PaddleFormers' venv, which lacks torch and
this package, can run it.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence

from harness.options import parse_args
from harness.orchestrate import compare
from harness.worker import worker_main


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The comparison (reports written, results returned), or one worker task with ``--worker``."""
    args = parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return {}
    return compare(args)


if __name__ == "__main__":
    main()
