"""Which tensor-parallel rank this process is, and the collectives the parallel layers use.

Only plain ``paddle.distributed`` collectives are used (``all_reduce``, ``all_gather``):
they run over gloo on CPU and NCCL on GPU. Fleet's tensor-parallel layers are avoided on
purpose: their ``c_identity`` op has no CPU kernel.

The collectives are wrapped in ``PyLayer``s with the matching backward (the usual
Megatron pairs: identity <-> all-reduce, all-gather <-> slice), so gradients through the
parallel layers are those of the unsplit model.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, List

import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer

from ..runtime import on_gpu

__all__ = [
    "ParallelContext",
    "SINGLE",
    "init_tensor_parallel",
    "check_tensor_parallel_config",
    "check_tensor_parallel_supported",
    "copy_to_ranks",
    "reduce_from_ranks",
    "gather_last_axis",
    "is_main_process",
    "leave_together",
]

_LAUNCH_HINT = "python -m paddle.distributed.launch --nproc_per_node {n} SCRIPT ... (add --devices 0,1,... on GPUs)"


@dataclass(frozen=True)
class ParallelContext:
    """Tensor-parallel position of this process: ``rank`` of ``world_size`` ranks in ``group``.

    ``group`` is a ``paddle.distributed`` group, or None for the default (all processes).
    At ``world_size == 1`` the parallel layers are plain ``nn.Linear`` / ``nn.Embedding``
    and issue no collective at all.
    """

    rank: int = 0
    world_size: int = 1
    group: Any = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"tensor-parallel rank {self.rank} is outside 0..{self.world_size - 1}")

    def shard(self, size: int, what: str) -> int:
        """This rank's share of ``size`` (which must divide evenly); ``what`` names it in the error."""
        if size % self.world_size:
            raise ValueError(f"{what} ({size}) is not divisible by the tensor-parallel degree {self.world_size}")
        return size // self.world_size


SINGLE = ParallelContext()


def check_tensor_parallel_config(config: Any, mp_degree: int) -> None:
    """Raise a ValueError unless ``mp_degree`` splits every decoder dimension of ``config`` evenly.

    Called before any process group, model or weight exists, so a wrong degree costs nothing.
    Heads and kv heads are split per rank (each rank keeps whole GQA groups); the MLP width and
    the vocabulary (embedding and lm_head) are split too.
    """
    if not isinstance(mp_degree, int) or mp_degree < 1:
        raise ValueError(f"mp_degree must be a positive integer, got {mp_degree!r}")
    dims = {
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
    }
    bad = [f"{name}={value}" for name, value in dims.items() if value % mp_degree]
    if bad:
        valid = [d for d in range(1, config.num_key_value_heads + 1) if all(v % d == 0 for v in dims.values())]
        raise ValueError(
            f"mp_degree={mp_degree} does not divide {', '.join(bad)} of this model; "
            f"tensor parallelism splits attention heads, kv heads, the MLP and the vocabulary evenly across ranks. "
            f"Valid degrees for this model: {valid}"
        )


def _launched_world_size() -> int:
    """Number of processes started by ``paddle.distributed.launch`` (1 when not launched)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init_tensor_parallel(mp_degree: int) -> ParallelContext:
    """The tensor-parallel context of this process for ``mp_degree`` ranks.

    ``mp_degree == 1`` returns :data:`SINGLE` without touching ``paddle.distributed``.
    Otherwise the processes must have been started by ``paddle.distributed.launch`` with a
    multiple of ``mp_degree`` processes; consecutive ranks form one tensor-parallel group
    (``world_size / mp_degree`` independent replicas). The parallel environment is
    initialised here if the caller has not done it.
    """
    if mp_degree == 1:
        return SINGLE
    world = _launched_world_size()
    if world % mp_degree:
        raise ValueError(
            f"mp_degree={mp_degree} needs a multiple of {mp_degree} processes, but this process was started "
            f"as one of {world}. Launch with: {_LAUNCH_HINT.format(n=mp_degree)}"
        )
    if not dist.is_initialized():
        dist.init_parallel_env()
    rank = dist.get_rank()
    group = None
    if world > mp_degree:
        # Every process must create every group, in the same order, and one group at a time:
        # Paddle 3.3's gloo rendezvous of two groups created at once collides in the shared
        # store ("Connection refused", or a 30 s TIMEOUT on a rank that never connected).
        for start in range(0, world, mp_degree):
            ranks = list(range(start, start + mp_degree))
            created = dist.new_group(ranks)
            dist.barrier()
            if rank in ranks:
                group = created
    return ParallelContext(rank=rank % mp_degree, world_size=mp_degree, group=group)


def check_tensor_parallel_supported(degree: int) -> None:
    """For fine-tuning: raise a clear error when tensor parallelism of ``degree`` cannot train here.

    Tensor-parallel *training* goes through paddlenlp's Trainer, whose hybrid-parallel setup
    (fleet) needs GPUs; on a CPU-only build or device it would fail deep inside fleet.
    ``degree == 1`` is always fine. Tensor-parallel *inference* also works on CPU (see
    ``examples/distributed_qwen2_5_vl_infer.py``).
    """
    if degree == 1:
        return
    if degree < 1:
        raise ValueError(f"tensor_parallel_degree must be >= 1, got {degree}")
    if not on_gpu():
        raise RuntimeError(
            f"tensor_parallel_degree={degree} needs GPUs: tensor-parallel fine-tuning runs through "
            "paddlenlp's fleet hybrid parallelism, which has no CPU kernels (device is "
            f"{paddle.get_device()!r}). Use --tensor_parallel_degree 1 on CPU; tensor-parallel inference "
            "does run on CPU (examples/distributed_qwen2_5_vl_infer.py --mp_degree N)."
        )
    if _launched_world_size() % degree:
        raise ValueError(
            f"tensor_parallel_degree={degree} needs a multiple of {degree} processes; launch with "
            + _LAUNCH_HINT.format(n=degree)
        )


# ------------------------------------------------------------------ collectives with gradients
class _CopyToRanks(PyLayer):
    """Forward: identity (every rank already holds the input). Backward: sum the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: paddle.Tensor, group: Any) -> paddle.Tensor:
        ctx.group = group
        return x.clone()

    @staticmethod
    def backward(ctx, grad: paddle.Tensor) -> paddle.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad


class _ReduceFromRanks(PyLayer):
    """Forward: sum the ranks' partial results. Backward: identity."""

    @staticmethod
    def forward(ctx, x: paddle.Tensor, group: Any) -> paddle.Tensor:
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: paddle.Tensor) -> paddle.Tensor:
        return grad


class _GatherLastAxis(PyLayer):
    """Forward: concatenate the ranks' slices along the last axis. Backward: this rank's slice."""

    @staticmethod
    def forward(ctx, x: paddle.Tensor, group: Any, rank: int) -> paddle.Tensor:
        ctx.rank, ctx.width = rank, x.shape[-1]
        pieces: List[paddle.Tensor] = []
        dist.all_gather(pieces, x, group=group)
        return paddle.concat(pieces, axis=-1)

    @staticmethod
    def backward(ctx, grad: paddle.Tensor) -> paddle.Tensor:
        start = ctx.rank * ctx.width
        return grad[..., start:start + ctx.width]


def copy_to_ranks(x: paddle.Tensor, mp: ParallelContext) -> paddle.Tensor:
    """Input of a column-parallel layer: identity forward, gradient summed over ranks."""
    return x if mp.world_size == 1 or not _needs_grad(x) else _CopyToRanks.apply(x, mp.group)


def reduce_from_ranks(x: paddle.Tensor, mp: ParallelContext) -> paddle.Tensor:
    """Sum of ``x`` over the tensor-parallel ranks (output of row-parallel layers)."""
    if mp.world_size == 1:
        return x
    if _needs_grad(x):
        return _ReduceFromRanks.apply(x, mp.group)
    dist.all_reduce(x, group=mp.group)
    return x


def gather_last_axis(x: paddle.Tensor, mp: ParallelContext) -> paddle.Tensor:
    """Concatenate the ranks' ``x`` along the last axis (vocabulary-parallel logits)."""
    if mp.world_size == 1:
        return x
    if _needs_grad(x):
        return _GatherLastAxis.apply(x, mp.group, mp.rank)
    pieces: List[paddle.Tensor] = []
    dist.all_gather(pieces, x, group=mp.group)
    return paddle.concat(pieces, axis=-1)


def _needs_grad(x: paddle.Tensor) -> bool:
    """True when autograd will differentiate through ``x`` (training); inference skips the PyLayer."""
    return paddle.is_grad_enabled() and not x.stop_gradient


def is_main_process() -> bool:
    """True on the process that should print and write shared files (global rank 0)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def leave_together() -> None:
    """End a program started by ``paddle.distributed.launch``: wait for every rank, then exit (code 0).

    Call it as the last step, once every output is written. The ranks meet at a barrier, then
    each ends with ``os._exit`` (stdio flushed), skipping the interpreter's teardown: with a
    plain exit, a rank whose work was done still died with SIGABRT (exit code -6, no message
    after its last output) in one CI run, which fails the whole launch; the teardown of gloo
    and the TCP store while the peer tears down its own is where nothing else was left to run.
    Without an initialised parallel environment it only returns.
    """
    if not dist.is_initialized():
        return
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
