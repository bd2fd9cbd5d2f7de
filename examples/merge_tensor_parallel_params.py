"""Merge per-rank tensor-parallel checkpoints into one full checkpoint, or split one.

    # every rank saved its slices with model.save_pretrained(DIR) under mp_degree N
    python examples/merge_tensor_parallel_params.py merge --src TP_DIR --dest FULL_DIR
    # pre-split a full checkpoint (HF or Paddle, any format) for mp_degree N
    python examples/merge_tensor_parallel_params.py split --src FULL_DIR --dest TP_DIR --mp_degree 4

The merged checkpoint is a Paddle-layout safetensors checkpoint that ``from_pretrained``
loads with any ``mp_degree``; a split one loads directly with its own ``mp_degree``. Layout
of a per-rank checkpoint: see ``paddlemix_qwen25vl/distributed/checkpoints.py``.
Merging is exact and streams one tensor at a time; splitting holds one rank's share.
"""

import argparse

from paddlemix_qwen25vl.distributed import merge_tensor_parallel, split_tensor_parallel
from paddlemix_qwen25vl.loading import resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["merge", "split"])
    parser.add_argument("--src", required=True, help="merge: a per-rank checkpoint; split: a full checkpoint dir or hub id")
    parser.add_argument("--dest", required=True, help="output directory (must be new or empty)")
    parser.add_argument("--mp_degree", type=int, default=None, help="split only: number of ranks")
    parser.add_argument("--max_shard_size_gb", type=float, default=5.0, help="largest output safetensors file")
    args = parser.parse_args()
    max_bytes = int(args.max_shard_size_gb * 1024**3)
    if args.mode == "merge":
        if args.mp_degree is not None:
            parser.error("--mp_degree is for split; merge reads it from tensor_parallel.json")
        merge_tensor_parallel(args.src, args.dest, max_bytes)
    else:
        if args.mp_degree is None:
            parser.error("split needs --mp_degree")
        split_tensor_parallel(resolve_model_path(args.src), args.dest, args.mp_degree, max_bytes)
    print(f"{args.mode}: wrote {args.dest}")


if __name__ == "__main__":
    main()
