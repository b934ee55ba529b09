#!/bin/bash
# tfork of a process tree by two criu binaries, interleaved (the order
# swapped every round): BEFORE (default ../main/target/release/criu) and
# AFTER (default this tree's target/release/criu).
#
# Workload: tools/bench/treehog.c `4 64 0` (a root and 4 children of 64 MiB
# of touched 4 KiB pages), in the host's pid namespace (`--copies N` for N
# in NS) and as pid 1 of its own (N = 1). Per tfork, from the engine's
# -v4 log (ms from the freeze): the source pause, the parking fill, the
# first clone tree running, all N running; helper = parking done to the
# restore's first fork, forks = that to "prepared their fds" (the clone
# tree's processes forked and set up), parked_to_first = parking done to
# the first clone tree running (its whole restore); PSS (MiB) of the first clone tree;
# the load average.
#
# tfork-tree-ab.sh [ROUNDS] [NS...]   (defaults 3, 1 4)
ROUNDS=${1:-3}; shift; NS=${*:-1 4}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
W=${TMPDIR:-/tmp}/tfork-tree-ab-$$
mkdir -p $W
BEFORE=${BEFORE:-$HERE/../main/target/release/criu}
AFTER=${AFTER:-$HERE/target/release/criu}
ns_procs() { local ns; ns=$(readlink /proc/$1/ns/pid); for p in /proc/[0-9]*; do [ "$(readlink $p/ns/pid 2>/dev/null)" = "$ns" ] && echo ${p#/proc/}; done; }
pss_of() { local s=0 y; for p in $(ns_procs $1); do y=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null); s=$((s + ${y:-0})); done; echo $((s/1024)); }
start_tree() {
	rm -rf $W/work && mkdir -p $W/work
	if [ "$1" = ownns ]; then (cd $W/work; unshare --pid --fork setsid $W/treehog 4 64 0 </dev/null >/dev/null 2>&1 &)
	else (cd $W/work; setsid $W/treehog 4 64 0 </dev/null >/dev/null 2>&1 &); fi
	for _ in $(seq 300); do [ -f $W/work/ready ] && break; sleep 0.1; done
	for p in $(pgrep -f "^$W/treehog"); do pp=$(awk '/^PPid:/{print $2}' /proc/$p/status); [ "$(readlink /proc/$pp/exe)" = "$W/treehog" ] || echo $p; done | head -1
}
kill_tree() { for p in $(pgrep -f "^$W/treehog"); do kill -9 $p 2>/dev/null; done; sleep 1; }
one() { # label root bin N
	local D=$W/img-b; rm -rf $D; mkdir -p $D
	$3 tfork -t $2 --copies $4 -D $D -v4 -o tfork.log > $D/pids || { echo "$1 FAIL"; tail -3 $D/tfork.log; return; }
	local park line pause first all pss c first_c
	park=$(grep -o 'parked: .*' $D/tfork.log | sed -n 's/.* in \([0-9.]*\) ms.*/\1/p')
	line=$(grep "tfork of $2: source paused" $D/tfork.log | tail -1)
	pause=$(echo "$line" | sed -n 's/.*source paused \([0-9.]*\) ms.*/\1/p')
	first=$(echo "$line" | sed -n 's/.*first clone running after \([0-9.]*\) ms.*/\1/p')
	all=$(echo "$line" | sed -n 's/.*all [0-9]* after \([0-9.]*\) ms.*/\1/p')
	sleep 1
	first_c=$(head -1 $D/pids)
	pss=$(pss_of $first_c)
	local t1 t2 t3 t4 rs
	t1=$(grep -m1 'parked: ' $D/tfork.log | sed -n 's/^(\([0-9.]*\)).*/\1/p')
	t2=$(grep -m1 'Forking task' $D/tfork.log | sed -n 's/^(\([0-9.]*\)).*/\1/p')
	t3=$(grep -m1 'prepared their fds' $D/tfork.log | sed -n 's/^(\([0-9.]*\)).*/\1/p')
	t4=$(grep -m1 -E 'clone (tree )?[0-9]+ of [0-9]+: pid' $D/tfork.log | sed -n 's/^(\([0-9.]*\)).*/\1/p')
	rs=$(awk -v a=$t1 -v b=$t2 -v c=$t3 -v d=$t4 'BEGIN{printf "helper=%.1f forks=%.1f parked_to_first=%.1f", (b-a)*1000, (c-b)*1000, (d-a)*1000}')
	echo "$1 N=$4 pause=$pause park=$park first=$first all=$all $rs pss_mib=$pss load=$(cut -d' ' -f1 /proc/loadavg)"
	for c in $(cat $D/pids); do for p in $(ns_procs $c); do [ "$(cat /proc/$p/comm 2>/dev/null)" = criu-tfork-init ] && kill -9 $p; done; done
	sleep 1.5
}
gcc -O2 -o $W/treehog $HERE/tools/bench/treehog.c || exit 1
for r in $(seq $ROUNDS); do
	root=$(start_tree host)
	for n in $NS; do
		if [ $((r % 2)) = 1 ]; then one "r$r host before" $root $BEFORE $n; one "r$r host after" $root $AFTER $n
		else one "r$r host after" $root $AFTER $n; one "r$r host before" $root $BEFORE $n; fi
	done
	kill_tree
	root=$(start_tree ownns)
	if [ $((r % 2)) = 1 ]; then one "r$r ownns before" $root $BEFORE 1; one "r$r ownns after" $root $AFTER 1
	else one "r$r ownns after" $root $AFTER 1; one "r$r ownns before" $root $BEFORE 1; fi
	kill_tree
done
rm -rf $W
