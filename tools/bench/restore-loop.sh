#!/bin/bash
# Restore-only rounds of image sets, engines interleaved within each round
# (docs/PERFORMANCE.md, "Restore from a cold page cache").
#
#   restore-loop.sh DIR ROUNDS cold|warm VARIANT...
#
# VARIANT is NAME:CRIU:SET[:ENV=VALUE ...]: CRIU restores DIR/SET/img with
# DIR/SET/work as its working directory (tree-bench's ours/ and upstream/
# directories of one run, copied, are such sets). `cold` drops the page
# cache (sync; echo 3 > /proc/sys/vm/drop_caches) before each restore,
# `warm` reads the set's pages files first. A variant named `disk` times a
# `cat` of the set's pages files instead (the disk's read of what a restore
# must read, at that moment). Each round starts one variant further along
# the list (a variant's place in the round moves its time: after a drop,
# the first restore following another image set's ran faster than the
# next ones). The restored tree (pid 1 of its own pid namespace) is
# killed before the next restore. Prints one line a round:
# each variant's wall time, exit code and the number of processes it had.
# Needs root.
D=$1; R=$2; MODE=$3; shift 3
for r in $(seq 1 "$R"); do
  line="round $r load $(cut -d' ' -f1 /proc/loadavg):"
  all=("$@"); k=$(( (r - 1) % ${#all[@]} ))
  for v in "${all[@]:k}" "${all[@]:0:k}"; do
    IFS=: read -r name bin set envv <<<"$v"
    img=$D/$set/img; pf=$img/restored-$name.pid; rm -f "$pf"
    if [ "$MODE" = cold ]; then sync; echo 3 > /proc/sys/vm/drop_caches; else cat "$img"/pages-*.img > /dev/null; fi
    t0=$(date +%s.%N)
    if [ "$name" = disk ]; then
      cat "$img"/pages-*.img > /dev/null; t1=$(date +%s.%N)
      line="$line disk $(echo "$t1 - $t0" | bc | sed 's/^\./0./') rc0;"; continue
    fi
    # shellcheck disable=SC2086 # ENV=VALUE words split on purpose
    ( cd "$D/$set/work" && env $envv "$bin" restore -d -D "$img" -o "restore-$name.log" --pidfile "$pf" ) > /dev/null 2>&1
    rc=$?
    t1=$(date +%s.%N)
    root=$(cat "$pf" 2>/dev/null); n=0
    if [ -n "$root" ]; then
      n=$(pstree -p "$root" | grep -o '([0-9]*)' | wc -l)
      kill -9 "$root"
      while [ -e "/proc/$root" ]; do sleep 0.02; done
    fi
    line="$line $name $(echo "$t1 - $t0" | bc | sed 's/^\./0./') rc$rc n$n;"
  done
  echo "$line"
done
