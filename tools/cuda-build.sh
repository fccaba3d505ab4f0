#!/usr/bin/env bash
# Builds `mura` with `--features cuda` on a machine without a GPU or a CUDA install: NVIDIA's
# PyPI wheels carry nvcc, the CUDA headers and CCCL, which is all the build needs. The binary
# opens the driver and the CUDA libraries when it starts (cudarc's dynamic loading), so it runs on
# any machine with an NVIDIA driver and the CUDA 13 runtime libraries, and builds without them.
#
#   bash tools/cuda-build.sh [--check]      # --check: cargo check instead of a release build
#   bash tools/cuda-build.sh --env          # only the toolchain, and $CUDA_VENV/cuda-env.sh to source
#
# Features: MURA_CUDA_FEATURES (default `cuda,cudnn,nccl`: cuDNN convolutions, and NCCL for
# data-parallel ranks on several GPUs; both libraries are opened only when used).
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
if [ "${1:-}" = "--env" ]; then
  printf 'export PATH=%q:"$PATH" CUDA_ROOT=%q CUDA_PATH=%q CUDA_COMPUTE_CAP=%q CUDARC_CUDA_VERSION=%q\n' \
    "$cu/bin" "$cu" "$cu" "$CUDA_COMPUTE_CAP" "$CUDARC_CUDA_VERSION" > "$venv/cuda-env.sh"
  echo "source $venv/cuda-env.sh for the CUDA toolchain"
  exit 0
fi
features="${MURA_CUDA_FEATURES:-cuda,cudnn,nccl}"
if [ "${1:-}" = "--check" ]; then
  # The library crates' tests too (they hold the device paths' own tests), with mura-cli's
  # features, which reach them.
  qualified=$(echo "$features" | sed 's/[^,]*/mura-cli\/&/g')
  cargo check -p mura-cli -p mura-train -p mura-models -p mura-kernels --all-targets \
    --features "$qualified"
else
  cargo build --release -p mura-cli --features "$features"
  echo "built target/release/mura with CUDA: run it with --device cuda:0"
fi
