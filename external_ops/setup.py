"""Build and install the custom operators of paddlemix_qwen25vl as the module
``paddlemix_qwen25vl_ops``: CPU kernels always, CUDA kernels when paddle is a CUDA
build. See README.md in this folder."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_config import (  # noqa: E402  (needs the path above)
    LD_FLAGS,
    MODULE_NAME,
    NVCC_FLAGS,
    cxx_flags,
    sources,
    with_cuda,
)
from paddle.utils.cpp_extension import CppExtension, CUDAExtension, setup  # noqa: E402

if with_cuda():
    extension = CUDAExtension(
        sources=sources(),
        extra_compile_args={"cxx": cxx_flags(), "nvcc": NVCC_FLAGS},
        extra_link_args=LD_FLAGS,
    )
else:
    extension = CppExtension(
        sources=sources(),
        extra_compile_args={"cxx": cxx_flags()},
        extra_link_args=LD_FLAGS,
    )

setup(name=MODULE_NAME, version="0.1.0", ext_modules=extension)
