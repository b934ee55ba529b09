#!/bin/bash
# Restore-only rounds with CPU time beside wall time (docs/PERFORMANCE.md,
# "Tree restore: the userfaultfd without stops of its own").
#
#   restore-cpu-loop.sh DIR ROUNDS SET NAME:CRIU[:SET2] ...
#
# Each variant restores DIR/SET/img (or DIR/SET2/img) warm (its pages files
# read first) with DIR/SET/work as working directory, inside a cpuacct
# cgroup (v1) of its own, so the CPU time counted is the engine's, its
# threads', the forked children's and the targets' until `criu restore -d`
# returns (upstream's restorer blobs included). The order rotates every
# round; the restored tree is killed and gone before the next restore.
# Prints one line a round: NAME WALL_MS/CPU_MS rcN per variant. Needs root.
D=$1; R=$2; SET=$3; shift 3
CG=/sys/fs/cgroup/cpuacct/restore-cpu-loop-$$; mkdir -p "$CG"
for r in $(seq 1 "$R"); do
  all=("$@"); k=$(( (r - 1) % ${#all[@]} )); line="round $r load $(cut -d' ' -f1 /proc/loadavg):"
  for v in "${all[@]:k}" "${all[@]:0:k}"; do
    IFS=: read -r name bin set <<<"$v"; set=${set:-$SET}
    img=$D/$set/img; pf=$D/restored-$name.pid; rm -f "$pf"
    cat "$img"/pages-*.img > /dev/null
    u0=$(cat "$CG/cpuacct.usage"); t0=$(date +%s%N)
    bash -c "echo \$\$ > $CG/tasks; cd $D/$set/work && exec $bin restore -d -D $img -o restore-$name.log --pidfile $pf" > /dev/null 2>&1
    rc=$?
    t1=$(date +%s%N); u1=$(cat "$CG/cpuacct.usage")
    root=$(cat "$pf" 2>/dev/null)
    [ -n "$root" ] && kill -9 "$root"
    line="$line $name $(( (t1 - t0) / 1000000 ))/$(( (u1 - u0) / 1000000 )) rc$rc;"
    while [ -n "$(cat "$CG/tasks")" ]; do sleep 0.05; done
  done
  echo "$line"
done
rmdir "$CG"
