#!/usr/bin/env bash
# Everything the project checks, from a fresh machine: installs what the tests
# need (Debian packages, cargo-fuzz), then runs the unit, interop and
# real-process tests, the kernel-module VM tests and a short fuzz pass.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

# What the tests need from the machine (under CI=true a missing one fails
# the test that needs it, see test-support): Debian's crit and pycriu
# (criu), gcc with static glibc, python3, script(1) (bsdutils), unshare and
# setsid (util-linux), libcriu with protobuf-c's headers (libprotobuf-c-dev: a real RPC client), tar, mkfs.btrfs (btrfs-progs: tfork --root-snapshot btrfs), python3-seccomp
# (io_uring refused by a seccomp filter), iptables (--tcp-established's
# network lock), memcached, apache2, tmux, go and a JDK; kmod/test.sh installs its own (qemu, busybox).
need_apt=()
{ command -v crit && [ -d /usr/lib/python3/dist-packages/pycriu ]; } >/dev/null 2>&1 || need_apt+=(criu)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need_apt+=(libc6-dev)
[ -x /usr/bin/python3 ] || need_apt+=(python3)
command -v script >/dev/null 2>&1 || need_apt+=(bsdutils)
{ command -v unshare && command -v setsid; } >/dev/null 2>&1 || need_apt+=(util-linux)
command -v tar >/dev/null 2>&1 || need_apt+=(tar)
command -v mkfs.btrfs >/dev/null 2>&1 || need_apt+=(btrfs-progs)
/usr/bin/python3 -c 'import seccomp' >/dev/null 2>&1 || need_apt+=(python3-seccomp)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v perl >/dev/null 2>&1 || need_apt+=(perl-base)
command -v xargs >/dev/null 2>&1 || need_apt+=(findutils)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
# a process another tracer holds is refused naming it (tests/files.rs)
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
# libcriu's headers need protobuf-c's (tests/swrk.rs builds a libcriu client)
[ -e /usr/include/protobuf-c/protobuf-c.h ] || need_apt+=(libprotobuf-c-dev)
# the network lock of --tcp-established (iptables rules, as upstream's);
# memcached held across a restore with a client connection
{ command -v iptables-restore && command -v ip6tables-restore; } >/dev/null 2>&1 || need_apt+=(iptables)
command -v memcached >/dev/null 2>&1 || need_apt+=(memcached)
# apache2 with prefork workers as www-data dumped and restored (tests/apache.rs)
{ [ -x /usr/sbin/apache2 ] && [ -e /usr/lib/apache2/modules/mod_mpm_prefork.so ]; } || need_apt+=(apache2)
# a Go and a Java program dumped and restored (tests/go_java.rs)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
# a node program tforked (tests/tfork_runtimes.rs)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
{ command -v javac && command -v java; } >/dev/null 2>&1 || need_apt+=(default-jdk-headless)
# a runc container (busybox) checkpointed and restored with our criu (tests/runc.rs)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
[ -x /usr/bin/busybox ] || need_apt+=(busybox-static)
# podman (runtime runc) checkpointing and restoring one with our criu (tests/podman.rs)
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Every test that cannot run here appends `SKIP binary::test: reason` (or,
# under CI=true, `FAILED (CI=true) ...`) to this file; the summary at the
# end names them all, whatever way the run ends.
mkdir -p target
export CRIU_RS_SKIP_LOG="$PWD/target/skipped-tests.txt"
: >"$CRIU_RS_SKIP_LOG"
skip_summary() {
    local n na
    n=$(grep -c -v '^N/A' "$CRIU_RS_SKIP_LOG" 2>/dev/null || true)
    na=$(grep -c '^N/A' "$CRIU_RS_SKIP_LOG" 2>/dev/null || true)
    if [ "${CI:-}" = true ]; then
        echo "$n skipped: tests whose precondition was missing (CI=true: each failed)"
    else
        echo "$n skipped: tests that did not run"
    fi
    echo "$na not applicable: checks of a CPU feature this CPU has, made only where it lacks it"
    sed 's/^/  /' "$CRIU_RS_SKIP_LOG" 2>/dev/null || true
}
trap skip_summary EXIT

cargo build --release --workspace
cargo test --release --workspace --no-fail-fast

if [ -x kmod/test.sh ]; then
    kmod/test.sh
fi
if [ -x fuzz/run.sh ]; then
    fuzz/run.sh "${FUZZ_SECONDS:-15}"
fi
