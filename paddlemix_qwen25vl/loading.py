"""Where checkpoint weights are found, named and laid out: the one weight-mapping module.

Accepted checkpoints (a local directory or a hub id):

- Hugging Face safetensors, one file or sharded with ``model.safetensors.index.json``, in the
  released key layout (``visual.*``, ``model.*``, ``lm_head.*``) or the transformers >= 4.52
  one (``model.visual.*``, ``model.language_model.*``);
- Paddle checkpoints (PaddleMIX, ``save_pretrained``): the same names with Linear weights
  already ``[in, out]``, as safetensors or ``model_state.pdparams``.

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
    tensor_to_numpy,
    to_float32,
    write_safetensors,
)

__all__ = [
    "resolve_model_path",
    "load_weights",
    "read_checkpoint",
    "TensorSlicing",
    "save_weights",
    "write_sharded",
    "shard_files",
    "checkpoint_name",
    "is_linear_weight",
    "file_is_torch_layout",
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
    found = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".pdparams")))
    if found:
        return [os.path.join(path, f) for f in found]
    raise CheckpointError(
        f"no weights in {path}: expected {SAFE_SINGLE}, {SAFE_INDEX} (+ shards), {PDPARAMS_SINGLE} or other "
        "*.safetensors / *.pdparams files"
    )


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
) -> Iterator[Tuple[str, np.ndarray, str]]:
    """Yield ``(name, array, dtype name)`` for every tensor of checkpoint directory ``path``.

    ``shapes`` are the expected (local, per-rank) Paddle-layout shapes by parameter name.
    Arrays come in Paddle layout (torch Linear weights transposed), in the stored dtype
    (bfloat16 as uint16 words), already cut to this rank's slice; they may be views of a
    memory map, valid until the next tensor is requested. After the last tensor, any
    missing, unexpected or mis-shaped key raises a :class:`CheckpointError` listing them.
    ``ignore_keys`` are names to skip silently (e.g. a tied ``lm_head.weight``).
    """
    full_shapes = {name: slicing.full_shape(name, shape) for name, shape in shapes.items()}
    files = shard_files(path)
    loaded, unexpected, mismatched = set(), [], []
    with tqdm(total=_count_tensors(files), desc=desc, unit="tensor", disable=None) as progress:
        for file in files:
            for key, stored, dtype_name, torch_layout in _iter_file(file, full_shapes):
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
                    mismatched.append(f"{key} {list(stored.shape)} in {os.path.basename(file)} vs {list(full_shapes[name])}")
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


def load_weights(
    model: nn.Layer, path: str, ignore_keys: Tuple[str, ...] = (), slicing: TensorSlicing = TensorSlicing()
) -> None:
    """Stream every weight file of checkpoint directory ``path`` into ``model``'s parameters.

    Tensors are read (only this rank's slice under ``slicing``), converted to the parameter's
    dtype (and transposed for torch Linear weights) and assigned one at a time. Any missing,
    unexpected or mis-shaped key raises a :class:`CheckpointError` listing them, so no parameter
    is left unset (a model from ``build`` has none allocated before). ``ignore_keys`` are
    checkpoint keys to skip silently.
    """
    params = dict(model.named_parameters())
    shapes = {name: tuple(param.shape) for name, param in params.items()}
    for name, value, dtype_name in read_checkpoint(path, shapes, slicing, ignore_keys):
        param = params[name]
        value = _c_contiguous(to_float32(value, dtype_name))
        # float32 goes straight from the (mapped) array into the parameter: no intermediate tensor.
        param.set_value(value if param.dtype == paddle.float32 else paddle.to_tensor(value).astype(param.dtype))
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
    """Write ``model``'s parameters as a Paddle-layout safetensors checkpoint, one tensor on the host at a time."""
    os.makedirs(path, exist_ok=True)
    params = dict(model.named_parameters())
    dtype_names = {paddle.float32: "F32", paddle.bfloat16: "BF16", paddle.float16: "F16"}
    layout = {name: (tuple(p.shape), dtype_names[p.dtype]) for name, p in params.items()}
    write_sharded(path, layout, lambda name: tensor_to_numpy(params[name])[0], max_shard_bytes)
