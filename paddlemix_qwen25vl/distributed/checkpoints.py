"""Per-rank (tensor-parallel) checkpoints: layout, saving, merging into one, splitting one.

Layout of a tensor-parallel checkpoint directory of degree N::

    config.json, generation_config.json, tokenizer/processor files (as in a full checkpoint)
    tensor_parallel.json     {"mp_degree": N, "split_axes": {parameter name: axis}}
    tp_rank_00/              rank 0's tensors: a Paddle-layout safetensors checkpoint
    ...                      (model.safetensors, or shards + model.safetensors.index.json)
    tp_rank_{N-1}/

``split_axes`` (Paddle layout, Linear weights ``[in, out]``) is written from the model's
parallel layers when saving, so merging needs no model. Tensors absent from it (norms, the
vision tower, row-parallel biases) are replicated: every rank stores the full tensor.
``from_pretrained(dir, mp_degree=N)`` loads such a directory directly (each rank its own
folder); for any other degree, merge it first (or split the merged checkpoint again).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np
import paddle.distributed as dist
import paddle.nn as nn

from ..checkpoint_io import CheckpointError, SafetensorsFile
from ..loading import PDPARAMS_INDEX, SAFE_INDEX, TensorSlicing, load_weights, save_weights, shard_files, write_sharded
from .context import ParallelContext
from .layers import split_axes

__all__ = [
    "MANIFEST",
    "rank_dir",
    "read_manifest",
    "rank_checkpoint",
    "save_rank_checkpoint",
    "load_model_weights",
    "merge_tensor_parallel",
    "prepare_dest",
    "write_manifest",
    "copy_side_files",
]

MANIFEST = "tensor_parallel.json"


def rank_dir(path: str, rank: int) -> str:
    """Folder of rank ``rank``'s tensors inside tensor-parallel checkpoint ``path``."""
    return os.path.join(path, f"tp_rank_{rank:02d}")


def read_manifest(path: str) -> Optional[Dict]:
    """The ``tensor_parallel.json`` of ``path``, or None for a full (unsplit) checkpoint."""
    manifest = os.path.join(path, MANIFEST)
    if not os.path.exists(manifest):
        return None
    with open(manifest) as f:
        return json.load(f)


def rank_checkpoint(path: str, mp: ParallelContext) -> Optional[str]:
    """This rank's folder when ``path`` is a tensor-parallel checkpoint of ``mp``'s degree; None
    for a full checkpoint; a clear error for a per-rank checkpoint of another degree."""
    manifest = read_manifest(path)
    if manifest is None:
        return None
    saved = manifest["mp_degree"]
    if saved != mp.world_size:
        raise CheckpointError(
            f"{path} holds tensor-parallel slices for mp_degree={saved}, but this model runs with "
            f"mp_degree={mp.world_size}. Merge it first: python examples/merge_tensor_parallel_params.py "
            f"merge --src {path} --dest MERGED_DIR (then load MERGED_DIR with any mp_degree)"
        )
    return rank_dir(path, mp.rank)


def save_rank_checkpoint(model: nn.Layer, path: str, max_shard_bytes: int) -> None:
    """Write this rank's tensors of ``model`` (built with a tensor-parallel ``model.mp``) into ``path``.

    Every rank of the tensor-parallel group calls it; rank 0 also writes the manifest.
    Data-parallel replicas beyond the first group hold the same weights and write nothing.
    Returns once the group's ranks are done. Only the group waits: the Trainer saves on the
    first data-parallel replica alone (``should_save_model_state``).
    """
    mp: ParallelContext = model.mp
    first_group = not dist.is_initialized() or dist.get_rank() < mp.world_size
    if first_group:
        save_weights(model, rank_dir(path, mp.rank), max_shard_bytes=max_shard_bytes)
        if mp.rank == 0:
            write_manifest(path, mp.world_size, split_axes(model))
    if dist.is_initialized():
        dist.barrier(group=mp.group)


def load_model_weights(model: nn.Layer, path: str) -> None:
    """Fill ``model`` (this rank's share under ``model.mp``) from checkpoint ``path``: its own folder
    of a per-rank checkpoint of the same degree, or its slices of a full checkpoint (any format)."""
    mp: ParallelContext = model.mp
    ignore = ("lm_head.weight",) if model.config.tie_word_embeddings else ()
    per_rank = rank_checkpoint(path, mp)
    if per_rank is not None:  # already this rank's slices
        load_weights(model, per_rank, ignore_keys=ignore)
    else:
        load_weights(model, path, ignore_keys=ignore, slicing=TensorSlicing(mp.rank, mp.world_size, split_axes(model)))


def write_manifest(path: str, mp_degree: int, axes: Dict[str, int]) -> None:
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump({"mp_degree": mp_degree, "split_axes": axes}, f, indent=2)


def copy_side_files(src: str, dest: str, skip: Tuple[str, ...]) -> None:
    """Copy config, generation, tokenizer and processor files (every plain file but weights and ``skip``)."""
    for entry in sorted(os.listdir(src)):
        source = os.path.join(src, entry)
        weights = entry.endswith((".safetensors", ".pdparams")) or entry in (SAFE_INDEX, PDPARAMS_INDEX)
        if os.path.isfile(source) and not weights and entry not in skip and not entry.startswith("."):
            shutil.copy2(source, os.path.join(dest, entry))


def prepare_dest(src: str, dest: str) -> None:
    if os.path.abspath(src) == os.path.abspath(dest):
        raise ValueError("source and destination must be different directories")
    if os.path.exists(dest) and os.listdir(dest):
        raise FileExistsError(f"destination {dest} exists and is not empty")
    os.makedirs(dest, exist_ok=True)


def _tensor_index(folder: str) -> Dict[str, SafetensorsFile]:
    """Tensor name -> the safetensors file of ``folder`` that holds it."""
    index: Dict[str, SafetensorsFile] = {}
    for file in shard_files(folder):
        if not file.endswith(".safetensors"):
            raise CheckpointError(f"{file}: per-rank checkpoints are safetensors files")
        reader = SafetensorsFile(file)
        index.update({key: reader for key in reader.keys()})
    return index


def merge_tensor_parallel(src: str, dest: str, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Merge tensor-parallel checkpoint ``src`` into a full Paddle-layout checkpoint ``dest``.

    Tensor by tensor: split tensors are concatenated along their axis, replicated ones are
    taken from rank 0 after checking every rank holds the same values. Exact (dtypes kept).
    """
    manifest = read_manifest(src)
    if manifest is None:
        raise CheckpointError(f"{src} has no {MANIFEST}: it is not a tensor-parallel checkpoint")
    degree, axes = manifest["mp_degree"], manifest["split_axes"]
    ranks = [_tensor_index(rank_dir(src, r)) for r in range(degree)]
    names: List[str] = list(ranks[0])
    for r, index in enumerate(ranks[1:], start=1):
        if set(index) != set(names):
            raise CheckpointError(f"rank {r} of {src} holds different tensors than rank 0")
    layout = {}
    for name in names:
        shape = list(ranks[0][name].shape(name))
        if name in axes:
            shape[axes[name]] *= degree
        layout[name] = (tuple(shape), ranks[0][name].dtype_name(name))

    def produce(name: str) -> np.ndarray:
        pieces = [np.asarray(index[name].raw(name)) for index in ranks]
        if name in axes:
            return np.concatenate(pieces, axis=axes[name])
        for r, piece in enumerate(pieces[1:], start=1):
            if not np.array_equal(piece, pieces[0]):
                raise CheckpointError(f"replicated tensor {name} differs between rank 0 and rank {r} of {src}")
        return pieces[0]

    prepare_dest(src, dest)
    write_sharded(dest, layout, produce, max_shard_bytes)
    copy_side_files(src, dest, skip=(MANIFEST,))
