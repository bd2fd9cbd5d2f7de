"""What this CPU can execute, checked at run time, and the one switch that caps it.

Machines of the same kind differ: some have AVX-512, many only AVX2 + FMA (AMD servers
before Zen 4, recent Intel client CPUs, many cloud VMs). Code that assumes an instruction
set dies with "Illegal instruction" elsewhere: Paddle 3.3.1's fused RMSNorm CPU kernel, for
one, executes AVX-512 without checking. So every fast path asks :func:`cpu_isa` first.

``PADDLEMIX_CPU_ISA`` caps the instruction set this library's code paths use:

* ``auto`` (or unset): the best the CPU has;
* ``avx2``: what an AVX2-only machine runs (no Paddle fused kernels that need AVX-512, the
  custom operators' AVX2 code), so an AVX-512 machine can test that path;
* ``baseline``: plain x86-64 (the custom operators' SSE2 code);
* ``avx512``: the same as ``auto`` on a CPU that has it (never more than the CPU has).

The custom operators read the same variable at every call.

Paddle's bundled MKL runs float32 matrix products on its generic code path on non-Intel CPUs
(a third of the machine's speed on an AMD EPYC); :func:`enable_fast_mkl_on_amd` points it at
its AVX2 code there (``PADDLEMIX_MKL_AMD_FAST=0`` opts out); :func:`prepare_process` does so
before the first one. MKL's Intel OpenMP threads keep their default idling (``KMP_BLOCKTIME``
unset: they spin 200 ms before they sleep): the custom operators run on the same runtime
(external_ops/build_config.py), so those spinning threads are the ones the next operator needs.
"""

from __future__ import annotations

import functools
import os
import platform
import sys

__all__ = [
    "ISA_ENV",
    "ISA_LEVELS",
    "MKL_FAST_ENV",
    "cpu_isa",
    "detected_isa",
    "cpu_description",
    "enable_fast_mkl_on_amd",
    "prepare_process",
    "fused_rms_norm_allowed",
]

ISA_ENV = "PADDLEMIX_CPU_ISA"
MKL_FAST_ENV = "PADDLEMIX_MKL_AMD_FAST"
MKL_CPU_TYPE_ENV = "MKL_DEBUG_CPU_TYPE"
MKL_AVX2 = "5"  # MKL_DEBUG_CPU_TYPE's value for its AVX2 code path
BLOCKTIME_ENV = "KMP_BLOCKTIME"  # Intel OpenMP: ms an idle thread spins before it sleeps (default 200)
ISA_LEVELS = ("baseline", "avx2", "avx512")  # each a superset of the one before


def _omp_num_threads_given() -> str | None:
    """``OMP_NUM_THREADS`` as this process was given it. ``import paddle`` writes "1" over an
    unset variable, so once Paddle is loaded the variable is read from the environment the
    process started with (``/proc/self/environ``, Linux); elsewhere the current value stands."""
    if "paddle" not in sys.modules:
        return os.environ.get("OMP_NUM_THREADS")
    try:
        with open("/proc/self/environ", "rb") as environ:
            entries = environ.read().split(b"\0")
    except OSError:
        return os.environ.get("OMP_NUM_THREADS")
    for entry in entries:
        if entry.startswith(b"OMP_NUM_THREADS="):
            return entry.split(b"=", 1)[1].decode(errors="replace")
    return None


# Read when the package is imported (its first import, before Paddle's where it can be).
OMP_NUM_THREADS_GIVEN = _omp_num_threads_given()


@functools.lru_cache(maxsize=None)
def cpu_features() -> dict:
    """numpy's run-time CPU feature table (``{"AVX2": True, "AVX512F": False, ...}``)."""
    try:
        from numpy.core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy >= 2 moved it
        from numpy._core._multiarray_umath import __cpu_features__
    return dict(__cpu_features__)


@functools.lru_cache(maxsize=None)
def detected_isa() -> str:
    """The best level of :data:`ISA_LEVELS` this CPU executes."""
    import paddle

    features = cpu_features()
    if features.get("AVX512F") and paddle.base.core.supports_avx512f():
        return "avx512"
    if features.get("AVX2") and features.get("FMA3"):
        return "avx2"
    return "baseline"


def cpu_isa() -> str:
    """The instruction-set level to use: :func:`detected_isa`, capped by ``PADDLEMIX_CPU_ISA``."""
    requested = os.environ.get(ISA_ENV, "").strip().lower()
    detected = detected_isa()
    if requested in ("", "auto"):
        return detected
    if requested not in ISA_LEVELS:
        raise ValueError(f"{ISA_ENV}={requested!r} is not one of auto, {', '.join(reversed(ISA_LEVELS))}")
    return min(requested, detected, key=ISA_LEVELS.index)


def fused_rms_norm_allowed() -> bool:
    """Paddle's fused RMSNorm CPU kernel executes AVX-512 unconditionally (SIGILL without it)."""
    return cpu_isa() == "avx512"


@functools.lru_cache(maxsize=None)
def cpu_vendor_and_model() -> tuple:
    """(vendor id, model name) from ``/proc/cpuinfo``; ``platform`` values elsewhere."""
    vendor, model = "", platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key.strip() == "model name":
                    model = value.strip()
                    break
    except OSError:
        pass
    return vendor, model


def enable_fast_mkl_on_amd() -> bool:
    """On an AMD CPU with AVX2 and FMA, set ``MKL_DEBUG_CPU_TYPE=5`` so Paddle's MKL runs its
    AVX2 kernels instead of its generic ones; returns whether that path is asked for.

    Left alone when the variable is already set, when ``PADDLEMIX_MKL_AMD_FAST=0``, on other
    CPUs and under ``PADDLEMIX_CPU_ISA=baseline``. MKL reads the variable at its first matrix
    product, so this must run before the process's first one (model loads and scripts call it first).
    """
    if MKL_CPU_TYPE_ENV in os.environ:
        return os.environ[MKL_CPU_TYPE_ENV] == MKL_AVX2
    opted_out = os.environ.get(MKL_FAST_ENV, "1").strip().lower() in ("0", "false", "no", "off")
    if opted_out or cpu_vendor_and_model()[0] != "AuthenticAMD" or cpu_isa() == "baseline":
        return False
    os.environ[MKL_CPU_TYPE_ENV] = MKL_AVX2
    return True


def prepare_process() -> None:
    """The process-wide settings for Paddle's MKL, before the first matrix product:
    :func:`enable_fast_mkl_on_amd`."""
    enable_fast_mkl_on_amd()


def mkl_code_path() -> str:
    """Which MKL code path this process asked for, for benchmark records."""
    value = os.environ.get(MKL_CPU_TYPE_ENV)
    if value is None:
        return "MKL's own choice (generic on non-Intel CPUs)"
    return f"{MKL_CPU_TYPE_ENV}={value}" + (" (AVX2 kernels)" if value == MKL_AVX2 else "")


def cpu_description() -> dict:
    """What benchmarks record about the CPU: vendor, model, instruction sets, level in use."""
    vendor, model = cpu_vendor_and_model()
    features = cpu_features()
    isa_features = ("SSE42", "AVX", "AVX2", "FMA3", "AVX512F", "AVX512BW", "AVX512_BF16", "AVX512_VNNI", "AMX_TILE")
    return {
        "vendor": vendor,
        "model": model,
        "instruction_sets": [name for name in isa_features if features.get(name)],
        "isa_in_use": cpu_isa(),
        "mkl_code_path": mkl_code_path(),
        "mkl_idle_threads": f"{BLOCKTIME_ENV}={os.environ.get(BLOCKTIME_ENV, 'unset (200 ms spin)')}",
    }
