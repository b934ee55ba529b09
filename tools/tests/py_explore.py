"""Run upstream crit's explorers (pycriu.cli from Debian's criu package) with
image loading replaced by OUR `crit decode` (not pretty), so the explorer
logic and text formats are upstream's while the decoding is ours (Debian's
3.17 protos cannot read some 4.2 images, e.g. pagemap's nr_pages).

usage: python3 py_explore.py CRIT DIR ps|fds|mems|rss
"""
import json
import subprocess
import sys

import pycriu
from pycriu import cli

crit, img_dir, what = sys.argv[1:4]


def load(f, pretty=False, no_payload=False, token=None):
    name = f.name
    f.close()
    out = subprocess.run([crit, 'decode', '-i', name], check=True,
                         stdout=subprocess.PIPE).stdout
    return json.loads(out)


pycriu.images.load = load
cli.explore({'dir': img_dir, 'what': what, 'tls_key': None})
