#!/usr/bin/env python3
"""mp_ghosts.py PROGRESS ROUNDS [START_METHOD]

Checkpoint/restart target using multiprocessing with the fork start
method: WORKERS processes each run a sha256 chain for ROUNDS rounds, add
to a shared Array under a Lock (a sem_open semaphore, unlinked at once:
a mapping of a deleted /dev/shm file; the Array lives in an mmap of a
deleted /dev/shm temp file) and send each round's digest through a Queue
(a pipe, a lock and a feeder thread in each worker). The parent appends
"round N" to PROGRESS once every worker reported round N, and at the end
prints "result <64 hex digits>": a digest of every worker's digests, in
order, and of the Array. Deterministic: nothing depends on scheduling.
START_METHOD is "fork" unless given ("spawn": workers are new
interpreters, a resource tracker process runs, semaphores stay linked
under their names until the end).
"""
import hashlib
import multiprocessing as mp
import sys

WORKERS = 3
STEPS = 40000


def worker(w, rounds, arr, lock, q):
    h = hashlib.sha256(b"stasis-%d" % w).digest()
    for r in range(rounds):
        for _ in range(STEPS):
            h = hashlib.sha256(h).digest()
        with lock:
            arr[r % (len(arr) - 1)] += int.from_bytes(h[:6], "little")
            arr[len(arr) - 1] += 1
        q.put((w, r, h.hex()))
    q.put((w, None, None))


def main():
    if len(sys.argv) not in (3, 4):
        print("usage: mp_ghosts.py PROGRESS ROUNDS [START_METHOD]", file=sys.stderr)
        return 2
    progress, rounds = sys.argv[1], int(sys.argv[2])
    mp.set_start_method(sys.argv[3] if len(sys.argv) == 4 else "fork")
    arr = mp.Array("q", 8, lock=False)
    lock = mp.Lock()
    q = mp.Queue()
    procs = [mp.Process(target=worker, args=(w, rounds, arr, lock, q)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    got = {}
    finished = reported = 0
    while finished < WORKERS:
        w, r, digest = q.get()
        if r is None:
            finished += 1
            continue
        got[(w, r)] = digest
        while reported < rounds and all((x, reported) in got for x in range(WORKERS)):
            reported += 1
            with open(progress, "a") as f:
                f.write("round %d\n" % reported)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            print("worker failed", p.exitcode)
            return 1
    total = hashlib.sha256()
    for key in sorted(got):
        total.update(got[key].encode())
    total.update(",".join(str(x) for x in arr[:]).encode())
    assert arr[len(arr) - 1] == WORKERS * rounds
    print("result", total.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
