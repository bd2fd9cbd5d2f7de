"""Finding the compiled custom operators: the installed module, or a JIT build.

Two ways to get the ops:

* ``pip install --no-build-isolation ./external_ops`` (or ``python setup.py install``
  inside ``external_ops/``) installs the module ``paddlemix_qwen25vl_ops``; it is
  imported on first use.
* :func:`build_ops` compiles the same sources just in time with
  ``paddle.utils.cpp_extension.load`` into ``~/.cache/paddlemix_qwen25vl/ops/<hash of the
  sources, headers and flags>`` (reused while they are unchanged) from the ``external_ops/``
  sources that ship with the package (or a source checkout's).

Without either, callers use the pure-paddle fallback; :func:`warn_fallback_once` logs
that once per process.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import logging
from pathlib import Path
from types import ModuleType

from ..log import warn_once
from ..resources import resource_path

logger = logging.getLogger(__name__)

MODULE_NAME = "paddlemix_qwen25vl_ops"
BUILD_DIR = Path.home() / ".cache" / "paddlemix_qwen25vl" / "ops"
EXTERNAL_OPS_DIR = resource_path("external_ops")

# None until the first lookup; then the loaded module, or False if there is none.
_ops: ModuleType | bool | None = None


def get_ops() -> ModuleType | None:
    """The loaded operator module, importing the installed one on first call."""
    global _ops
    if _ops is None:
        try:
            _ops = importlib.import_module(MODULE_NAME)
        except ImportError:
            _ops = False
    return _ops or None


def has_flash_attn_op() -> bool:
    """Whether the compiled ``flash_attn_varlen`` operator is available in this process."""
    return get_ops() is not None


def _load_build_config() -> ModuleType:
    config_path = EXTERNAL_OPS_DIR / "build_config.py"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: this installation of paddlemix_qwen25vl lacks the operator "
            "sources; reinstall it (`pip install .` from a checkout) or install the ops with "
            "`pip install --no-build-isolation ./external_ops`"
        )
    spec = importlib.util.spec_from_file_location("paddlemix_qwen25vl_ops_build_config", config_path)
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    return config


def build_ops(verbose: bool = False) -> ModuleType:
    """Compile (or reuse the cached build of) the custom operators and load them.

    Compiles C++ (and CUDA) sources the first time; later calls with unchanged sources
    reuse that build. Returns the already loaded module if the
    ops are installed or were built before in this process (paddle cannot register the
    same operator twice).
    """
    global _ops
    existing = get_ops()
    if existing is not None:
        return existing
    from paddle.utils.cpp_extension import load

    config = _load_build_config()
    build_dir = BUILD_DIR / _sources_digest(config)
    build_dir.mkdir(parents=True, exist_ok=True)
    # One build at a time per directory: processes that start together (the ranks of a
    # tensor-parallel launch, a server next to a script) would otherwise compile into the same
    # files at once and fail. The ones that wait then find the build done and only load it.
    with open(build_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _ops = load(
            name=MODULE_NAME,
            sources=config.sources(),
            extra_cxx_cflags=config.cxx_flags(),
            extra_cuda_cflags=config.NVCC_FLAGS,
            extra_ldflags=config.LD_FLAGS,
            build_directory=str(build_dir),
            verbose=verbose,
        )
    return _ops


def _sources_digest(config: ModuleType) -> str:
    """A short hash of every file under ``csrc/`` (headers included) and the flags: paddle's
    own rebuild check looks at the listed sources only, so an edited header alone would
    otherwise reuse a stale library."""
    digest = hashlib.sha256()
    for path in sorted(config.CSRC.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(" ".join(config.cxx_flags() + config.NVCC_FLAGS + config.LD_FLAGS).encode())
    return digest.hexdigest()[:16]


def warn_fallback_once() -> None:
    """Log, once per process, that attention runs on the slower pure-paddle fallback."""
    warn_once(
        logger,
        "paddlemix_qwen25vl custom ops are not built: varlen attention uses the slower "
        "pure-paddle fallback (per-segment matmul/softmax). Build them with "
        "`pip install --no-build-isolation ./external_ops` or paddlemix_qwen25vl.ops.build_ops().",
    )
