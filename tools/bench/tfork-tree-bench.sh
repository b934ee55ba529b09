#!/bin/bash
# tfork of a process tree against `criu dump --leave-running` + `criu restore`
# of the same tree, ours and upstream CRIU 4.2's, interleaved in one run.
#
# Workload: tools/bench/treehog.c `4 MIB 0`: a root and 4 children, each
# child with MIB MiB of its own private memory (touched, 4 KiB pages).
# Per run:
#   - the tree in the host pid namespace, `criu tfork --copies N` for N in
#     NS, with the clones' memory from the tmpfs snapshot (the default
#     without the kmod device) and from the frozen source through
#     /proc/PID/mem (CRIU_RS_TFORK_TREE_MEM=source): the log's source
#     pause, first clone tree running, all N running; RSS and PSS of one
#     idle clone tree (the sum over its processes and its stand-in init);
#   - the same tree as pid 1 of its own pid namespace (`unshare --pid
#     --fork setsid`, a session leader as upstream needs): tfork N=1, and `dump --leave-running` + `restore -d` with
#     ours and with upstream's (a live copy the upstream way: the tree is
#     paused for the dump).
#
# tfork-tree-bench.sh [RUNS] [MIB] [NS...]   (defaults 3 64 1 4)
# Prints one line per measurement: `run CASE key=value ...`.
set -u
RUNS=${1:-3}
MIB=${2:-64}
shift 2 2>/dev/null
NS=${*:-1 4}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
CRIU=${CRIU:-$HERE/target/release/criu}
UP=${UPSTREAM:-$HERE/../shared/upstream-criu/criu-4.2}
[ -x "$UP" ] || UP=/work/shared/upstream-criu/criu-4.2
W=${TMPDIR:-/tmp}/tfork-tree-bench-$$
mkdir -p "$W"
gcc -O2 -o "$W/treehog" "$HERE/tools/bench/treehog.c" || exit 1

start_tree() { # $1: host|ownns; prints the root's host pid
	rm -rf "$W/work" && mkdir -p "$W/work"
	if [ "$1" = ownns ]; then
		(cd "$W/work" || exit; unshare --pid --fork setsid "$W/treehog" 4 "$MIB" 0 </dev/null >/dev/null 2>&1 &)
	else
		(cd "$W/work" || exit; setsid "$W/treehog" 4 "$MIB" 0 </dev/null >/dev/null 2>&1 &)
	fi
	for _ in $(seq 300); do [ -f "$W/work/ready" ] && break; sleep 0.1; done
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

mem_of() { # RSS and PSS (KiB) summed over the processes of clone tree $1
	local r=0 s=0 x y
	for p in $(ns_procs $1); do
		x=$(awk '/^Rss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null)
		y=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null)
		r=$((r + ${x:-0})); s=$((s + ${y:-0}))
	done
	echo "rss_mib=$((r / 1024)) pss_mib=$((s / 1024))"
}

kill_ns_of() { # kill clone tree $1 (its whole pid namespace)
	local init
	for p in $(ns_procs $1); do
		[ "$(cat /proc/$p/comm 2>/dev/null)" = criu-tfork-init ] && init=$p
	done
	kill -9 ${init:-$1} 2>/dev/null
}

kill_tree() {
	for p in $(pgrep -f "^$W/treehog"); do kill -9 $p 2>/dev/null; done
	for _ in $(seq 100); do pgrep -f "^$W/treehog" >/dev/null || break; sleep 0.05; done
}

tfork_case() { # $1 label, $2 root, $3 N, $4 mem mode
	rm -rf "$W/img" && mkdir -p "$W/img"
	local t0 t1 pids line label=$1 n=$3 mode=$4 c first=
	t0=$(date +%s%N)
	pids=$(CRIU_RS_TFORK_TREE_MEM=$mode "$CRIU" tfork -t "$2" --copies "$n" -D "$W/img" -v4 -o tfork.log)
	t1=$(date +%s%N)
	line=$(grep "tfork of $2: source paused" "$W/img/tfork.log" | tail -1)
	pause=$(echo "$line" | sed -n 's/.*source paused \([0-9.]*\) ms.*/\1/p')
	first_ms=$(echo "$line" | sed -n 's/.*first clone running after \([0-9.]*\) ms.*/\1/p')
	all=$(echo "$line" | sed -n 's/.*all [0-9]* after \([0-9.]*\) ms.*/\1/p')
	sleep 1
	for c in $pids; do first=${first:-$c}; done
	echo "$run $label N=$n mem=$mode pause_ms=$pause first_ms=$first_ms all_ms=$all wall_ms=$(((t1 - t0) / 1000000)) $(mem_of $first)"
	for c in $pids; do kill_ns_of $c; done
	sleep 1
}

copy_case() { # $1 engine name, $2 binary, $3 root
	rm -rf "$W/img" && mkdir -p "$W/img"
	local t0 t1 t2
	sync
	t0=$(date +%s%N)
	"$2" dump -R -t "$3" -D "$W/img" -o dump.log || { echo "$run $1 dump failed"; return; }
	t1=$(date +%s%N)
	"$2" restore -d -D "$W/img" -o restore.log || { echo "$run $1 restore failed"; return; }
	t2=$(date +%s%N)
	echo "$run copy-$1 dump_ms=$(((t1 - t0) / 1000000)) restore_ms=$(((t2 - t1) / 1000000)) copy_running_ms=$(((t2 - t0) / 1000000))"
	# the restored tree: pid 1 of its own namespace, not the source
	for p in $(pgrep -f "^$W/treehog"); do
		[ "$p" = "$3" ] && continue
		grep -q "NSpid:.*[[:space:]]1$" /proc/$p/status 2>/dev/null && [ "$(readlink /proc/$p/ns/pid)" != "$(readlink /proc/$3/ns/pid)" ] && kill -9 $p
	done
	sleep 1
}

for run in $(seq "$RUNS"); do
	root=$(start_tree host)
	for n in $NS; do
		tfork_case host-tree "$root" "$n" snapshot
		tfork_case host-tree "$root" "$n" source
	done
	kill_tree
	root=$(start_tree ownns)
	tfork_case ownns-tree "$root" 1 snapshot
	copy_case ours "$CRIU" "$root"
	copy_case upstream "$UP" "$root"
	kill_tree
done
rm -rf "$W"
