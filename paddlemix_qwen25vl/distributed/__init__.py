"""Tensor parallelism (``mp_degree``) for inference on CPU (gloo) and GPU (NCCL).

- :mod:`.context`: which rank this process is (:class:`ParallelContext`), start-up checks,
  and the collectives (plain ``paddle.distributed``, with gradients);
- :mod:`.layers`: column/row-parallel Linear, vocabulary-parallel embedding and lm_head,
  used by the decoder whether mp is 1 or N;
- :mod:`.checkpoints`: per-rank checkpoints and merging them into one (splitting one builds
  the model: :mod:`paddlemix_qwen25vl.tools.tensor_parallel`).
"""

from .checkpoints import merge_tensor_parallel, read_manifest
from .context import (
    SINGLE,
    ParallelContext,
    check_tensor_parallel_config,
    check_tensor_parallel_supported,
    init_tensor_parallel,
    is_main_process,
    leave_together,
)
from .layers import ColumnParallelLinear, RowParallelLinear, TiedLMHead, VocabParallelEmbedding, split_axes

__all__ = [
    "ParallelContext",
    "SINGLE",
    "init_tensor_parallel",
    "check_tensor_parallel_config",
    "check_tensor_parallel_supported",
    "is_main_process",
    "leave_together",
    "ColumnParallelLinear",
    "RowParallelLinear",
    "VocabParallelEmbedding",
    "TiedLMHead",
    "split_axes",
    "merge_tensor_parallel",
    "read_manifest",
]
