#!/usr/bin/env bash
# The main job on built-in examples: build; checkpoint a running program
# (tools/bench/memhog.c: 64 MiB of patterned memory, 4 threads, pid 1 of its
# own pid namespace), kill it, restore it and watch it go on; then read the
# shipped upstream CRIU image set with our crit. Needs root and gcc.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release -q -p tools -p engine
crit=target/release/crit
criu=target/release/criu

echo "== checkpoint/restore of a live program"
demo=/tmp/criu-rs-demo
rm -rf "$demo" && mkdir -p "$demo/work" "$demo/images"
gcc -O2 -static -o "$demo/memhog" tools/bench/memhog.c -lpthread
(cd "$demo/work" && unshare --pid --fork setsid "$demo/memhog" 64 4 </dev/null >/dev/null 2>&1 &)
for _ in $(seq 100); do [ -e "$demo/work/ready" ] && break; sleep 0.1; done
sleep 0.3
pid=$(pgrep -f -n "^$demo/memhog 64 4" || true)
[ -n "$pid" ] || { echo "demo program did not start"; exit 1; }
echo "  running as pid $pid: $(tail -n1 "$demo/work/progress.log")"
"$criu" dump -t "$pid" -D "$demo/images" -o dump.log -v4
echo "  dumped (and killed): $(ls "$demo/images" | tr '\n' ' ')"
"$crit" x "$demo/images" ps
before=$(grep -c ok "$demo/work/progress.log")
"$criu" restore -D "$demo/images" -d -o restore.log -v4 --pidfile "$demo/restored.pid"
sleep 1
after=$(grep -c ok "$demo/work/progress.log")
grep -q FAIL "$demo/work/progress.log" && { echo "  restored program reported FAIL"; exit 1; }
echo "  restored as pid $(cat "$demo/restored.pid"): ticks $before -> $after, last: $(tail -n1 "$demo/work/progress.log")"
[ "$after" -gt "$before" ] || { echo "  restored program did not tick"; exit 1; }
kill -9 "$(cat "$demo/restored.pid")"

dir=examples/images/threads
echo "== crit info $dir/core-1.img"
"$crit" info "$dir/core-1.img"
echo "== crit show $dir/pstree.img"
"$crit" show "$dir/pstree.img"
for x in ps fds mems rss; do
    echo "== crit x $dir $x"
    "$crit" x "$dir" "$x"
done
echo "== decode -> encode round trip of every image"
for img in "$dir"/*.img; do
    case "$img" in */pages-*) continue ;; esac
    "$crit" decode -i "$img" | "$crit" encode -o /tmp/demo-roundtrip.img
    cmp -s "$img" /tmp/demo-roundtrip.img && echo "  identical: $(basename "$img")" || { echo "  DIFFERS: $img"; exit 1; }
done
