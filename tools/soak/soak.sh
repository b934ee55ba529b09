#!/usr/bin/env bash
# Soak: many consecutive checkpoint/restore rounds of the fixture programs.
#
#   tools/soak/soak.sh [ROUNDS] [PROG...]     (default: 100 rounds of counter threads files signals)
#
# Per program: build it (static, as ../shared/fixtures/README.md says), start it
# as pid 1 of its own pid namespace (NS=own, the default) or in the host pid
# namespace (NS=host), then
#   1. ROUNDS rounds of `criu dump` (source killed) + `criu restore -d`;
#   2. ROUNDS `criu dump --leave-running` in a row on the running program.
# After every round it requires: both commands exit 0, the program ticks on
# (two more `ok` ticks within 10 s), no FAIL line, as many live processes of
# the program as before the first round (one, or a tree's), and the root's
# same open-fd set (targets of /proc/PID/fd) as before the first round. Any failure stops the run with the round and the logs.
# Needs root and gcc; run after `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-100}
shift || true
progs=("$@")
[ ${#progs[@]} -gt 0 ] || progs=(counter threads files signals)
ns=${NS:-own}
criu=${CRIU:-$PWD/target/release/criu}
[ -x "$criu" ] || { echo "build first: cargo build --release"; exit 2; }
src=$(cd ../shared/fixtures/progs && pwd)
base=${SOAK_DIR:-/tmp/criu-rs-soak}
rm -rf "$base"; mkdir -p "$base"

ticks() { local n; n=$(grep -cE "^tick [0-9]+ ok" "$1/progress.log" 2>/dev/null) || true; echo "${n:-0}"; }
live_pids() { # live processes running binary $1
    local exe=$1 p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$exe" ] || continue
        grep -q '^State:[[:space:]]*[ZX]' "$p/status" 2>/dev/null && continue
        echo "${p#/proc/}"
    done
}
root_of() { # the live process running $1 whose parent does not (a tree's root)
    local exe=$1 p pp
    for p in $(live_pids "$exe"); do
        pp=$(awk '/^PPid:/{print $2}' "/proc/$p/status" 2>/dev/null)
        [ "$(readlink "/proc/$pp/exe" 2>/dev/null)" = "$exe" ] || echo "$p"
    done
}
fdset() { ls -l "/proc/$1/fd" 2>/dev/null | awk 'NR>1{$1=$2=$3=$4=$5=$6=$7=$8=""; print}' | sed 's/:\[[0-9]*\]//' | sort; }
die() { echo "FAILED: $*"; exit 1; }

wait_ticks() { # work dir, count to exceed by 2
    local w=$1 want=$(( $2 + 2 )) i
    for i in $(seq 500); do
        grep -q FAIL "$w/progress.log" && die "FAIL line in $w/progress.log: $(grep FAIL "$w/progress.log" | head -1)"
        [ "$(ticks "$w")" -ge "$want" ] && return 0
        sleep 0.02
    done
    die "no progress in $w (ticks $(ticks "$w"), wanted $want)"
}

for prog in "${progs[@]}"; do
    d=$base/$prog; w=$d/work; img=$d/img
    mkdir -p "$w" "$img"
    gcc -O2 -static -o "$d/fx-$prog" "$src/$prog.c" -lpthread -lrt
    if [ "$ns" = own ]; then
        (cd "$w" && setsid unshare --pid --fork "$d/fx-$prog" </dev/null >/dev/null 2>&1 &)
    else
        (cd "$w" && setsid "$d/fx-$prog" </dev/null >/dev/null 2>&1 &)
    fi
    for _ in $(seq 200); do [ -e "$w/ready" ] && [ "$(ticks "$w")" -ge 1 ] && break; sleep 0.05; done
    sleep 0.3 # (a tree's children set up)
    pid=$(root_of "$d/fx-$prog")
    [ "$(echo "$pid" | wc -w)" = 1 ] || die "$prog: expected one root process, got '$pid'"
    n0=$(live_pids "$d/fx-$prog" | wc -w)
    fds0=$(fdset "$pid")
    t0=$(date +%s.%N)
    for r in $(seq "$rounds"); do
        rm -rf "$img"; mkdir -p "$img"
        before=$(ticks "$w")
        "$criu" dump -t "$pid" -D "$img" -o dump.log -v4 || die "$prog round $r: dump failed: $(tail -5 "$img/dump.log")"
        "$criu" restore -D "$img" -d -o restore.log -v4 --pidfile "$img/pid" || die "$prog round $r: restore failed: $(tail -5 "$img/restore.log")"
        wait_ticks "$w" "$before"
        pids=$(live_pids "$d/fx-$prog")
        [ "$(echo "$pids" | wc -w)" = "$n0" ] || die "$prog round $r: live processes: '$pids' ($n0 before)"
        pid=$(root_of "$d/fx-$prog")
        [ "$(fdset "$pid")" = "$fds0" ] || die "$prog round $r: fd set changed:
$(diff <(echo "$fds0") <(fdset "$pid"))"
    done
    t1=$(date +%s.%N)
    for r in $(seq "$rounds"); do
        rm -rf "$img"; mkdir -p "$img"
        before=$(ticks "$w")
        "$criu" dump -t "$pid" -D "$img" --leave-running -o dump.log -v4 || die "$prog leave-running $r: dump failed: $(tail -5 "$img/dump.log")"
        wait_ticks "$w" "$before"
        [ "$(root_of "$d/fx-$prog")" = "$pid" ] || die "$prog leave-running $r: process changed"
        [ "$(live_pids "$d/fx-$prog" | wc -w)" = "$n0" ] || die "$prog leave-running $r: live processes changed"
        [ "$(fdset "$pid")" = "$fds0" ] || die "$prog leave-running $r: fd set changed"
    done
    t2=$(date +%s.%N)
    kill -9 $(live_pids "$d/fx-$prog") 2>/dev/null || true
    printf '%s: %d dump+restore rounds in %.1f s, %d --leave-running dumps in %.1f s, last tick %s, no FAIL\n' \
        "$prog" "$rounds" "$(echo "$t1 - $t0" | bc)" "$rounds" "$(echo "$t2 - $t1" | bc)" "$(ticks "$w")"
done
echo "soak passed: ${progs[*]} (NS=$ns, $rounds rounds each)"
