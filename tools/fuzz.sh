#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a fixed time (not part of CI's tests).
#
#   bash tools/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). SANITIZER=address turns
# AddressSanitizer on (slower to build and run); the default `none` still catches panics, aborts,
# stack overflows, out-of-memory (-rss_limit_mb) and timeouts. Crashing inputs land in
# fuzz/artifacts/<target>/; copy each into fuzz/regressions/<target>/ once fixed, where the
# workspace test replays it (mura-train/tests/fuzz_regressions.rs, through fuzz/harness/).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(index_csv run_config safetensors decode_augment)
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mura-fuzz-target}
sanitizer=${SANITIZER:-none}
cargo +nightly fuzz build -s "$sanitizer"
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    [ -d "regressions/$t" ] && seeds+=("regressions/$t")
    echo "== $t: ${seconds}s"
    if ! cargo +nightly fuzz run -s "$sanitizer" "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
        -print_final_stats=1 2>&1 | tail -n 25; then
        status=1
        echo "!! $t found a crash: see fuzz/artifacts/$t/"
    fi
done
exit $status
