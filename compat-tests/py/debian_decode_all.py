#!/usr/bin/python3
"""Decode every image given on the command line with Debian's pycriu
(non-pretty, as `crit decode` does) and print {path: json-or-error}."""
import json
import sys

sys.path.insert(0, "/usr/lib/python3/dist-packages")
import pycriu  # noqa: E402

out = {}
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            out[path] = pycriu.images.load(f, False)
    except Exception as e:  # report, don't stop
        out[path] = {"error": "%s: %s" % (type(e).__name__, e)}
json.dump(out, sys.stdout)
