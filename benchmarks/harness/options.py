"""The command line of benchmarks/compare.py."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

from .checkpoints import DEFAULT_CACHE
from .common import RESULTS_DIR
from .libraries import HF_PRECISIONS, PM_PRECISIONS
from .llamacpp import GGUF_TYPES

DESCRIPTION = "Compare this library with transformers 4.51.3 and PaddleFormers on Qwen2.5-VL inference (CPU)."
IMPLS = ("paddlemix", "transformers", "paddleformers", "llamacpp")
DEFAULT_IMPLS = IMPLS[:3]  # llama.cpp runs the decoder only: asked for with --impls
HF_ATTNS = ("sdpa", "eager")
PM_ATTNS = ("sdpa", "flash_attention_2")  # flash_attention_2 on CPU: the operator of external_ops/


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (``--worker JSON`` is the worker protocol, hidden from --help)."""
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--config", choices=("tiny", "quick", "full"), default="quick")
    p.add_argument("--full", action="store_true", help="the whole 3B model (same as --config full)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (the best is reported)")
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--media", nargs="+", choices=("image", "video"), default=["image", "video"])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(DEFAULT_IMPLS),
                   help="llamacpp: llama-cpp-python's llama.cpp on the same decoder (GGUF, --gguf_types), decoder only")
    p.add_argument("--hf_attn", nargs="+", choices=HF_ATTNS, default=list(HF_ATTNS),
                   help="transformers attention implementations to run; the fastest is the baseline")
    p.add_argument("--pm_attn", nargs="+", choices=PM_ATTNS, default=list(PM_ATTNS),
                   help="this library's attention implementations to run; the fastest is measured against the targets")
    p.add_argument("--pm_precisions", nargs="+", choices=PM_PRECISIONS, default=["float32"],
                   help="this library's weight precisions; any but float32 adds the teacher-forced top-1 agreement")
    p.add_argument("--hf_dtypes", nargs="+", choices=HF_PRECISIONS, default=["float32"], help="transformers' dtypes")
    p.add_argument("--gguf_types", nargs="+", choices=GGUF_TYPES, default=list(GGUF_TYPES),
                   help="llama.cpp weight types (F16 converted, the others quantised from it by llama.cpp)")
    p.add_argument("--teacher_steps", type=int, default=64,
                   help="steps of the teacher-forced top-1 agreement with this library's float32 greedy tokens")
    p.add_argument("--image_size", type=int, default=672)
    p.add_argument("--video_frames", type=int, default=16)
    p.add_argument("--video_size", type=int, default=336)
    p.add_argument("--memory_sizes", type=int, nargs="*", default=[336, 672, 1008],
                   help="image sides for the vision-memory scaling check (empty: skip it)")
    p.add_argument("--paddleformers_repeats", type=int, default=1,
                   help="timed runs for PaddleFormers, which decodes without its KV cache (minutes per run, "
                        "benchmarks/README.md); its rates are orders of magnitude off, one run decides its comparisons")
    p.add_argument("--paddleformers_python", default="/tmp/pf_venv/bin/python",
                   help="interpreter of a venv with paddleformers 1.2.0 (see benchmarks/README.md)")
    p.add_argument("--bandwidth_gib", type=float, default=1.0)
    p.add_argument("--gemm_n", type=int, default=4096)
    p.add_argument("--machine_repeats", type=int, default=5)
    p.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out_prefix", type=Path, default=RESULTS_DIR / "compare")
    args = p.parse_args(argv)
    if args.new_tokens < 2:
        p.error("--new_tokens must be at least 2 (decode speed is measured between the first and the last token)")
    return args
