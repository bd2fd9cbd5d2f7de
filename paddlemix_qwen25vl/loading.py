"""Where checkpoint weights are found, named and laid out: the one weight-mapping module.

Accepted checkpoints (a local directory or a hub id):

- Hugging Face safetensors, one file or sharded with ``model.safetensors.index.json``, in the
  released key layout (``visual.*``, ``model.*``, ``lm_head.*``) or the transformers >= 4.52
  one (``model.visual.*``, ``model.language_model.*``);
- Paddle checkpoints (PaddleMIX, ``save_pretrained``): the same names with Linear weights
  already ``[in, out]``, as safetensors or ``model_state.pdparams``;
- PaddleNLP tensor-parallel checkpoints (what its Trainer writes under
  ``--tensor_parallel_degree N``): one file set per rank, ``model_state.tp00.pdparams``,
  ``model.tp00.safetensors`` or shards ``model.tp00-00001-of-00002.safetensors``. Each tensor
  is put back together from its rank pieces, along the one axis where a piece is smaller than
  the model's tensor (pieces of the full size are replicated: rank 0's is used), then read as
  from a full checkpoint. A full file next to them (after ``merge_tensor_parallel_params.py``)
  is preferred.

Torch Linear weights are ``[out, in]`` and Paddle's are ``[in, out]``: every ``nn.Linear``
weight of the model is transposed when it comes from a torch checkpoint; Conv3D kernels,
embeddings, norms and biases never are.

Tensor parallelism: a :class:`TensorSlicing` (built from the model's parallel layers) says
which axis of which tensor is split; each rank then reads only its slice of those tensors.
From safetensors the slice is taken on the memory map before any conversion, so only its
bytes are copied (a slice along a stored tensor's last axis is strided, so the pages it
spans are touched; the map is released after every tensor, so they never accumulate).
``.pdparams`` files have no random access: they are read whole, then sliced.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
from tqdm.auto import tqdm

from .checkpoint_io import (
    CheckpointError,
    SafetensorsFile,
    dtype_itemsize,
    read_pdparams,
    safetensors_dtype,
    tensor_to_numpy,
    to_float32,
    to_paddle,
    write_safetensors,
)

__all__ = [
    "resolve_model_path",
    "load_weights",
    "read_checkpoint",
    "Target",
    "Saved",
    "parameter_target",
    "parameter_saved",
    "checkpoint_targets",
    "checkpoint_tensors",
    "TensorSlicing",
    "save_weights",
    "write_sharded",
    "shard_files",
    "checkpoint_name",
    "is_linear_weight",
    "file_is_torch_layout",
    "tensor_parallel_files",
    "has_full_weights",
    "CheckpointError",
]

logger = logging.getLogger(__name__)

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
PDPARAMS_SINGLE = "model_state.pdparams"
PDPARAMS_INDEX = "model_state.pdparams.index.json"
# Key prefixes of the transformers >= 4.52 layout -> the released layout used here.
_RENAMES = (("model.language_model.", "model."), ("model.visual.", "visual."))
_TORCH_FORMATS = ("pt", "torch")
PADDLE_METADATA = {"format": "np"}  # PaddleMIX's marker for Linear weights stored [in, out]
# PaddleNLP's rank variant in a weight file name: model_state.tp01.pdparams, model.tp01-00001-of-00002.safetensors.
_TP_VARIANT = re.compile(r"\.tp(\d{2})(?=[.-])")

# Every nn.Linear weight of the model (torch [out, in] -> Paddle [in, out]); a test checks
# this table against the model's layers. Conv3D, embeddings, norms and biases are never transposed.
LINEAR_WEIGHTS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",  # decoder and vision MLPs
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "attn.qkv.weight",  # vision attention
    "attn.proj.weight",
    "merger.mlp.0.weight",
    "merger.mlp.2.weight",
)


def is_linear_weight(name: str) -> bool:
    """True for the weights that torch and Paddle store transposed to each other."""
    return name == "lm_head.weight" or name.endswith(tuple("." + suffix for suffix in LINEAR_WEIGHTS))


def checkpoint_name(key: str) -> str:
    """Map a checkpoint key of either Hugging Face layout to this library's parameter name."""
    for old, new in _RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def resolve_model_path(name_or_path: str) -> str:
    """A local checkpoint directory for ``name_or_path`` (a directory or a hub id such as
    ``Qwen/Qwen2.5-VL-3B-Instruct``), looking in the local Hugging Face cache before downloading."""
    if os.path.isdir(name_or_path):
        return name_or_path
    looked = [f"local directory {os.path.abspath(name_or_path)!r} (does not exist)"]
    parts = name_or_path.split("/")
    if len(parts) == 2 and all(parts) and not name_or_path.startswith((".", "/")):
        from huggingface_hub import constants, snapshot_download

        patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.pdparams"]
        try:
            return snapshot_download(name_or_path, allow_patterns=patterns, local_files_only=True)
        except Exception as err:  # not cached (LocalEntryNotFoundError and friends)
            looked.append(f"Hugging Face cache {constants.HF_HUB_CACHE!r} ({type(err).__name__})")
        if not constants.HF_HUB_OFFLINE:
            try:
                return snapshot_download(name_or_path, allow_patterns=patterns)
            except Exception as err:
                looked.append(f"download from the Hugging Face Hub failed ({type(err).__name__}: {err})")
        else:
            looked.append("download skipped: HF_HUB_OFFLINE is set")
    raise FileNotFoundError(f"cannot find checkpoint {name_or_path!r}; looked in: " + "; ".join(looked))


def shard_files(path: str) -> List[str]:
    """Weight files of a checkpoint directory, in load order."""
    for index_name in (SAFE_INDEX, PDPARAMS_INDEX):
        index_path = os.path.join(path, index_name)
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map = json.load(f).get("weight_map", {})
            files = sorted(set(weight_map.values()))
            missing = [name for name in files if not os.path.exists(os.path.join(path, name))]
            if missing:
                raise CheckpointError(f"{index_path} lists shard files that are missing: {', '.join(missing)}")
            return [os.path.join(path, name) for name in files]
    for single in (SAFE_SINGLE, PDPARAMS_SINGLE):
        if os.path.exists(os.path.join(path, single)):
            return [os.path.join(path, single)]
    found = sorted(
        f for f in os.listdir(path) if f.endswith((".safetensors", ".pdparams")) and not _TP_VARIANT.search(f)
    )
    if found:
        return [os.path.join(path, f) for f in found]
    raise CheckpointError(
        f"no weights in {path}: expected {SAFE_SINGLE}, {SAFE_INDEX} (+ shards), {PDPARAMS_SINGLE} or other "
        "*.safetensors / *.pdparams files"
    )


def has_full_weights(path: str) -> bool:
    """True when ``path`` holds a full (not per-rank) checkpoint's single file or index."""
    return any(os.path.exists(os.path.join(path, f)) for f in (SAFE_INDEX, SAFE_SINGLE, PDPARAMS_SINGLE, PDPARAMS_INDEX))


def tensor_parallel_files(path: str) -> Dict[int, List[str]]:
    """PaddleNLP's per-rank weight files of ``path`` as ``{rank: files}`` (empty when it has
    none); a missing rank is an error naming it."""
    if not os.path.isdir(path):
        return {}
    groups: Dict[int, List[str]] = {}
    for name in sorted(os.listdir(path)):
        match = _TP_VARIANT.search(name)
        if match and name.endswith((".safetensors", ".pdparams")):
            groups.setdefault(int(match.group(1)), []).append(os.path.join(path, name))
    missing = sorted(set(range(max(groups) + 1)) - set(groups)) if groups else []
    if missing:
        raise CheckpointError(f"{path}: tensor-parallel checkpoint without rank(s) {missing} (files *.tp{missing[0]:02d}.*)")
    return dict(sorted(groups.items()))


def _rank_tensors(files: List[str]) -> Dict[str, Callable[[], Tuple[np.ndarray, str]]]:
    """Every tensor of one rank's files: ``{key: () -> (array, dtype name)}`` (safetensors lazily)."""
    tensors: Dict[str, Callable[[], Tuple[np.ndarray, str]]] = {}
    for file in files:
        if file.endswith(".pdparams"):
            for key, array, dtype_name in read_pdparams(file):
                tensors[key] = lambda a=array, d=dtype_name: (a, d)
        else:
            reader = SafetensorsFile(file)
            for key in reader.keys():
                tensors[key] = lambda r=reader, k=key: (r.raw(k), r.dtype_name(k))
    return tensors


def _joined(pieces: List[np.ndarray], full: Optional[Tuple[int, ...]]) -> np.ndarray:
    """The tensor of shape ``full`` that the rank ``pieces`` are slices of (replicated: the first)."""
    first = pieces[0]
    if full is None or tuple(first.shape) == tuple(full) or len(first.shape) != len(full):
        return first  # replicated, or not the model's: the key checks report it
    axes = [i for i, (n, m) in enumerate(zip(first.shape, full)) if n != m]
    if len(axes) != 1 or first.shape[axes[0]] * len(pieces) != full[axes[0]]:
        return first  # not a split of it: reported as mis-shaped
    return np.concatenate(pieces, axis=axes[0])


def _iter_tensor_parallel(groups: Dict[int, List[str]], shapes: Mapping[str, Tuple[int, ...]]) -> Iterator[Tuple[str, np.ndarray, str, bool]]:
    """Like :func:`_iter_file` over a PaddleNLP per-rank checkpoint: each tensor whole, Paddle layout."""
    ranks = [_rank_tensors(files) for files in groups.values()]
    for key in ranks[0]:
        absent = [rank for rank, tensors in zip(groups, ranks) if key not in tensors]
        if absent:
            raise CheckpointError(f"tensor-parallel checkpoint: {key} is missing from rank(s) {absent}")
        loaded = [tensors[key]() for tensors in ranks]
        yield key, _joined([a for a, _ in loaded], shapes.get(checkpoint_name(key))), loaded[0][1], False
        del loaded


def file_is_torch_layout(reader: SafetensorsFile, shapes: Optional[Mapping[str, Tuple[int, ...]]] = None) -> bool:
    """Torch layout unless the file's metadata says Paddle; without metadata, decided by a
    non-square Linear weight compared with the model's full (unsplit) Paddle-layout ``shapes``
    (torch when undecidable)."""
    declared = reader.metadata.get("format")
    if declared is not None:
        return declared in _TORCH_FORMATS
    for key in reader.keys():
        name = checkpoint_name(key)
        if shapes is not None and is_linear_weight(name) and name in shapes:
            expected = tuple(shapes[name])
            if expected[0] != expected[1]:
                return reader.shape(key) == expected[::-1]
    return True


def _iter_file(path: str, shapes: Mapping[str, Tuple[int, ...]]) -> Iterator[Tuple[str, np.ndarray, str, bool]]:
    """Yield ``(key, stored array, dtype name, torch layout)`` for every tensor of one file."""
    if path.endswith(".pdparams"):
        for key, array, dtype_name in read_pdparams(path):
            yield key, array, dtype_name, False
        return
    reader = SafetensorsFile(path)
    torch_layout = file_is_torch_layout(reader, shapes)
    for key in reader.keys():
        yield key, reader.raw(key), reader.dtype_name(key), torch_layout
        # Unmap after every tensor: pages the view touched stop counting towards this process.
        reader.close()


@dataclass(frozen=True)
class TensorSlicing:
    """The slice of each full tensor that tensor-parallel rank ``rank`` of ``world_size`` holds:
    ``axes`` maps parameter names to their split axis in Paddle layout (see
    :func:`paddlemix_qwen25vl.distributed.split_axes`); other tensors are read whole."""

    rank: int = 0
    world_size: int = 1
    axes: Mapping[str, int] = field(default_factory=dict)

    def full_shape(self, name: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
        """The unsplit Paddle-layout shape of parameter ``name`` whose local shape is ``shape``."""
        if name not in self.axes:
            return tuple(shape)
        axis = self.axes[name]
        return tuple(n * self.world_size if i == axis else n for i, n in enumerate(shape))

    def take(self, name: str, array: np.ndarray, transposed: bool) -> np.ndarray:
        """This rank's slice of full tensor ``array`` (stored transposed to Paddle layout if ``transposed``).
        On a memory map this is a view: nothing is read until it is copied."""
        if name not in self.axes or self.world_size == 1:
            return array
        axis = self.axes[name]
        axis = array.ndim - 1 - axis if transposed else axis
        width = array.shape[axis] // self.world_size
        index = [slice(None)] * array.ndim
        index[axis] = slice(self.rank * width, (self.rank + 1) * width)
        return array[tuple(index)]


def _count_tensors(files: List[str]) -> Optional[int]:
    if all(f.endswith(".safetensors") for f in files):
        return sum(len(SafetensorsFile(f).keys()) for f in files)
    return None


def _limited(names: List[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def read_checkpoint(
    path: str,
    shapes: Mapping[str, Tuple[int, ...]],
    slicing: TensorSlicing = TensorSlicing(),
    ignore_keys: Tuple[str, ...] = (),
    desc: str = "Loading weights",
    prefer_full: bool = True,
) -> Iterator[Tuple[str, np.ndarray, str]]:
    """Yield ``(name, array, dtype name)`` for every tensor of checkpoint directory ``path``.

    ``shapes`` are the expected (local, per-rank) Paddle-layout shapes by parameter name.
    Arrays come in Paddle layout (torch Linear weights transposed), in the stored dtype
    (bfloat16 as uint16 words), already cut to this rank's slice; they may be views of a
    memory map, valid until the next tensor is requested. After the last tensor, any
    missing, unexpected or mis-shaped key raises a :class:`CheckpointError` listing them.
    ``ignore_keys`` are names to skip silently (e.g. a tied ``lm_head.weight``). A directory with
    both PaddleNLP per-rank files and a full checkpoint is read from the full one unless
    ``prefer_full`` is False.
    """
    full_shapes = {name: slicing.full_shape(name, shape) for name, shape in shapes.items()}
    groups = {} if prefer_full and has_full_weights(path) else tensor_parallel_files(path)
    files = groups[0] if groups else shard_files(path)
    sources = [(f"{len(groups)} tensor-parallel ranks", _iter_tensor_parallel(groups, full_shapes))] if groups else [
        (os.path.basename(file), _iter_file(file, full_shapes)) for file in files
    ]
    loaded, unexpected, mismatched = set(), [], []
    with tqdm(total=_count_tensors(files), desc=desc, unit="tensor", disable=None) as progress:
        for file, tensors in sources:
            for key, stored, dtype_name, torch_layout in tensors:
                progress.update(1)
                name = checkpoint_name(key)
                if name in ignore_keys:
                    continue
                if name not in shapes:
                    unexpected.append(key)
                    continue
                transpose = torch_layout and is_linear_weight(name)
                shape = tuple(stored.shape[::-1] if transpose else stored.shape)
                if shape != full_shapes[name]:
                    mismatched.append(f"{key} {list(stored.shape)} in {file} vs {list(full_shapes[name])}")
                    continue
                value = slicing.take(name, stored, transpose)
                yield name, value.T if transpose else value, dtype_name
                del stored, value  # let the map (and the pages it touched) go before the next tensor
                loaded.add(name)
    missing = sorted(set(shapes) - loaded)
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_limited(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_limited(unexpected)}")
    if mismatched:
        problems.append(f"mis-shaped keys ({len(mismatched)}, checkpoint vs model): {_limited(mismatched)}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match the model: " + "; ".join(problems))


def _c_contiguous(array: np.ndarray, block: int = 256) -> np.ndarray:
    """``np.ascontiguousarray``, except that a transposed 2-D view (a torch Linear weight read as
    ``[in, out]``) is copied ``block`` columns at a time: twice as fast as numpy's one strided pass."""
    if array.ndim != 2 or array.flags.c_contiguous:
        return np.ascontiguousarray(array)
    out = np.empty(array.shape, dtype=array.dtype)
    for start in range(0, array.shape[1], block):
        out[:, start:start + block] = array[:, start:start + block]
    return out


@dataclass(frozen=True)
class Target:
    """Where one checkpoint tensor goes when loaded: its Paddle-layout ``shape`` and ``take``,
    called with the stored array (Paddle layout, possibly a view of a memory map valid only
    during the call) and its safetensors dtype name."""

    shape: Tuple[int, ...]
    take: Callable[[np.ndarray, str], None]


@dataclass(frozen=True)
class Saved:
    """One tensor to save: its shape, safetensors dtype name and ``produce()``, which gives the
    host array (bfloat16 as uint16 words) just before it is written."""

    shape: Tuple[int, ...]
    dtype_name: str
    produce: Callable[[], np.ndarray]


def parameter_target(param: paddle.Tensor) -> Target:
    """Load into ``param``: converted to its dtype (and made contiguous), then assigned."""

    def take(value: np.ndarray, dtype_name: str) -> None:
        if param.dtype == paddle.float32:  # straight from the (mapped) array: no intermediate tensor
            param.set_value(_c_contiguous(to_float32(value, dtype_name)))
        else:
            param.set_value(to_paddle(_c_contiguous(value), dtype_name, param.dtype))

    return Target(tuple(param.shape), take)


def parameter_saved(param: paddle.Tensor) -> Saved:
    """Save ``param`` as it is."""
    return Saved(tuple(param.shape), safetensors_dtype(param.dtype), lambda: tensor_to_numpy(param)[0])


def _per_layer(model: nn.Layer, method: str, default: Callable[[paddle.Tensor], object]) -> Dict[str, object]:
    """``{name: default(parameter)}`` over every layer's own parameters, except that a layer with
    a ``method`` (the weight-only layers of :mod:`.quantization`) names its own tensors instead."""
    entries: Dict[str, object] = {}
    for prefix, layer in model.named_sublayers(include_self=True):
        own = getattr(layer, method)() if hasattr(layer, method) else {
            name: default(param) for name, param in layer.named_parameters(include_sublayers=False)
        }
        entries.update({f"{prefix}.{name}" if prefix else name: entry for name, entry in own.items()})
    return entries


def checkpoint_targets(model: nn.Layer) -> Dict[str, Target]:
    """Every tensor ``model`` loads, by checkpoint name: its parameters, and what each layer with a
    ``checkpoint_targets()`` method declares (a weight-only layer takes a float weight and quantises it)."""
    return _per_layer(model, "checkpoint_targets", parameter_target)


def checkpoint_tensors(model: nn.Layer) -> Dict[str, Saved]:
    """Every tensor ``model`` saves, by checkpoint name (layers may declare theirs with ``checkpoint_tensors()``)."""
    return _per_layer(model, "checkpoint_tensors", parameter_saved)


def load_weights(
    model: nn.Layer, path: str, ignore_keys: Tuple[str, ...] = (), slicing: TensorSlicing = TensorSlicing()
) -> None:
    """Stream every weight file of checkpoint directory ``path`` into ``model``.

    Tensors are read (only this rank's slice under ``slicing``), transposed for torch Linear
    weights and handed one at a time to their :func:`checkpoint_targets` (a parameter converts
    to its dtype; a weight-only layer quantises). Any missing, unexpected or mis-shaped key
    raises a :class:`CheckpointError` listing them, so no parameter is left unset (a model from
    ``build`` has none allocated before). ``ignore_keys`` are checkpoint keys to skip silently.
    """
    targets = checkpoint_targets(model)
    shapes = {name: target.shape for name, target in targets.items()}
    for name, value, dtype_name in read_checkpoint(path, shapes, slicing, ignore_keys):
        targets[name].take(value, dtype_name)
        del value


def write_sharded(
    path: str,
    layout: Dict[str, Tuple[Tuple[int, ...], str]],
    produce: Callable[[str], np.ndarray],
    max_shard_bytes: int,
) -> None:
    """Write tensors ``layout`` (name -> (shape, dtype name)) as Paddle-layout safetensors,
    one file or shards + ``model.safetensors.index.json``; ``produce(name)`` gives each array
    just before it is written."""
    shards: List[List[str]] = [[]]
    size = total = 0
    for name, (shape, dtype_name) in layout.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype_itemsize(dtype_name)
        if size and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
        total += nbytes
    files = [SAFE_SINGLE] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for file, names in zip(tqdm(files, desc="Writing weights", unit="file", disable=None), shards):
        write_safetensors(
            os.path.join(path, file), {n: layout[n] for n in names}, (produce(n) for n in names), PADDLE_METADATA
        )
    if len(shards) > 1:
        weight_map = {name: file for file, names in zip(files, shards) for name in names}
        with open(os.path.join(path, SAFE_INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def save_weights(model: nn.Layer, path: str, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Write ``model``'s :func:`checkpoint_tensors` as a Paddle-layout safetensors checkpoint, one tensor on the host at a time."""
    os.makedirs(path, exist_ok=True)
    tensors = checkpoint_tensors(model)
    layout = {name: (saved.shape, saved.dtype_name) for name, saved in tensors.items()}
    write_sharded(path, layout, lambda name: tensors[name].produce(), max_shard_bytes)
