#!/usr/bin/env bash
# The device check of the CUDA build, in two halves:
#
#   bash tools/gpu-check.sh prepare     # where the crates and the CUDA toolchain can be had
#   bash tools/gpu-check.sh run         # on the machine with the GPU (no network needed)
#
# `prepare` builds, with tools/cuda-build.sh's toolchain and features, the release `mura` and the
# test binaries that hold the device paths' tests, and puts them in gpu-check/ (git-ignored).
# `run` uses only gpu-check/ and ../shared: it
#   1. runs the generic paths of every op on cuda:0 against the CPU kernels (outputs and every
#      gradient), the zoo's PyTorch fixtures through the generic paths on cuda:0, and the NCCL
#      all-reduce over the machine's GPUs;
#   2. trains the demo's recipe on the CPU and on cuda:0 from the same data and prints both test
#      scores (the study AUCs should agree within the noise of a 200-study test split);
#   3. prints the bench table: images/s of DenseNet-121/169, ResNet-50 and Inception-v3, train
#      and infer, batch 32 and 64, mura against ../shared/peers/models.py (PyTorch eager, TF32 and
#      cuDNN benchmark on) when PyTorch is installed.
# Everything it prints also goes to ${OUT:-gpu-check/out}/gpu-check.md. Budget: under 8 minutes
# on one H100 (the bench's iterations are few; raise ITERS for steadier figures).
set -euo pipefail
cd "$(dirname "$0")/.."
pack=gpu-check
features="${MURA_CUDA_FEATURES:-cuda,cudnn,nccl}"

prepare() {
  # The toolchain of tools/cuda-build.sh (it installs it on first use), then release builds.
  bash tools/cuda-build.sh --env >/dev/null
  # shellcheck disable=SC1091
  source "${CUDA_VENV:-.venv-cuda}/cuda-env.sh"
  cargo build --release -p mura-cli --features "$features"
  local qualified
  qualified=$(echo "$features" | sed 's/[^,]*/mura-train\/&/g')
  rm -rf "$pack" && mkdir -p "$pack/bin"
  cargo test --release --no-run --message-format=json \
    -p mura-kernels -p mura-models -p mura-train --features "$qualified" \
    | python3 -c '
import json, shutil, sys
want = {("mura-kernels", "mura_kernels"): "kernels", ("mura-models", "models"): "models",
        ("mura-train", "parallel"): "parallel"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    pkg = m["package_id"].split("#")[0].rsplit("/", 1)[-1].split("@")[0]
    name = want.get((pkg, m["target"]["name"]))
    if name:
        shutil.copy(m["executable"], "'"$pack"'/bin/" + name)
'
  cp "${CARGO_TARGET_DIR:-target}/release/mura" "$pack/bin/mura"
  # Without their symbols the binaries travel lighter (the CUDA kernels' PTX stays inside).
  command -v strip >/dev/null && strip "$pack"/bin/*
  ls -la "$pack/bin"
  echo "gpu-check/ ready: copy it with the repository to the GPU machine and run: bash tools/gpu-check.sh run"
}

# Runs a step of the check, noting a failure and going on to the next.
failed=()
step() {
  local what="$1"
  shift
  if ! "$@"; then
    echo "FAILED: $what"
    failed+=("$what")
  fi
}

run() {
  local out="${OUT:-$pack/out}" bin="$pack/bin" iters="${ITERS:-5}"
  # The PyTorch peer: ../shared beside the checkout, or a copy carried inside it.
  local peer="${PEER:-../shared/peers/models.py}"
  [ -f "$peer" ] || peer=shared/peers/models.py
  mkdir -p "$out"
  exec > >(tee "$out/gpu-check.md") 2>&1
  echo "# GPU check $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  echo
  echo "## Ops and the zoo on cuda:0 against the CPU (tolerances as on the CPU)"
  # The test binaries find their fixtures beside the crate, as cargo test runs them.
  step "ops on cuda:0" bash -o pipefail -c "cd mura-kernels && MURA_TEST_DEVICE=cuda:0 ../$bin/kernels generic:: -q"
  step "zoo on cuda:0" bash -o pipefail -c "cd mura-models && MURA_TEST_DEVICE=cuda:0 ../$bin/models generic_path -q"
  step "NCCL" bash -o pipefail -c "cd mura-train && ../$bin/parallel nccl --ignored -q"
  echo
  echo "## The demo's recipe, CPU and cuda:0, same data"
  local work="$out/demo"
  rm -rf "$work"
  step "demo on the CPU" bash -o pipefail -c "$bin/mura demo --out $work --quiet | tail -n 4"
  step "demo recipe on cuda:0" "$bin/mura" train --config configs/demo.toml --data "$work/data" \
    --device cuda:0 --out "$work" --name gpu --quiet
  step "evaluate the cuda:0 run" bash -o pipefail -c "$bin/mura evaluate $work/gpu --bootstrap 0 | tail -n 6"
  echo
  echo "## Bench: images/s on cuda:0 (mura / PyTorch eager)"
  local torch=0
  [ -f "$peer" ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null && torch=1
  echo "| model | mode | batch | mura | PyTorch | ratio |"
  echo "|---|---|---|---|---|---|"
  for arch in densenet121 densenet169 resnet50 inception_v3; do
    for mode in train infer; do
      for batch in 32 64; do
        local ours theirs="" ratio=""
        ours=$("$bin/mura" bench model "$arch" --device cuda:0 --mode "$mode" --batch "$batch" \
          --iters "$iters" --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["images_per_sec"], 1))') \
          || { ours=failed; failed+=("bench $arch $mode $batch"); }
        if [ "$torch" = 1 ]; then
          theirs=$(python3 "$peer" "$arch" --device cuda --mode "$mode" \
            --batch "$batch" --iters "$iters" --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["images_per_sec"], 1))') \
            || theirs=failed
          ratio=$(python3 -c "print(f'{$ours / $theirs:.2f}×')" 2>/dev/null || true)
        fi
        echo "| $arch | $mode | $batch | $ours | ${theirs:-no PyTorch} | $ratio |"
      done
    done
  done
  echo
  if [ "${#failed[@]}" -gt 0 ]; then
    echo "Failed: ${failed[*]}"
    return 1
  fi
  echo "Every step passed."
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: bash tools/gpu-check.sh prepare|run" >&2; exit 2 ;;
esac
