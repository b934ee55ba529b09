#!/usr/bin/env bash
# Dump and restore of many event objects, ours against upstream CRIU 4.2 in
# the same run: tools/bench/manyev.c with N eventfds in one epoll set and a
# timerfd (pid 1 of its own pid namespace). Per run: our dump
# (source killed) + our restore, then upstream's dump of that + upstream's
# restore, each checked (the program ticks on, no FAIL). Medians of RUNS.
#
#   tools/bench/events.sh [RUNS] [N...]      (default: 3 runs of 1000 and 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
shift || true
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000)
ours=${CRIU:-$PWD/target/release/criu}
up=${UPSTREAM:-$PWD/../shared/upstream-criu/criu-4.2}
base=${BENCH_DIR:-/tmp/criu-rs-bench-events}
rm -rf "$base"; mkdir -p "$base"
bin=$base/manyev
gcc -O2 -static -Wall -o "$bin" tools/bench/manyev.c

live() { local p; for p in $(pgrep -x manyev || true); do if [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$bin" ]; then echo "$p"; fi; done; }
ticks() { local c; c=$(grep -c ' ok$' "$work/progress.log" 2>/dev/null) || true; echo "${c:-0}"; }
now() { date +%s.%N; }
med() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
trap 'for p in $(live); do kill -9 "$p"; done' EXIT
gone() { for _ in $(seq 500); do [ -z "$(live)" ] && return 0; sleep 0.01; done; echo "the dumped process stayed"; exit 1; }
ticking() {
    local t; t=$(ticks)
    for _ in $(seq 100); do [ "$(ticks)" -ge $((t + 2)) ] && break; sleep 0.1; done
    [ "$(ticks)" -ge $((t + 2)) ] || { echo "no ticks after $1"; exit 1; }
    ! grep -q FAIL "$work/progress.log" || { echo "FAIL after $1"; tail -n 2 "$work/progress.log"; exit 1; }
}

echo "| objects | ours dump s | upstream dump s | dump ours/up | ours restore s | upstream restore s | restore ours/up |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for n in "${sizes[@]}"; do
    work=$base/w$n; mkdir -p "$work"
    (cd "$work" && unshare --pid --fork setsid "$bin" "$n" </dev/null >/dev/null 2>&1 &)
    for _ in $(seq 100); do [ "$(ticks)" -ge 2 ] && break; sleep 0.1; done
    : >"$base/od"; : >"$base/or"; : >"$base/ud"; : >"$base/ur"
    for r in $(seq "$runs"); do
        for who in ours up; do
            img=$base/img-$who; rm -rf "$img"; mkdir -p "$img"
            c=$ours; [ $who = up ] && c=$up
            pid=$(live)
            t0=$(now); "$c" dump -t "$pid" -D "$img" -o dump.log || { echo "$who dump failed"; tail -n 5 "$img/dump.log"; exit 1; }; t1=$(now)
            gone
            t2=$(now); "$c" restore -D "$img" -d -o restore.log || { echo "$who restore failed"; tail -n 5 "$img/restore.log"; exit 1; }; t3=$(now)
            ticking "$who restore $r"
            echo "$t1 - $t0" | bc >>"$base/${who:0:1}d"
            echo "$t3 - $t2" | bc >>"$base/${who:0:1}r"
        done
    done
    od=$(med <"$base/od"); ud=$(med <"$base/ud"); or=$(med <"$base/or"); ur=$(med <"$base/ur")
    printf '| %d | %.3f | %.3f | %.2f | %.3f | %.3f | %.2f |\n' $((n + 2)) "$od" "$ud" "$(echo "$od / $ud" | bc -l)" "$or" "$ur" "$(echo "$or / $ur" | bc -l)"
    for p in $(live); do kill -9 "$p"; done
done
