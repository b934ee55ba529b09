#!/usr/bin/env bash
# Build and run every fuzz target for SECONDS each (default 20), seeded with
# the upstream fixture images. Exits non-zero if any target crashed; crash
# inputs are left in fuzz/artifacts/TARGET/.
#
# usage: fuzz/run.sh [SECONDS] [TARGET...]
# env:   CRIT_FIXTURES  fixture dir (default ../shared/fixtures/upstream)
#        FUZZ_TARGET_DIR cargo target dir (default: the workspace's target/fuzz)
# Needs cargo-fuzz (installed from crates.io if missing); nightly-only flags
# are enabled on the stable toolchain with RUSTC_BOOTSTRAP=1.
set -uo pipefail
secs=${1:-20}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
export RUSTC_BOOTSTRAP=1
fixtures=${CRIT_FIXTURES:-$root/../shared/fixtures/upstream}
tdir=${FUZZ_TARGET_DIR:-$root/target/fuzz}

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd "$here" && cargo fuzz list)
fi

if [ -d "$fixtures" ]; then
    python3 "$here/seed.py" "$fixtures" "$here/corpus" "$root/images-proto/src/magic.rs" || exit 1
elif [ "${CI:-}" = true ]; then
    echo "fuzz/run.sh: no fixtures at $fixtures: under CI=true the corpora must be seeded" >&2
    exit 1
else
    echo "SKIP fuzz seeding: no fixtures at $fixtures; fuzzing from empty corpora"
    [ -n "${CRIU_RS_SKIP_LOG:-}" ] && echo "SKIP fuzz/run.sh seeding: no fixtures at $fixtures" >>"$CRIU_RS_SKIP_LOG"
fi

cd "$here" || exit 1
# -s none: images-proto forbids unsafe code, so ASan adds cost, not checks;
# -a: debug assertions, so arithmetic overflow is a crash.
flags=(-s none -a --target-dir "$tdir")
cargo fuzz build "${flags[@]}" || exit 1

failed=()
for t in "${targets[@]}"; do
    echo "=== $t: ${secs}s"
    mkdir -p "corpus/$t" "artifacts/$t"
    if ! cargo fuzz run "${flags[@]}" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -max_len=1048576 \
        -print_final_stats=1 2>&1 | tail -n 40; then
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "CRASHED: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "all ${#targets[@]} targets ran ${secs}s without a crash"
