#!/bin/bash
# tfork's source pause, two binaries interleaved (docs/PERFORMANCE.md,
# "tfork's pause of 1 GiB"): `criu tfork --copies 1 -v4 --persist=none` of
# the running process PID, ROUNDS rounds, BEFORE then AFTER (order swapped
# every round), each clone killed; per binary the medians of: freeze (the
# freeze's start to the tree listed), collection, the fork's session start
# (collection end to the session ready, or to the last thread parked in a
# binary without the `fork session` log line), and the pause; plus the
# source's main thread's CPU time per tfork (schedstat: nearly all the fork).
#   BEFORE=/tmp/main-criu AFTER=target/release/criu tools/bench/tfork-pause-ab.sh PID ROUNDS [DIR]
set -eu
p=$1; rounds=$2; dir=${3:-/tmp/tfork-pause-ab}
mkdir -p "$dir"; rm -f "$dir"/ab-$p-* "$dir"/cpu-$p
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="A B"; else order="B A"; fi
  for b in $order; do
    if [ $b = A ]; then bin=$BEFORE; else bin=$AFTER; fi
    s0=$(awk '{print $1}' /proc/$p/task/$p/schedstat)
    rm -rf "$dir/img"; mkdir "$dir/img"
    c=$("$bin" tfork -t "$p" --copies 1 -v4 -o "$dir/ab-$p-$b-$r.log" -D "$dir/img" --persist=none)
    s1=$(awk '{print $1}' /proc/$p/task/$p/schedstat)
    echo "$b $(( (s1 - s0) / 1000 ))" >> "$dir/cpu-$p"
    kill -9 "$c"; sleep 0.2
  done
done
rm -rf "$dir/img"
python3 - "$dir" "$p" <<'PY'
import glob, re, statistics as st, sys
d, pid = sys.argv[1], sys.argv[2]
ts = lambda l: float(l[1:10]) * 1000
for b, name in (("A", "before"), ("B", "after")):
    rows = []
    for f in glob.glob(f"{d}/ab-{pid}-{b}-*.log"):
        L = open(f).read().splitlines()
        col = next(l for l in L if f"collected {pid} in" in l)
        t0 = ts(col) - float(re.search(r"in ([0-9.]+)ms", col).group(1))
        tree = ts(next(l for l in L if "tree of" in l))
        i = L.index(col)
        ready = [ts(l) for l in L if "fork session of" in l and "ready" in l] or [ts([l for l in L[i:] if "parked on" in l][-1])]
        paused = ts(next(l for l in L if f"source {pid} paused" in l))
        rows.append((tree - t0, ts(col) - tree, ready[0] - ts(col), paused - t0))
    cpu = [int(l.split()[1]) / 1000 for l in open(f"{d}/cpu-{pid}") if l.startswith(b)]
    m = lambda j: st.median(r[j] for r in rows)
    print(f"{name}: {len(rows)} rounds, medians ms: freeze {m(0):.2f}, collection {m(1):.2f}, fork session start {m(2):.2f}, pause {m(3):.1f}; source main thread CPU per tfork {st.median(cpu):.1f}")
PY
