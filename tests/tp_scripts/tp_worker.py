"""One tensor-parallel rank of the CPU tests (launched twice by tests/test_tensor_parallel.py).

For every checkpoint given: load it with ``mp_degree`` ranks, then write (rank 0) logits and
greedy tokens, (every rank) gradients of a few split and replicated parameters and the
rank's peak memory, and optionally save a per-rank checkpoint for the merge test.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers

from helpers.tensor_parallel import run_workload  # noqa: E402

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration  # noqa: E402
from paddlemix_qwen25vl.distributed import leave_together  # noqa: E402


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="NAME=PATH")
    parser.add_argument("--save", default=None, help="NAME whose mp model is saved per rank to OUT/NAME_saved")
    parser.add_argument("--mp_degree", type=int, default=2)
    args = parser.parse_args()
    for item in args.checkpoints:
        name, path = item.split("=", 1)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, mp_degree=args.mp_degree)
        rank = model.mp.rank
        param_bytes = sum(int(np.prod(p.shape)) * 4 for p in model.parameters())
        logits, tokens, loss, grads = run_workload(model)
        prefix = os.path.join(args.out, f"{name}.rank{rank}")
        np.savez(prefix + ".grads.npz", **grads)
        with open(prefix + ".json", "w") as f:
            json.dump({"loss": loss, "param_bytes": param_bytes, "peak_rss_mib": peak_rss_mib()}, f)
        if rank == 0:
            np.save(os.path.join(args.out, f"{name}.logits.npy"), logits)
            np.save(os.path.join(args.out, f"{name}.tokens.npy"), tokens)
        if name == args.save:
            model.save_pretrained(os.path.join(args.out, f"{name}_saved"))
        del model
    leave_together()


if __name__ == "__main__":
    main()
