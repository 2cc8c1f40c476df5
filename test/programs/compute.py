#!/usr/bin/env python3
"""compute.py ITER

Checkpoint/restart target running the Python interpreter: a deterministic
computation (sha256 chain, a dict and a list of big ints).

Protocol: "ready" after setup, "i <i> <16 hex digits>" every iteration
(3 ms apart), then "done <64 hex digits>".  Output never depends on
hash randomization (only int keys, insertion-ordered dict).
"""
import hashlib
import sys
import time


def main():
    if len(sys.argv) != 2:
        print("usage: compute.py ITER", file=sys.stderr)
        return 2
    iters = int(sys.argv[1])

    h = hashlib.sha256(b"stasis")
    table = {}
    big = []
    acc = 1
    for k in range(256):
        acc = (acc * 6364136223846793005 + 1442695040888963407 + k) % (1 << 4099)
        big.append(acc)
        table[k] = hashlib.sha256(k.to_bytes(4, "little")).digest()

    print("ready", flush=True)

    digest = h.hexdigest()
    for i in range(iters):
        h.update(i.to_bytes(8, "little"))
        d = h.digest()
        key = int.from_bytes(d[:2], "little") % 1024
        table[key] = hashlib.sha256(table.get(key, b"") + d).digest()
        j = d[2] % len(big)
        big[j] = (big[j] * int.from_bytes(d[:16], "little") + i) % (1 << 4099)
        big.append(big[j] ^ int.from_bytes(d, "big"))
        if len(big) > 512:
            del big[d[3] % len(big)]
        s = hashlib.sha256(d)
        total = sum(big)
        s.update(total.to_bytes(total.bit_length() // 8 + 1, "little"))
        for k in sorted(table)[: 8]:
            s.update(table[k])
        digest = s.hexdigest()
        print("i %d %s" % (i, digest[:16]), flush=True)
        time.sleep(0.003)

    print("done %s" % digest, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
