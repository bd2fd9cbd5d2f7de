"""Reading and writing checkpoint files, tensor by tensor.

A small safetensors reader/writer over ``numpy.memmap``: it reads one tensor (or one slice
of one tensor) at a time, so loading never holds two full copies of a model, handles
bfloat16 (which numpy lacks) as raw 16-bit words, and reports a truncated or corrupt file
by name instead of crashing. Paddle ``.pdparams`` files are read whole (that format has
no random access).
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import mmap
import os
import struct
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle

__all__ = [
    "SafetensorsFile",
    "drop_mapped_pages",
    "write_safetensors",
    "to_float32",
    "to_paddle",
    "weight_tensor",
    "weight_from_array",
    "read_pdparams",
    "tensor_to_numpy",
    "dtype_itemsize",
    "safetensors_dtype",
    "CheckpointError",
]


class CheckpointError(ValueError):
    """A checkpoint file or its contents cannot be used; the message names the file and key."""


# safetensors dtype -> numpy storage dtype (bfloat16 is kept as raw uint16 words).
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
          np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
          np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}


def drop_mapped_pages(view: np.ndarray) -> None:
    """Done with the file pages under ``view``, a C-contiguous slice of a :meth:`SafetensorsFile.raw`
    map: they stop counting towards this process's RSS (the page cache keeps them), so that
    converting a large tensor piece by piece never holds all of its file pages (the 3B's float32
    embedding is 1.2 GB). Anything else (an array not backed by a map, a strided view) is left alone."""
    owner = view
    while owner is not None and not isinstance(owner, mmap.mmap):
        owner = getattr(owner, "base", None)
    if owner is None or not view.flags.c_contiguous or view.nbytes == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return  # (no madvise off Linux / macOS)
    begin = view.__array_interface__["data"][0] - np.frombuffer(owner, np.uint8).__array_interface__["data"][0]
    first = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the view only
    last = (begin + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        owner.madvise(mmap.MADV_DONTNEED, first, last - first)


def to_float32(array: np.ndarray, dtype_name: str) -> np.ndarray:
    """Float32 copy of a stored tensor; bfloat16 words are widened exactly (bits << 16)."""
    if dtype_name == "BF16":
        return (np.asarray(array, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(array, dtype=np.float32)


def to_paddle(array: np.ndarray, dtype_name: str, dtype: paddle.dtype) -> paddle.Tensor:
    """A paddle tensor of ``dtype`` holding a stored tensor: bfloat16 words become a bfloat16
    tensor as they are (no float32 copy), other dtypes are widened to float32 and cast."""
    if dtype_name == "BF16" and dtype == paddle.bfloat16:
        return paddle.to_tensor(np.ascontiguousarray(array, dtype=np.uint16)).view(paddle.bfloat16)
    value = paddle.to_tensor(np.ascontiguousarray(to_float32(array, dtype_name)))
    return value if dtype == paddle.float32 else value.astype(dtype)


_HUGE_PAGE = 2 << 20  # x86-64's transparent huge page


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None)  # the C library this process already runs on (madvise of any address)


def weight_tensor(shape: Sequence[int], dtype: Union[str, paddle.dtype]) -> paddle.Tensor:
    """An uninitialised CPU tensor for a weight that every decode step reads in full. On Linux
    its pages fault in as 2 MiB transparent huge pages (``madvise(MADV_HUGEPAGE)`` before the
    first write, where the kernel's THP mode is ``madvise`` or ``always``): a weight stream then
    crosses a page, where the hardware prefetchers stop and the TLB misses, every 2 MiB instead
    of every 4 KiB (a bfloat16 decode step 5-8 % shorter; benchmarks/README.md, "Huge pages").
    Anywhere else, or if the kernel refuses, ordinary pages."""
    tensor = paddle.empty(list(shape), dtype=dtype)
    nbytes = math.prod(shape) * tensor.element_size()
    advice = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only
    if advice is None or not tensor.place.is_cpu_place() or nbytes < 2 * _HUGE_PAGE:
        return tensor
    first = -(-tensor.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE  # whole huge pages inside the tensor only
    last = (tensor.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
    _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), advice)  # refused: ordinary pages
    return tensor


def weight_from_array(array: np.ndarray) -> paddle.Tensor:
    """A :func:`weight_tensor` holding a copy of ``array`` (its dtype; bfloat16 words stay uint16)."""
    tensor = weight_tensor(array.shape, str(array.dtype))
    tensor.set_value(np.ascontiguousarray(array))  # into the tensor's own pages
    return tensor


class SafetensorsFile:
    """Random access to the tensors of one ``.safetensors`` file."""

    def __init__(self, path: str) -> None:
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise CheckpointError(f"{path}: truncated or not a safetensors file (header of {header_len} bytes)")
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
        self.metadata: Dict[str, str] = header.pop("__metadata__", None) or {}
        self._offset = 8 + header_len
        self._entries = header
        data_size = size - self._offset
        for name, entry in header.items():
            if entry.get("dtype") not in _DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
            begin, end = entry["data_offsets"]
            if end > data_size:
                raise CheckpointError(
                    f"{path}: truncated file: tensor {name!r} needs bytes {begin}..{end} but only {data_size} "
                    "bytes of data are present (incomplete download?)"
                )
        self._memmap: Optional[np.memmap] = None

    def keys(self) -> List[str]:
        """Tensor names in the file."""
        return list(self._entries)

    def shape(self, name: str) -> Tuple[int, ...]:
        """Shape of tensor ``name``."""
        return tuple(self._entries[name]["shape"])

    def dtype_name(self, name: str) -> str:
        """safetensors dtype name (``"F32"``, ``"BF16"``, ...) of tensor ``name``."""
        return self._entries[name]["dtype"]

    def raw(self, name: str) -> np.ndarray:
        """Read-only view of the stored tensor (bfloat16 as uint16 words); nothing is copied yet."""
        if self._memmap is None:
            self._memmap = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._offset)
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        return self._memmap[begin:end].view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])

    def close(self) -> None:
        """Release the memory map."""
        self._memmap = None


def write_safetensors(
    path: str,
    layout: Dict[str, Tuple[Tuple[int, ...], str]],
    arrays: Iterable[np.ndarray],
    metadata: Dict[str, str],
) -> None:
    """Write a safetensors file tensor by tensor.

    ``layout`` maps each name to ``(shape, dtype_name)`` in file order; ``arrays`` yields the
    tensors in that order (bfloat16 as uint16 words), so only one is in memory at a time.
    """
    header: Dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, (shape, dtype_name) in layout.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype_itemsize(dtype_name)
        header[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for (name, (shape, dtype_name)), array in zip(layout.items(), arrays):
            if tuple(array.shape) != tuple(shape) or array.dtype != _DTYPES[dtype_name]:
                raise CheckpointError(f"{path}: tensor {name!r} is {array.dtype}{list(array.shape)}, expected {dtype_name}{list(shape)}")
            f.write(np.ascontiguousarray(array).tobytes())
    os.replace(tmp, path)


def dtype_itemsize(dtype_name: str) -> int:
    """Bytes per element of a safetensors dtype name."""
    return np.dtype(_DTYPES[dtype_name]).itemsize


_PADDLE_NAMES = {paddle.float32: "F32", paddle.bfloat16: "BF16", paddle.float16: "F16", paddle.int8: "I8", paddle.uint8: "U8"}


def safetensors_dtype(dtype: paddle.dtype) -> str:
    """The safetensors dtype name a paddle tensor of ``dtype`` is saved as."""
    return _PADDLE_NAMES[dtype]


def tensor_to_numpy(tensor: paddle.Tensor) -> Tuple[np.ndarray, str]:
    """Host copy of a paddle tensor with its safetensors dtype name (bfloat16 as uint16 words)."""
    if tensor.dtype == paddle.bfloat16:
        return tensor.cpu().view(paddle.uint16).numpy(), "BF16"
    array = tensor.cpu().numpy()
    return array, _NAMES[array.dtype]


def read_pdparams(path: str) -> Iterator[Tuple[str, np.ndarray, str]]:
    """Yield ``(name, array, dtype_name)`` from a Paddle ``.pdparams`` state dict."""
    try:
        state = paddle.load(path)
    except Exception as err:  # paddle raises assorted types for damaged pickles
        raise CheckpointError(f"{path}: cannot read Paddle checkpoint ({type(err).__name__}: {err})") from None
    for name in list(state):
        value = state.pop(name)
        if isinstance(value, paddle.Tensor):
            yield (name, *tensor_to_numpy(value))
        else:
            array = np.asarray(value)
            yield name, array, _NAMES[array.dtype]
