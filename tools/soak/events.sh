#!/usr/bin/env bash
# Soak of the event objects: ROUNDS consecutive checkpoint/restore rounds of
# engine/tests/progs/evobjs.c holding every event object it knows (eventfds,
# timerfds incl. an expired unread periodic one, signalfds, nested epoll sets
# with a moved target, inotify, fanotify).
#
#   tools/soak/events.sh [ROUNDS]      (default 100)
#
# Odd rounds dump (the source killed), even rounds dump --leave-running and
# kill the source after; every round restores with `criu restore -d`. Each
# dump is taken right after a tick 5k+1, when the 20 ms timer (fd 19) has
# expired and is unread. After every round it requires: both commands exit
# 0, the program ticks on, no FAIL line, one live process of the program,
# and the same fd set (targets of /proc/PID/fd, pipe inodes aside) as before
# the first round. Any failure stops the run with the round and the logs.
# Needs root and gcc; run after `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-100}
criu=${CRIU:-$PWD/target/release/criu}
[ -x "$criu" ] || { echo "build first: cargo build --release"; exit 2; }
base=${SOAK_DIR:-/tmp/criu-rs-soak-events}
rm -rf "$base"; mkdir -p "$base/work"
bin=$base/evobjs
gcc -O2 -static -Wall -o "$bin" engine/tests/progs/evobjs.c -lrt
work=$base/work

last_tick() { tail -n 1 "$work/progress.log" | awk '$1 == "tick" { print $2 }'; }
live() { # live processes running $bin
    local p
    for p in $(pgrep -x evobjs || true); do
        if [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$bin" ]; then echo "$p"; fi
    done
}
fdset() { local p=$1 f; for f in /proc/$p/fd/*; do echo "${f##*/} $(readlink "$f" | sed 's/^pipe:\[[0-9]*\]$/pipe/')"; done | sort -n; }
fail() { echo "round $round: $*"; tail -n 3 "$work/progress.log"; exit 1; }
cleanup() {
    for p in $(live); do kill -9 "$p"; done
    rm -f "/dev/shm/evobjs-$(printf %x "$(stat -c %i "$work")")-"{m,h}
}
trap cleanup EXIT

round=0
(cd "$work" && unshare --pid --fork setsid "$bin" eventfd semaphore bigcount timerfd periodic signalfd epoll nested moved inotify fanotify \
    </dev/null >/dev/null 2>&1 &)
for _ in $(seq 100); do [ -n "$(last_tick)" ] && break; sleep 0.1; done
[ -n "$(last_tick)" ] || fail "the program did not start"
pid=$(live)
fds=$(fdset "$pid")
start=$(date +%s.%N)
for round in $(seq "$rounds"); do
    img=$base/img; rm -rf "$img"; mkdir -p "$img"
    for _ in $(seq 200); do [ $(( $(last_tick) % 5 )) -eq 1 ] && break; sleep 0.01; done
    if [ $((round % 2)) -eq 1 ]; then
        "$criu" dump -t "$pid" -D "$img" -o dump.log || fail "dump failed: $(tail -n 3 "$img/dump.log")"
    else
        "$criu" dump -t "$pid" -D "$img" -o dump.log --leave-running || fail "dump failed: $(tail -n 3 "$img/dump.log")"
        kill -9 "$pid"
    fi
    for _ in $(seq 200); do [ -z "$(live)" ] && break; sleep 0.01; done
    "$criu" restore -D "$img" -d -o restore.log || fail "restore failed: $(tail -n 3 "$img/restore.log")"
    t=$(last_tick)
    for _ in $(seq 100); do [ "$(last_tick)" -ge $((t + 2)) ] 2>/dev/null && break; sleep 0.1; done
    grep -q FAIL "$work/progress.log" && fail "FAIL in progress.log"
    [ "$(last_tick)" -ge $((t + 2)) ] || fail "no ticks after restore"
    n=$(live | wc -l); [ "$n" -eq 1 ] || fail "$n live processes"
    pid=$(live)
    [ "$(fdset "$pid")" = "$fds" ] || fail "fd set changed: $(diff <(echo "$fds") <(fdset "$pid") || true)"
done
echo "events soak: $rounds rounds ok in $(echo "$(date +%s.%N) - $start" | bc) s, last: $(tail -n 1 "$work/progress.log"), $(echo "$fds" | wc -l) fds, no FAIL"
