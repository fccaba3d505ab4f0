#!/usr/bin/env bash
# Builds `mura` with `--features cuda` on a machine without a GPU or a CUDA install: NVIDIA's
# PyPI wheels carry nvcc, the CUDA headers and CCCL, which is all the build needs. The binary
# opens the driver and the CUDA libraries when it starts (cudarc's dynamic loading), so it runs on
# any machine with an NVIDIA driver and the CUDA 13 runtime libraries, and builds without them.
#
#   bash tools/cuda-build.sh [--check]      # --check: cargo check instead of a release build
#
# Environment: CUDA_VENV (default .venv-cuda) for the toolchain, CUDA_COMPUTE_CAP (default 90,
# H100/H200; 80 for A100, 89 for L4/L40) for the kernels candle compiles. A cold build takes
# about 40 minutes on 2 cores, most of it candle-kernels' PTX.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CUDA_VENV:-.venv-cuda}"
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-crt nvidia-cuda-cccl
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
if [ ! -x "$cu/bin/nvcc" ]; then
  echo "no nvcc under $cu: the wheels' layout changed" >&2
  exit 1
fi
export PATH="$cu/bin:$PATH" CUDA_ROOT="$cu" CUDA_PATH="$cu"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# cudarc knows CUDA versions up to 13.4 and refuses a newer nvcc's version string; the 13.4 API
# is what candle uses.
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
nvcc --version | tail -n 2
if [ "${1:-}" = "--check" ]; then
  cargo check -p mura-cli --features cuda
else
  cargo build --release -p mura-cli --features cuda
  echo "built target/release/mura with CUDA: run it with --device cuda:0"
fi
