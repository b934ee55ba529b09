#!/usr/bin/python3
"""Print every message descriptor of Debian's pycriu (CRIU 3.17.1) as JSON:
{message_name: {field_name: [number, type, label, packed, criu_opts]}}.
Run with Debian's /usr/bin/python3 (it has google.protobuf)."""
import importlib
import json
import os
import sys

IMAGES = "/usr/lib/python3/dist-packages/pycriu/images"
sys.path.insert(0, IMAGES)
import opts_pb2  # noqa: E402

out = {}


def walk(desc, prefix):
    name = prefix + desc.name
    fields = {}
    for f in desc.fields:
        o = f.GetOptions()
        c = o.Extensions[opts_pb2.criu]
        opts = {k: getattr(c, k) for k in ("hex", "ipadd", "flags", "dev", "odev", "dict", "conv") if c.HasField(k)}
        fields[f.name] = [f.number, f.type, f.label, bool(o.packed), opts]
    out[name] = fields
    for n in desc.nested_types:
        walk(n, name + ".")


for fn in sorted(os.listdir(IMAGES)):
    if not fn.endswith("_pb2.py"):
        continue
    mod = importlib.import_module(fn[:-3])
    for m in mod.DESCRIPTOR.message_types_by_name.values():
        walk(m, "")
json.dump(out, sys.stdout, sort_keys=True)
