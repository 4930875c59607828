#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler from PyPI into .cache/cuda (ignored), for build.rs.
# 13.0.x because the GPU machines' driver 580 rejects PTX from newer nvcc
# (CUDA_ERROR_UNSUPPORTED_PTX_VERSION); cccl brings cuda_fp16.h / cuda_bf16.h.
# Prints the nvcc path. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/cuda
nvcc=$dir/nvidia/cu13/bin/nvcc
if [ ! -x "$nvcc" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
fi
"$nvcc" --version | tail -2 >&2
echo "$nvcc"
