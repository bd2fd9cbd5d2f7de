"""Sources and compiler flags of the custom operators, shared by ``setup.py`` and the
JIT path ``paddlemix_qwen25vl.ops.build_ops`` so both build the same library."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterable

import paddle

CSRC = Path(__file__).resolve().parent / "csrc"

# Module name of the installed package (``import paddlemix_qwen25vl_ops``).
MODULE_NAME = "paddlemix_qwen25vl_ops"

CPU_SOURCES = ["flash_attn_varlen_op.cc", "flash_attn_varlen_cpu.cc", "weight_only_cpu.cc", "rotary_cpu.cc"]
CUDA_SOURCES = ["flash_attn_varlen_cuda_binding.cc", "flash_attn_varlen_cuda.cu"]

# No -march=native: the library is plain x86-64; the CPU kernels carry AVX-512 and AVX2+FMA
# copies of their hot functions and pick one per call (PADDLEMIX_CPU_ISA caps the choice).
# -Wno-psabi silences GCC's note that 64-byte vector arguments change ABI under
# targets without AVX-512; those helpers are always inlined.
CXX_FLAGS = ["-O3", "-fopenmp", "-Wno-psabi"]
# One OpenMP runtime in the process: Paddle's own operators and MKL run on the Intel OpenMP
# (libiomp5) it ships, which also implements GCC's GOMP entry points, so the operators link
# against it rather than GCC's libgomp. With two runtimes each one's idle threads spun on the
# cores the other's team needed (benchmarks/README.md, "Two OpenMP runtimes").
_PADDLE_IOMP = Path(paddle.__file__).resolve().parent / "libs" / "libiomp5.so"
if _PADDLE_IOMP.is_file():
    LD_FLAGS = [f"-L{_PADDLE_IOMP.parent}", "-l:libiomp5.so", f"-Wl,-rpath,{_PADDLE_IOMP.parent}"]
else:  # a Paddle build without MKL's runtime
    LD_FLAGS = ["-fopenmp"]
# The CUDA kernels run where Paddle has no flash kernel: V100 (sm_70) and T4 (sm_75), as well as
# A100/H100 (sm_80/sm_90, for fp32 and as the fallback). Machine code for each of these the
# toolkit still compiles (CUDA 13 dropped sm_70), plus PTX of the newest, which the driver
# compiles for later GPUs (sm_100, sm_120) that would otherwise find "no kernel image".
CUDA_ARCHS = (70, 75, 80, 90)


def nvcc_flags(toolkit_archs: Iterable[int]) -> list[str]:
    """nvcc flags for the CUDA_ARCHS that ``toolkit_archs`` (``nvcc --list-gpu-code``) includes;
    fp32 accumulation everywhere."""
    archs = [arch for arch in CUDA_ARCHS if arch in set(toolkit_archs)]
    if not archs:
        raise RuntimeError(f"this nvcc compiles none of sm_{', sm_'.join(map(str, CUDA_ARCHS))}")
    machine_code = [f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in archs]
    ptx = f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"
    return ["-O3", "--use_fast_math", *machine_code, ptx]


def toolkit_archs() -> list[int]:
    """The sm_XX the nvcc that Paddle's extension builder uses can compile (CUDA_ARCHS if it has no such list)."""
    from paddle.utils.cpp_extension.extension_utils import find_cuda_home

    nvcc = os.path.join(find_cuda_home() or "/usr/local/cuda", "bin", "nvcc")
    try:
        codes = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return list(CUDA_ARCHS)
    return [int(code[3:]) for code in codes if code.startswith("sm_") and code[3:].isdigit()]


NVCC_FLAGS = nvcc_flags(toolkit_archs() if paddle.is_compiled_with_cuda() else CUDA_ARCHS)


def with_cuda() -> bool:
    """True when the installed paddle is a CUDA build: then the CUDA kernels are built too."""
    return paddle.is_compiled_with_cuda()


def sources() -> list[str]:
    """Absolute paths of the files to compile for this paddle build."""
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda() else [])
    return [str(CSRC / name) for name in names]


def cxx_flags() -> list[str]:
    """Host compiler flags; PMQ_WITH_CUDA switches on the CUDA dispatch in the op."""
    return CXX_FLAGS + (["-DPMQ_WITH_CUDA"] if with_cuda() else [])
