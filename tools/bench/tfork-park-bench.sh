#!/bin/bash
# Parked memory of tfork's restored clones (docs/PERFORMANCE.md, "tfork of
# a tree" and "tfork of a namespace init"): the engine before (BEFORE, a
# criu binary without parking, default main's) against this tree's
# (AFTER), interleaved in one run, beside `criu dump --leave-running` +
# `criu restore -d` of ours and upstream CRIU 4.2's.
#
# Workloads (tools/bench/treehog.c, 4 KiB pages, touched):
#   host-tree  `treehog 4 MIB/4 0` in the host pid namespace (a root and 4
#              children with MIB/4 MiB each; the clones get a stand-in init)
#   ownns-tree the same as pid 1 of its own pid namespace
#   nsinit     `treehog 0 0 MIB` as pid 1 of its own pid namespace (one
#              process of MIB MiB)
# Per case and N: the log's source pause, first clone running, all N
# running; RSS and PSS of one idle clone tree (summed over its pid
# namespace, the stand-in init included), a second after the tfork.
#
# tfork-park-bench.sh [RUNS] [MIB] [NS...]   (defaults 3 256 1 4 16)
# Prints one line per measurement: `run ENGINE CASE N=.. key=value ...`.
set -u
RUNS=${1:-3}
MIB=${2:-256}
shift 2 2>/dev/null
NS=${*:-1 4 16}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
AFTER=${AFTER:-$HERE/target/release/criu}
BEFORE=${BEFORE:-/work/main/target/release/criu}
UP=${UPSTREAM:-$HERE/../shared/upstream-criu/criu-4.2}
[ -x "$UP" ] || UP=/work/shared/upstream-criu/criu-4.2
W=${TMPDIR:-/tmp}/tfork-park-bench-$$
mkdir -p "$W"
gcc -O2 -o "$W/treehog" "$HERE/tools/bench/treehog.c" || exit 1

start() { # $1: host-tree|ownns-tree|nsinit; prints the root's host pid
	rm -rf "$W/work" && mkdir -p "$W/work"
	local args="4 $((MIB / 4)) 0"
	[ "$1" = nsinit ] && args="0 0 $MIB"
	if [ "$1" = host-tree ]; then
		(cd "$W/work" || exit; setsid "$W/treehog" $args </dev/null >/dev/null 2>&1 &)
	else
		(cd "$W/work" || exit; unshare --pid --fork setsid "$W/treehog" $args </dev/null >/dev/null 2>&1 &)
	fi
	for _ in $(seq 600); do [ -f "$W/work/ready" ] && break; sleep 0.1; done
	for p in $(pgrep -f "^$W/treehog"); do
		pp=$(awk '/^PPid:/{print $2}' /proc/$p/status)
		[ "$(readlink /proc/$pp/exe)" = "$W/treehog" ] || echo $p
	done | head -1
}

ns_procs() { # every process in the pid namespace of $1
	local ns
	ns=$(readlink /proc/$1/ns/pid)
	for p in /proc/[0-9]*; do
		[ "$(readlink $p/ns/pid 2>/dev/null)" = "$ns" ] && echo ${p#/proc/}
	done
}

mem_of() { # RSS and PSS (MiB) summed over the pid namespace of $1
	local r=0 s=0 x y
	for p in $(ns_procs $1); do
		x=$(awk '/^Rss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null)
		y=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null)
		r=$((r + ${x:-0})); s=$((s + ${y:-0}))
	done
	echo "rss_mib=$((r / 1024)) pss_mib=$((s / 1024))"
}

kill_ns_of() { # kill clone tree $1 (its whole pid namespace: its pid 1)
	local init=
	for p in $(ns_procs $1); do
		grep -q "NSpid:.*[[:space:]]1$" /proc/$p/status 2>/dev/null && init=$p
	done
	kill -9 ${init:-$1} 2>/dev/null
}

kill_all() {
	for p in $(pgrep -f "^$W/treehog"); do kill -9 $p 2>/dev/null; done
	for _ in $(seq 100); do pgrep -f "^$W/treehog" >/dev/null || break; sleep 0.05; done
}

tfork_case() { # $1 engine label, $2 binary, $3 case, $4 root, $5 N
	rm -rf "$W/img" && mkdir -p "$W/img"
	local t0 t1 pids line c first=
	t0=$(date +%s%N)
	pids=$("$2" tfork -t "$4" --copies "$5" -D "$W/img" -v4 -o tfork.log)
	t1=$(date +%s%N)
	line=$(grep "tfork of $4: source paused" "$W/img/tfork.log" | tail -1)
	pause=$(echo "$line" | sed -n 's/.*source paused \([0-9.]*\) ms.*/\1/p')
	first_ms=$(echo "$line" | sed -n 's/.*first clone running after \([0-9.]*\) ms.*/\1/p')
	all=$(echo "$line" | sed -n 's/.*all [0-9]* after \([0-9.]*\) ms.*/\1/p')
	sleep 1
	for c in $pids; do first=${first:-$c}; done
	echo "$run $1 $3 N=$5 pause_ms=$pause first_ms=$first_ms all_ms=$all wall_ms=$(((t1 - t0) / 1000000)) $(mem_of $first) clones=$(echo $pids | wc -w)"
	for c in $pids; do kill_ns_of $c; done
	sleep 1
}

copy_case() { # $1 engine name, $2 binary, $3 case, $4 root
	rm -rf "$W/img" && mkdir -p "$W/img"
	local t0 t1 t2
	sync
	t0=$(date +%s%N)
	"$2" dump -R -t "$4" -D "$W/img" -o dump.log || { echo "$run $1 dump failed"; return; }
	t1=$(date +%s%N)
	"$2" restore -d -D "$W/img" -o restore.log || { echo "$run $1 restore failed"; return; }
	t2=$(date +%s%N)
	echo "$run copy-$1 $3 dump_ms=$(((t1 - t0) / 1000000)) restore_ms=$(((t2 - t1) / 1000000)) copy_running_ms=$(((t2 - t0) / 1000000))"
	for p in $(pgrep -f "^$W/treehog"); do
		[ "$p" = "$4" ] && continue
		grep -q "NSpid:.*[[:space:]]1$" /proc/$p/status 2>/dev/null && [ "$(readlink /proc/$p/ns/pid)" != "$(readlink /proc/$4/ns/pid)" ] && kill -9 $p
	done
	sleep 1
}

for run in $(seq "$RUNS"); do
	for case in nsinit host-tree ownns-tree; do
		root=$(start $case)
		for n in $NS; do
			if [ $((run % 2)) = 1 ]; then
				tfork_case before "$BEFORE" $case "$root" "$n"
				tfork_case after "$AFTER" $case "$root" "$n"
			else
				tfork_case after "$AFTER" $case "$root" "$n"
				tfork_case before "$BEFORE" $case "$root" "$n"
			fi
		done
		if [ $case != host-tree ]; then
			copy_case ours "$AFTER" $case "$root"
			copy_case upstream "$UP" $case "$root"
		fi
		kill_all
	done
done
rm -rf "$W"
