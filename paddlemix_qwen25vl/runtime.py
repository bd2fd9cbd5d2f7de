"""Device, dtype and CPU-thread choices, checked once with clear errors."""

from __future__ import annotations

import logging
import os
from typing import NamedTuple, Optional

import paddle

from .cpu import OMP_NUM_THREADS_GIVEN, prepare_process

__all__ = [
    "prepare_cpu",
    "set_num_threads",
    "default_num_threads",
    "use_num_threads_in_this_thread",
    "resolve_precision",
    "Precision",
    "set_device",
    "is_cuda_build",
    "has_gpu",
    "on_gpu",
    "tensor_on_gpu",
    "DTYPES",
]

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


def default_num_threads() -> int:
    """Threads for CPU kernels: ``PADDLEMIX_NUM_THREADS`` or ``OMP_NUM_THREADS`` if set, else every usable core.

    OpenMP's list form (``OMP_NUM_THREADS=4,2``, one count per nesting level) gives its first count.
    The "1" that ``import paddle`` writes over an unset ``OMP_NUM_THREADS`` counts as unset.
    """
    for variable in ("PADDLEMIX_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "").strip()
        if variable == "OMP_NUM_THREADS" and value == "1" and OMP_NUM_THREADS_GIVEN is None:
            value = ""  # Paddle's, not the user's
        if value:
            first = value.split(",")[0].strip()
            if not first.isdigit() or int(first) < 1:
                raise ValueError(f"{variable}={value!r} is not a positive whole number of threads (or OpenMP's list form, e.g. '4,2')")
            return int(first)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_threads_set = False  # by set_num_threads: prepare_cpu then keeps the caller's choice
_num_threads: Optional[int] = None  # what set_num_threads set


def set_num_threads(num_threads: Optional[int] = None) -> int:
    """Set Paddle's CPU math threads (Paddle defaults to one); returns the number set.
    This starts MKL's OpenMP, so :func:`~paddlemix_qwen25vl.cpu.prepare_process` runs first."""
    global _threads_set, _num_threads
    prepare_process()
    num_threads = num_threads or default_num_threads()
    paddle.base.core.set_num_threads(num_threads)
    _threads_set, _num_threads = True, num_threads
    return num_threads


def use_num_threads_in_this_thread() -> int:
    """Give the calling thread the process's CPU thread count (:func:`set_num_threads`'s, else
    :func:`default_num_threads`); returns it. OpenMP keeps the count per thread: a thread that
    did not set it runs Paddle's and the custom operators' parallel loops on OMP_NUM_THREADS
    threads, which Paddle's import made 1. Call it first in every thread that runs the model."""
    num_threads = _num_threads or default_num_threads()
    paddle.base.core.set_num_threads(num_threads)
    return num_threads


def prepare_cpu() -> None:
    """What a model load or a script start does for the CPU, once per process: MKL's settings
    (:func:`~paddlemix_qwen25vl.cpu.prepare_process`: its fast code path on AMD CPUs) and,
    unless :func:`set_num_threads` was called, :func:`default_num_threads` threads.
    Importing the package does neither: both are process-wide."""
    prepare_process()
    if not _threads_set:
        set_num_threads()


# The "are we on a GPU?" questions, each asked here and nowhere else.
def is_cuda_build() -> bool:
    """True when this Paddle build has CUDA support (whether or not a GPU is present)."""
    return paddle.is_compiled_with_cuda()


def has_gpu() -> bool:
    """True when a GPU exists on this machine and this Paddle build can use it (whatever the current device)."""
    return is_cuda_build() and paddle.device.cuda.device_count() > 0


def on_gpu() -> bool:
    """True when Paddle's current device is a GPU."""
    return paddle.get_device().startswith("gpu")


def tensor_on_gpu(x: paddle.Tensor) -> bool:
    """True when ``x`` lives on a GPU."""
    return x.place.is_gpu_place()


def set_device(device: Optional[str]) -> str:
    """Select ``"cpu"``, ``"gpu"`` or ``"gpu:N"`` (None keeps Paddle's default), with a clear error."""
    if device is None:
        return paddle.get_device()
    name = device.lower()
    if name == "cuda" or name.startswith("cuda:"):
        name = "gpu" + name[4:]
    if not (name == "cpu" or name == "gpu" or (name.startswith("gpu:") and name[4:].isdigit())):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'gpu' or 'gpu:N'")
    if name.startswith("gpu") and not is_cuda_build():
        raise ValueError(
            f"device {device!r} requested but this paddle build has no CUDA support; install paddlepaddle-gpu "
            "(see README) or use --device cpu"
        )
    paddle.set_device(name)
    return name


class Precision(NamedTuple):
    """What a model computes in and how its weight-only layers store their weights."""

    compute: str  # activations, norms, biases, and every weight the weight-only layers do not hold
    weights: Optional[str]  # "bfloat16": decoder/vision Linear weights and the embedding in bfloat16; None: in ``compute``


def resolve_precision(requested: Optional[str], checkpoint_dtype: Optional[str] = None) -> Precision:
    """The dtypes for the current device: the one dtype policy of the library.

    ``None`` means float32 on CPU and the checkpoint's dtype (bfloat16 for the released
    weights) on GPU. bfloat16 on CPU keeps the weights of the Linear layers and the embedding
    in bfloat16 and computes in float32 (``Precision("float32", "bfloat16")``: Paddle has no
    bfloat16 matmul kernels there, although ``paddle.amp.is_bfloat16_supported()`` says
    otherwise; see :mod:`.quantization`). float16 on CPU falls back to float32 with a warning
    (nothing reads float16 weights on CPU; the float32 copy holds exactly the checkpoint's
    values). bfloat16 on a GPU without it (compute capability < 8.0) falls back to float16
    with a warning. Unknown names raise.
    """
    if requested is None:
        if not on_gpu():
            return Precision("float32", None)
        requested = checkpoint_dtype or "bfloat16"
    name = str(requested).replace("paddle.", "")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {requested!r}; use one of {', '.join(DTYPES)}")
    if not on_gpu():
        if name == "float16":
            logger.warning("float16 has no CPU matmul kernels in Paddle: running in float32 instead")
        return Precision("float32", "bfloat16" if name == "bfloat16" else None)
    if name == "bfloat16" and not paddle.amp.is_bfloat16_supported():
        logger.warning("this GPU has no bfloat16 support (needs compute capability >= 8.0): running in float16 instead")
        return Precision("float16", None)
    return Precision(name, None)
