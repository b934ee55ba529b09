#!/usr/bin/env bash
# Everything the project checks, from a fresh machine: installs what the tests
# need (Debian packages, cargo-fuzz), then runs the unit, interop and
# real-process tests, the kernel-module VM tests and a short fuzz pass.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

need_apt=()
command -v crit >/dev/null 2>&1 || need_apt+=(criu)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

cargo build --release --workspace
cargo test --release --workspace --no-fail-fast

if [ -x kmod/test.sh ]; then
    kmod/test.sh
fi
if [ -x fuzz/run.sh ]; then
    fuzz/run.sh "${FUZZ_SECONDS:-15}"
fi
