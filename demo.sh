#!/usr/bin/env bash
# The main job on a built-in example: build, then read the shipped upstream
# CRIU image set with our crit (decode, info, process tree, fds, memory).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release -q -p tools -p engine
crit=target/release/crit
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
