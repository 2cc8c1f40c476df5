"""pythreads.py ITER: four threads each compute a sha256 chain of ITER steps
(2 ms apart) and store it under a lock; main prints "ready" once they run,
then each digest in thread order and "done". Deterministic."""
import hashlib
import sys
import threading
import time


def main():
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    results = {}
    lock = threading.Lock()
    started = threading.Barrier(5)

    def chain(n):
        h = hashlib.sha256(f"seed {n}".encode()).digest()
        started.wait()
        for i in range(iters):
            h = hashlib.sha256(h + i.to_bytes(4, "little")).digest()
            with lock:
                results[n] = h.hex()
            time.sleep(0.002)

    threads = [threading.Thread(target=chain, args=(n,), name=f"chain-{n}") for n in range(4)]
    for t in threads:
        t.start()
    started.wait()
    print("ready", flush=True)
    for t in threads:
        t.join()
    for n in range(4):
        print(f"thread {n} {results[n]}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
