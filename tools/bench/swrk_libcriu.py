#!/usr/bin/python3
"""criu swrk driven by a real RPC client, Debian's libcriu (crun's library):
dump (criu_dump, notify callback on) and restore (criu_restore_child) of the
`counter` fixture, ours and upstream 4.2 interleaved, ROUNDS each; prints
the medians and ours/upstream. The fixture is reaped at once by a thread (as
a runtime's shim reaps its container's init): our dump waits for a killed
process's pid to be free before it answers.

usage: tools/bench/swrk_libcriu.py [ROUNDS]   (root; gcc, libcriu and
libprotobuf-c-dev; the shared fixtures and upstream binary beside the repo)
"""
import os, statistics, subprocess, sys, tempfile, threading, time

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))
shared = os.environ.get("CRIU_RS_SHARED") or next(
    p for p in (os.path.join(repo, "..", "shared"), os.path.join(repo, "..", "..", "shared")) if os.path.isdir(p))
OURS = os.path.join(repo, "target/release/criu")
UP = os.path.join(shared, "upstream-criu/criu-4.2")
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
tmp = tempfile.mkdtemp(prefix="swrk-bench-")
client, counter = os.path.join(tmp, "client"), os.path.join(tmp, "counter")
subprocess.run(["gcc", "-O2", "-o", client, os.path.join(repo, "engine/tests/progs/libcriu_client.c"), "-lcriu"], check=True)
subprocess.run(["gcc", "-O2", "-static", "-o", counter, os.path.join(shared, "fixtures/progs/counter.c"), "-lpthread", "-lrt"], check=True)


def tick(w):
    try:
        lines = [x for x in open(w + "/progress.log").read().split("\n") if x.startswith("tick")]
        return int(lines[-1].split()[1]) if lines else 0
    except FileNotFoundError:
        return 0


def wait(f, t=15):
    end = time.time() + t
    while time.time() < end:
        if f():
            return
        time.sleep(0.02)
    raise Exception("timeout")


res = {"ours": ([], []), "upstream": ([], [])}
for r in range(rounds):
    for name, binary in (("ours", OURS), ("upstream", UP)):
        w = os.path.join(tmp, f"{name}-{r}")
        os.makedirs(w + "/img")
        p = subprocess.Popen(["setsid", counter], cwd=w, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reaper = threading.Thread(target=p.wait)
        reaper.start()
        wait(lambda: tick(w) >= 2)
        t0 = time.time()
        out = subprocess.run([client, binary, w + "/img", "dump", str(p.pid)], capture_output=True, text=True).stdout
        t_dump = time.time() - t0
        assert "dump 0" in out, (name, out)
        reaper.join()
        t = tick(w)
        t0 = time.time()
        c = subprocess.Popen([client, binary, w + "/img", "restore"], stdout=subprocess.PIPE, text=True)
        pid = None
        for line in c.stdout:
            if line.startswith("restore "):
                pid = int(line.split()[1])
                break
        t_restore = time.time() - t0
        assert pid and pid > 0, (name, pid)
        wait(lambda: tick(w) >= t + 2)
        os.kill(pid, 9)
        c.kill()
        c.wait()
        res[name][0].append(t_dump)
        res[name][1].append(t_restore)
for name, (d, rr) in res.items():
    print(f"{name}: dump median {statistics.median(d):.3f} s, restore median {statistics.median(rr):.3f} s")
print("ours/upstream: dump %.2f, restore %.2f" % (statistics.median(res["ours"][0]) / statistics.median(res["upstream"][0]),
                                                  statistics.median(res["ours"][1]) / statistics.median(res["upstream"][1])))
subprocess.run(["rm", "-rf", tmp])
