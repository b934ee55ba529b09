#!/bin/bash
# tfork of one process with and without a kernel object of its own
# (docs/PERFORMANCE.md, "tfork isolation"): tools/bench/memhog.c (MIB of
# touched private memory, one thread) run plainly (`fork`: cloned by fork)
# and run by a wrapper that holds an eventfd across the exec (`copy`:
# cloned by fork, each clone given its own eventfd by injection; `restore`:
# the same with CRIU_RS_TFORK_COPY=off, cloned by restore;
# docs/ARCHITECTURE.md "tfork", "Isolation"), the three interleaved, ROUNDS
# rounds each; per N: the medians of the source's pause, the first clone
# running, all N running (the engine's own timings, -v3), and the RSS and
# PSS per idle clone (smaps_rollup half a second after).
# Usage: tools/bench/tfork-iso-bench.sh [MIB] [ROUNDS] [N...]   (as root)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
criu=${CRIU:-$here/../../target/release/criu}
mib=${1:-256}
rounds=${2:-3}
shift 2 || true
ns=${*:-1 4 16}
dir=$(mktemp -d /tmp/tforkiso-bench.XXXXXX)
trap 'for p in $(cat "$dir"/pids 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT
gcc -O2 -static -o "$dir/memhog" "$here/memhog.c" -lpthread
cat >"$dir/hold.c" <<'EOF'
#include <sys/eventfd.h>
#include <unistd.h>
/* exec argv[1..] holding an eventfd (no close-on-exec) */
int main(int argc, char **argv) { (void)argc; if (eventfd(3, 0) < 0) return 1; execv(argv[1], argv + 1); return 2; }
EOF
gcc -O2 -o "$dir/hold" "$dir/hold.c"

start() { # MODE: its pid in $started (no subshell: the EXIT trap would run in it)
	local w=$dir/w-$1
	rm -rf "$w"; mkdir -p "$w"
	if [ "$1" != fork ]; then
		(cd "$w" && setsid "$dir/hold" "$dir/memhog" "$mib" 1 </dev/null >/dev/null 2>&1 &)
	else
		(cd "$w" && setsid "$dir/memhog" "$mib" 1 </dev/null >/dev/null 2>&1 &)
	fi
	for _ in $(seq 600); do [ -e "$w/ready" ] && break; sleep 0.1; done
	sleep 0.3
	local p
	for p in $(pgrep -f "^$dir/memhog"); do
		[ "$(readlink /proc/$p/cwd)" = "$w" ] && { echo "$p" >>"$dir/pids"; started=$p; return 0; }
	done
	echo "no $1 workload"; exit 1
}
kb() { awk -v k="$2:" '$1==k {s+=$2} END {print s+0}' /proc/"$1"/smaps_rollup 2>/dev/null; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A src
modes="fork copy restore"
for m in $modes; do start $m; src[$m]=$started; done
printf '%-8s %4s %9s %9s %9s %9s %9s\n' mode N pause_ms first_ms all_ms rss_MiB pss_MiB
for n in $ns; do
	for m in $modes; do : >"$dir/r-$m"; done
	for r in $(seq "$rounds"); do
		for m in $modes; do
			copy=on; [ $m = restore ] && copy=off
			out=$(CRIU_RS_TFORK_COPY=$copy "$criu" tfork -t "${src[$m]}" --copies "$n" -v3 -o "$dir/tf-$m.log" -D "$dir" </dev/null) || { tail -3 "$dir/tf-$m.log"; exit 1; }
			sleep 0.5
			rss=0; pss=0
			for c in $out; do rss=$((rss + $(kb "$c" Rss))); pss=$((pss + $(kb "$c" Pss))); done
			l=$(grep "tfork of " "$dir/tf-$m.log" | tail -1)
			p=$(sed -E 's/.*source paused ([0-9.]+) ms.*/\1/' <<<"$l")
			f=$(sed -E 's/.*first clone running after ([0-9.]+) ms.*/\1/' <<<"$l")
			a=$(sed -E 's/.* all [0-9]+ after ([0-9.]+) ms.*/\1/' <<<"$l")
			echo "$p $f $a $(awk -v x=$rss -v n=$n 'BEGIN{printf "%.1f", x/1024/n}') $(awk -v x=$pss -v n=$n 'BEGIN{printf "%.1f", x/1024/n}')" >>"$dir/r-$m"
			for c in $out; do kill -9 "$c" 2>/dev/null || true; done
			grep -q FAIL "$dir/w-$m/progress.log" && { echo "FAIL in $m workload"; exit 1; }
		done
	done
	for m in $modes; do
		col() { awk -v c="$1" '{print $c}' "$dir/r-$m" | median; }
		printf '%-8s %4s %9s %9s %9s %9s %9s\n' "$m" "$n" "$(col 1)" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)"
	done
done
