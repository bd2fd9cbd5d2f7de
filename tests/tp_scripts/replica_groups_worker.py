"""One of 4 processes (2 replicas of tensor-parallel degree 2) of the group test in
tests/test_tensor_parallel.py: every rank enters ``init_tensor_parallel`` at the same moment, so
both replicas create their groups together, then each group sums its ranks."""

import json
import sys

import paddle
import paddle.distributed as dist

from paddlemix_qwen25vl.distributed.context import init_tensor_parallel, leave_together


def main():
    dist.init_parallel_env()
    dist.barrier()  # all ranks start the group creation together, as a cluster of fast hosts does
    mp = init_tensor_parallel(2)
    total = paddle.to_tensor([float(dist.get_rank())])
    dist.all_reduce(total, group=mp.group)
    with open(f"{sys.argv[1]}/rank{dist.get_rank()}.json", "w") as f:
        json.dump({"mp_rank": mp.rank, "group_sum": float(total.numpy()[0])}, f)
    leave_together()


if __name__ == "__main__":
    main()
