#!/usr/bin/env python3
"""Seed corpora for the fuzz targets from the upstream fixture images.

usage: seed.py FIXTURES_DIR CORPUS_DIR MAGIC_RS
Each target's input layout is described in its fuzz_targets/*.rs.
"""
import os
import re
import struct
import sys

fixtures, corpus, magic_rs = sys.argv[1:4]
IMG_COMMON, IMG_SERVICE = 0x54564319, 0x55105940

# Order of images_proto::magic::ALL (image_reader's selector).
kinds = re.findall(r'^\s*([A-Z_]+) = "[A-Z_]+", (0x[0-9a-f_]+),', open(magic_rs).read(), re.M)
kind_index = {int(m.replace('_', ''), 16): i for i, (_, m) in enumerate(kinds)}


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


bodies = {}
for s in sorted(os.listdir(fixtures)):
    idir = os.path.join(fixtures, s, 'images')
    if not os.path.isdir(idir):
        continue
    for n in sorted(os.listdir(idir)):
        if not n.endswith('.img') or n.startswith('pages-'):
            continue
        data = open(os.path.join(idir, n), 'rb').read()
        tag = '%s-%s' % (s, n)
        put('decode_image', tag + '.plain', b'\x00' + data)
        put('decode_image', tag + '.pretty', b'\x01' + data)
        put('roundtrip', tag, data)
        first, = struct.unpack_from('<I', data, 0)
        hlen = 8 if first in (IMG_COMMON, IMG_SERVICE) else 4
        magic, = struct.unpack_from('<I', data, hlen - 4)
        if magic in kind_index:
            put('image_reader', tag, bytes([kind_index[magic]]) + data)
        if n.startswith('pagemap-'):
            put('image_reader', tag + '.pm', b'\xf4' + data)
        if len(data) >= hlen + 4:
            size, = struct.unpack_from('<I', data, hlen)
            body = data[hlen + 4:hlen + 4 + size]
            bodies.setdefault(magic, body)
        jf = os.path.join(fixtures, s, 'json', n[:-4] + '.json')
        if os.path.exists(jf):
            put('encode_image', tag + '.json', open(jf, 'rb').read())

# json_decode: each kind's first entry body under every descriptor selector.
for magic, body in bodies.items():
    for sel in range(0, 256, 2):
        put('json_decode', '%08x-%02x' % (magic, sel), bytes([sel]) + body)

# read_images: each fixture's image directory as one input (pages files as
# their page count; see fuzz_targets/read_images.rs).
for s in sorted(os.listdir(fixtures)):
    idir = os.path.join(fixtures, s, 'images')
    if not os.path.isdir(idir):
        continue
    out = b''
    for n in sorted(os.listdir(idir)):
        if not n.endswith('.img'):
            continue
        path = os.path.join(idir, n)
        if n.startswith('pages-'):
            body = struct.pack('<I', os.path.getsize(path) // 4096)
        else:
            body = open(path, 'rb').read()
        nb = n.encode()
        out += bytes([len(nb)]) + nb + struct.pack('<I', len(body)) + body
    put('read_images', s, out)

# Inputs kept in fuzz/seeds/TARGET-NAME.bin (image sets the fixtures lack,
# e.g. read_images-upstream-utsipc.bin: upstream 4.2's dump of
# engine/tests/progs/utsipc.c with its uts and ipc namespaces and SysV
# objects, in read_images' layout; read_images-upstream-mntns.bin: its dump
# of engine/tests/progs/mntns.c, a mount namespace with tmpfs archives;
# mountinfo-container.bin: a container's /proc/PID/mountinfo).
seeds = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'seeds')
for n in sorted(os.listdir(seeds)) if os.path.isdir(seeds) else []:
    target, _, name = n.partition('-')
    if n.endswith('.bin') and name:
        put(target, name[:-4], open(os.path.join(seeds, n), 'rb').read())

# swrk_request: every request runc, crun and podman sent (fixtures/rpc, the
# sibling of the upstream image fixtures), raw.
rpc = os.path.join(os.path.dirname(os.path.abspath(fixtures)), 'rpc')
for d, _, files in sorted(os.walk(rpc)):
    for n in sorted(files):
        if '-c2s-' in n and n.endswith('.bin'):
            put('swrk_request', os.path.basename(d) + '-' + n, open(os.path.join(d, n), 'rb').read())
