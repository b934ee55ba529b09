#!/usr/bin/env bash
# Soak of established TCP connections: ROUNDS consecutive rounds of the TCP
# pair (engine/tests/progs/tcppair.c `pair`: a server and its client, both
# in the tree, each sending a checked byte stream to the other), through
# `criu dump --tcp-established` + `criu restore -d --tcp-established`, and
# every third round a `--leave-running` dump instead.
#
#   tools/soak/tcp.sh [ROUNDS] [-6]       (default 100 rounds, IPv4)
#
# After every round it requires: both commands exit 0; each end received
# 1 MiB more of its stream, every byte checked at its position (no FAIL
# line: nothing lost, repeated or changed); the tree has its two processes;
# the root has the same open-fd set as before the first round; on the port
# exactly the listener and the connection's two ends (no leaked socket)
# and none of the network lock's rules. Any failure stops the run with the
# round and the logs. Needs root, gcc, iptables; run after
# `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-100}
fam=${2:-}
criu=${CRIU:-$PWD/target/release/criu}
[ -x "$criu" ] || { echo "build first: cargo build --release"; exit 2; }
base=${SOAK_DIR:-/tmp/criu-rs-soak-tcp}
rm -rf "$base"; mkdir -p "$base/work" "$base/img"
w=$base/work img=$base/img bin=$base/tcppair
port=$(( 45000 + $$ % 1000 ))
gcc -O2 -static -o "$bin" engine/tests/progs/tcppair.c

die() { echo "FAILED (round $r): $*"; kill -9 $(live) 2>/dev/null; exit 1; }
rx() { # bytes received by role $1
    grep -q FAIL "$w/progress-$1.log" && die "$(grep FAIL "$w/progress-$1.log" | head -1)"
    tail -n 1 "$w/progress-$1.log" | awk '{print $5}'
}
live() { # live processes of the pair (status 0)
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/exe" 2>/dev/null)" = "$bin" ] || continue
        grep -q '^State:[[:space:]]*[ZX]' "$p/status" 2>/dev/null && continue
        echo "${p#/proc/}"
    done
}
root() { local p; for p in $(live); do grep -qE '^NSpid:.*[[:space:]]1$' "/proc/$p/status" && echo "$p"; done; return 0; }
fdset() { ls -l "/proc/$1/fd" 2>/dev/null | awk 'NR>1{$1=$2=$3=$4=$5=$6=$7=$8=""; print}' | sed 's/:\[[0-9]*\]//' | sort; }
sockets() { ss -Htan "( sport = :$port or dport = :$port )" | awk '{print $1}' | sort | uniq -c | tr -s ' ' | tr '\n' ';'; }
rules() { { iptables -w -S; ip6tables -w -S; } 2>/dev/null | grep 0xc114 | grep -c "port $port " || true; }
flows() { # each end 1 MiB more
    local s c i
    s=$(( $(rx server) + 1048576 )); c=$(( $(rx client) + 1048576 ))
    for i in $(seq 1000); do
        [ "$(rx server)" -ge "$s" ] && [ "$(rx client)" -ge "$c" ] && return 0
        sleep 0.02
    done
    die "the streams stopped (server rx $(rx server), client rx $(rx client))"
}

r=0
( cd "$w" && exec unshare --pid --fork setsid "$bin" $fam pair "$port" </dev/null >/dev/null 2>&1 ) &
for i in $(seq 500); do [ -n "$(root)" ] && [ -s "$w/progress-client.log" ] && break; sleep 0.02; done
[ -n "$(root)" ] || die "the pair did not start"
flows
fds0=$(fdset "$(root)")
socks0=$(sockets)
t0=$(date +%s.%N)
for r in $(seq "$rounds"); do
    pid=$(root)
    if (( r % 3 == 0 )); then
        "$criu" dump --tcp-established -R -t "$pid" -D "$img" -o dump.log || die "dump -R failed: $img/dump.log"
    else
        "$criu" dump --tcp-established -t "$pid" -D "$img" -o dump.log || die "dump failed: $img/dump.log"
        for i in $(seq 250); do [ -z "$(live)" ] && break; sleep 0.02; done
        ( cd "$w" && "$criu" restore -d --tcp-established -D "$img" -o restore.log ) || die "restore failed: $img/restore.log"
    fi
    flows
    [ "$(live | wc -l)" = 2 ] || die "$(live | wc -l) processes, want 2"
    [ "$(fdset "$(root)")" = "$fds0" ] || die "the root's fds changed: $(diff <(echo "$fds0") <(fdset "$(root)") || true)"
    [ "$(sockets)" = "$socks0" ] || die "sockets on port $port: $(sockets), before: $socks0"
    [ "$(rules)" = 0 ] || die "$(rules) lock rules left"
    rm -f "$img"/*.img
done
t1=$(date +%s.%N)
echo "tcp soak: $rounds rounds ($(( rounds - rounds / 3 )) dump+restore, $(( rounds / 3 )) --leave-running), server rx $(rx server), client rx $(rx client), 0 FAIL, $(awk "BEGIN{printf \"%.1f\", $t1-$t0}") s"
kill -9 $(live) 2>/dev/null || true
