"""Splitting a full checkpoint into a tensor-parallel one (the inverse of
:func:`paddlemix_qwen25vl.distributed.checkpoints.merge_tensor_parallel`). It builds the model,
so it lives beside the model rather than in :mod:`paddlemix_qwen25vl.distributed`, which the
model imports."""

from __future__ import annotations

from ..configuration import Qwen2_5_VLConfig
from ..distributed.checkpoints import copy_side_files, load_model_weights, prepare_dest, rank_dir, write_manifest
from ..distributed.context import ParallelContext, check_tensor_parallel_config
from ..distributed.layers import split_axes
from ..loading import save_weights
from ..modeling import Qwen2_5_VLForConditionalGeneration

__all__ = ["split_tensor_parallel"]


def split_tensor_parallel(src: str, dest: str, mp_degree: int, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Split full checkpoint ``src`` (any format :func:`from_pretrained` reads) into a
    tensor-parallel checkpoint of ``mp_degree`` ranks in ``dest``, one rank at a time.

    Each rank's share is built and filled exactly as ``from_pretrained`` would on that rank
    (no process group needed: loading is local), in the checkpoint's dtype, then saved;
    memory is one rank's share of the model.
    """
    config = Qwen2_5_VLConfig.from_pretrained(src)
    check_tensor_parallel_config(config, mp_degree)
    prepare_dest(src, dest)
    dtype = getattr(config, "dtype", None) or "float32"
    for rank in range(mp_degree):
        mp = ParallelContext(rank=rank, world_size=mp_degree)
        model = Qwen2_5_VLForConditionalGeneration.build(config, dtype, mp)
        axes = split_axes(model)
        load_model_weights(model, src)
        save_weights(model, rank_dir(dest, rank), max_shard_bytes=max_shard_bytes)
        del model
    write_manifest(dest, mp_degree, axes)
    copy_side_files(src, dest, skip=())
