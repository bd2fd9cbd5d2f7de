"""Merge tensor-parallel checkpoints into one full checkpoint, or split one.

PaddleMIX's command line: the per-rank files PaddleNLP's Trainer writes under
--tensor_parallel_degree N (``model_state.tp00.pdparams`` ..., or ``model.tp00.safetensors``)
become ``model_state.pdparams`` in the same directory (or in --merge_model_path):

    python examples/merge_tensor_parallel_params.py --model_name_or_path work_dirs/tp2_run --tensor_parallel_degree 2

(``from_pretrained`` also loads such a directory directly, without merging.) This library's
own per-rank layout (``model.save_pretrained`` under mp_degree N, see
``paddlemix_qwen25vl/distributed/checkpoints.py``) merges and splits with subcommands:

    python examples/merge_tensor_parallel_params.py merge --src TP_DIR --dest FULL_DIR
    python examples/merge_tensor_parallel_params.py split --src FULL_DIR --dest TP_DIR --mp_degree 4

Those write Paddle-layout safetensors and stream one tensor at a time (split holds one rank's share).
"""

import argparse

from paddlemix_qwen25vl.convert import merge_paddlenlp_tensor_parallel
from paddlemix_qwen25vl.distributed import merge_tensor_parallel
from paddlemix_qwen25vl.tools.tensor_parallel import split_tensor_parallel
from paddlemix_qwen25vl.loading import resolve_model_path
from paddlemix_qwen25vl.tools.common import tool_device


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["merge", "split"], help="this library's per-rank layout (see above)")
    group = parser.add_argument_group("PaddleMIX's form (no subcommand)")
    group.add_argument("--model_name_or_path", help="directory with model_state.tpXX.pdparams / model.tpXX.safetensors")
    group.add_argument("--merge_model_path", default=None, help="output directory (default: --model_name_or_path)")
    group.add_argument("--device", default="gpu", help="gpu (default; CPU when there is none) or cpu")
    group.add_argument("--dtype", default=None, help="cast the merged tensors (default: keep the stored dtypes)")
    group.add_argument("--tensor_parallel_degree", type=int, default=2, help="number of ranks saved (default 2)")
    ours = parser.add_argument_group("subcommands merge / split")
    ours.add_argument("--src", help="merge: a per-rank checkpoint; split: a full checkpoint dir or hub id")
    ours.add_argument("--dest", help="output directory (must be new or empty)")
    ours.add_argument("--mp_degree", type=int, default=None, help="split only: number of ranks")
    ours.add_argument("--max_shard_size_gb", type=float, default=5.0, help="largest output safetensors file")
    args = parser.parse_args(argv)
    if args.mode is None:
        if args.model_name_or_path is None:
            parser.error("give --model_name_or_path (PaddleMIX's form) or a subcommand, merge or split")
        tool_device(args.device)
        written = merge_paddlenlp_tensor_parallel(
            args.model_name_or_path, args.tensor_parallel_degree, args.merge_model_path, args.dtype
        )
        print(f"merged {args.tensor_parallel_degree} ranks into {written}")
        return
    if args.src is None or args.dest is None:
        parser.error(f"{args.mode} needs --src and --dest")
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
