#!/usr/bin/env bash
# Compile-check the CUDA kernels without a GPU: `nvcc -c` of the .cu files for
# sm_80 (A100) and sm_90 (H100). The .cu files include no Paddle header, so this
# works with a bare CUDA toolkit. Register spills are reported as warnings.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for arch in 80 90; do
  for src in "$here"/csrc/*.cu; do
    "$nvcc" -std=c++17 -O3 -Werror all-warnings -Xptxas -warn-spills \
      -gencode "arch=compute_${arch},code=sm_${arch}" \
      -c "$src" -o "$out/$(basename "$src" .cu)_sm${arch}.o"
    echo "ok: $(basename "$src") sm_${arch}"
  done
done
