# A multiprocessing Pool of 3 workers whose results travel through two
# queues: an mp.Queue (a pipe, a feeder thread in each worker, POSIX
# semaphores in /dev/shm) and a Manager().Queue (a server process the
# workers reach through unix sockets), both inherited by the workers
# through the pool's initializer. Item i is a payload of 1 KB to 121 KB
# (larger than a pipe's buffer: a feeder blocks mid-write) known from i
# alone. The main process submits batches of 8 items and takes each one
# from its queue: every item must arrive once, whole, and the pool's
# return values match; one `tick N ok` line per batch in progress.log,
# else `tick N FAIL why` and it stops. (tests/real_programs.rs)
import multiprocessing as mp, hashlib, time, queue, os

def payload(i):
    n = 1000 + (i * 7919) % 120000
    seed = hashlib.sha256(b'item %d' % i).digest()
    return (seed * (n // 32 + 1))[:n]

def init(q, mq):
    global Q, MQ
    Q, MQ = q, mq

def work(i):
    p = payload(i)
    (Q if i % 2 == 0 else MQ).put((i, p))
    time.sleep(0.01)
    return len(p)

def log(line):
    with open('progress.log', 'a') as f:
        f.write(line + '\n')

if __name__ == '__main__':
    mgr = mp.Manager()
    q, mq = mp.Queue(), mgr.Queue()
    seen = set()
    with mp.Pool(3, initializer=init, initargs=(q, mq)) as pool:
        tick = 0
        nxt = 0
        while True:
            tick += 1
            batch = list(range(nxt, nxt + 8))
            nxt += 8
            r = pool.map_async(work, batch)
            got = {}
            ok = True
            why = ''
            want_even = [i for i in batch if i % 2 == 0]
            want_odd = [i for i in batch if i % 2 == 1]
            try:
                for src, want in ((q, want_even), (mq, want_odd)):
                    for _ in want:
                        i, p = src.get(timeout=60)
                        if i in seen or i in got:
                            ok, why = False, 'item %d twice' % i
                        elif p != payload(i):
                            ok, why = False, 'item %d: %d bytes, not its payload' % (i, len(p))
                        got[i] = True
            except queue.Empty:
                ok, why = False, 'items missing: %s' % sorted(set(batch) - set(got))
            lens = r.get(timeout=60)
            if ok and (sorted(got) != batch or lens != [len(payload(i)) for i in batch]):
                ok, why = False, 'batch %s: got %s, lengths %s' % (batch, sorted(got), lens)
            seen.update(got)
            log('tick %d %s %s' % (tick, 'ok' if ok else 'FAIL', why))
            if not ok:
                break
