"""Sources and compiler flags of the custom operators, shared by ``setup.py`` and the
JIT path ``paddlemix_qwen25vl.ops.build_ops`` so both build the same library."""
from __future__ import annotations

from pathlib import Path

import paddle

CSRC = Path(__file__).resolve().parent / "csrc"

# Module name of the installed package (``import paddlemix_qwen25vl_ops``).
MODULE_NAME = "paddlemix_qwen25vl_ops"

CPU_SOURCES = ["flash_attn_varlen_op.cc", "flash_attn_varlen_cpu.cc"]
CUDA_SOURCES = ["flash_attn_varlen_cuda_binding.cc", "flash_attn_varlen_cuda.cu"]

# No -march=native: the library is plain x86-64; the CPU kernels carry AVX-512 and AVX2+FMA
# copies of their hot functions and pick one per call (PADDLEMIX_CPU_ISA caps the choice).
# -Wno-psabi silences GCC's note that 64-byte vector arguments change ABI under
# targets without AVX-512; those helpers are always inlined.
CXX_FLAGS = ["-O3", "-fopenmp", "-Wno-psabi"]
LD_FLAGS = ["-fopenmp"]
# fp32 accumulation everywhere; sm_80 (A100) and sm_90 (H100) are the targets.
NVCC_FLAGS = [
    "-O3",
    "--use_fast_math",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
]


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
