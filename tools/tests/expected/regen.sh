#!/usr/bin/env bash
# Regenerates the golden explorer texts from the reference tool, Debian's
# crit 3.17.1 (apt-get install criu), never from our own crit:
#   SET-WHAT.txt = `/usr/bin/crit x FIXTURES/upstream/SET/images WHAT`
# for WHAT in ps, fds, mems. `rss` has no golden file: 3.17 reads 4.2's
# pagemap nr_pages (moved to field 5) as 0, so the rss test compares live
# against upstream's explorer code over our decoder (tools/tests/crit.rs,
# explorers_match_python_crit).
# Where 3.17 stops with FileNotFoundError at a dead task (the tree set's
# zombie has no ids/mm image), the golden file is its output up to there:
# ours prints the same and leaves the dead task out.
# Usage: tools/tests/expected/regen.sh [FIXTURES_UPSTREAM_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
up="${1:-$here/../../../../shared/fixtures/upstream}"
crit=/usr/bin/crit
[ -x "$crit" ] || { echo "regen.sh: $crit missing (apt-get install criu)" >&2; exit 2; }
dpkg-query -W -f='${Version}\n' criu | grep -q '^3\.17' || echo "regen.sh: warning: Debian criu is not 3.17.x" >&2
for set in "$up"/*/; do
    name="$(basename "$set")"
    for what in ps fds mems; do
        err="$(mktemp)"
        if ! "$crit" x "$set/images" "$what" >"$here/$name-$what.txt" 2>"$err"; then
            if ! grep -q "FileNotFoundError" "$err"; then
                cat "$err" >&2
                exit 1
            fi
            echo "$name $what: crit stopped at $(tail -1 "$err")" >&2
        fi
        rm -f "$err"
    done
done
