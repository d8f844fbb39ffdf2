#!/usr/bin/python3
"""Retrieve from the L2 disk tier (disk -> L1 -> worker) in GB/s, against plain pread of the same
files in the same script (docs/l2-tier.md).

Setup (untimed): a shmkv-server with --disk-dir and --disk-write-through stores N objects of SIZE
bytes; once every write has landed the server is restarted with the same --disk-dir and a pool
that holds a quarter of the data set, so every retrieve below loads from disk (L1 evicts the
previous batch's clean copies, nothing is written).

Each round, alternating so drift hits both alike:
  l2:     prepare_retrieve of B keys per call (the server READs them into L1 through the file
          worker, B in flight), then the worker's copy out of each slot into a private buffer
          (numpy copyto), then commit_retrieve. Timed over all N objects.
  pread:  the same files, B at a time on B threads (os.preadv into a private buffer, the GIL is
          released), i.e. what the inference worker would get reading the files itself: one copy
          where L2 makes two (page cache -> pool, pool -> private buffer).
Two cache states: `cold` evicts the files from the page cache first (posix_fadvise DONTNEED, so the
disk is read), `warm` leaves them cached (the copies alone). 1 GB = 1e9 bytes. Prints a Markdown
table: median GB/s of the rounds, min..max, and the ratio l2 / pread of the medians.

Usage (from the repository root, after building):
  /usr/bin/python3 bench/l2_bench.py [--size-mib 32] [--objects 32] [--batch 4] [--rounds 5]
"""
import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Server:
    def __init__(self, binary, disk, pool, name, sock, *extra):
        from shmkv.server import start_server  # the build's package (main() put it on sys.path)

        self.proc, _ = start_server(binary, ["--pool-size", pool, "--shm-name", name, "--socket", sock,
                                             "--disk-dir", disk, "--log-level", "warn", *extra])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def drop_cache(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=32)
    ap.add_argument("--objects", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--build", default=os.environ.get("SHMKV_BUILD_DIR", os.path.join(ROOT, "build")))
    ap.add_argument("--dir", default=None, help="parent of the disk directory (default: the temp dir)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(args.build, "python"))
    import shmkv  # noqa: PLC0415

    size = args.size_mib << 20
    n, batch = args.objects, args.batch
    server_bin = os.path.join(args.build, "src", "shmkv-server")
    work = tempfile.mkdtemp(prefix="shmkv-l2-bench-", dir=args.dir)
    disk = os.path.join(work, "disk")
    sock = os.path.join(work, "s.sock")
    name = f"l2bench{os.getpid()}"
    keys = [hashlib.sha256(b"bench-%d" % i).digest() for i in range(n)]
    src = np.random.default_rng(7).integers(0, 256, size=size, dtype=np.uint8)

    log(f"storing {n} x {args.size_mib} MiB with write-through into {disk}")
    s = Server(server_bin, disk, f"{max(n * args.size_mib // 4, 2 * batch * args.size_mib)}MiB", name, sock,
               "--disk-write-through")
    c = shmkv.Client(sock, timeout=60.0, model="bench")
    for i, k in enumerate(keys):
        src[:8] = np.frombuffer(i.to_bytes(8, "little"), dtype=np.uint8)  # distinct objects
        assert c.put(k, src) is not False
        while c.stats()["l2_dirty_objects"] > 2:  # the pool holds 8: do not outrun the disk
            time.sleep(0.005)
    while (lambda st: st["l2_writes_in_flight"] or st["l2_dirty_objects"])(c.stats()):
        time.sleep(0.01)
    st = c.stats()
    assert st["l2_objects"] == n and st["l2_write_errors"] == 0, st
    c.close()
    s.stop()
    # The object files (not the tier's lock file, .shmkv.lock).
    files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(disk) for f in fs if not f.startswith("."))
    assert len(files) == n

    pool_mib = max(n * args.size_mib // 4, 2 * batch * args.size_mib)
    s = Server(server_bin, disk, f"{pool_mib}MiB", name, sock)
    c = shmkv.Client(sock, timeout=120.0, model="bench")
    assert c.lookup(keys) == n
    out = [np.empty(size, dtype=np.uint8) for _ in range(batch)]

    def run_l2():
        t0 = time.perf_counter()
        for b in range(0, n, batch):
            ks = keys[b:b + batch]
            views = c.prepare_retrieve(ks)
            for j, v in enumerate(views):
                assert v is not None, "a key went missing"
                np.copyto(out[j], np.frombuffer(v, dtype=np.uint8))
            c.commit_retrieve(ks)
        return n * size / (time.perf_counter() - t0) / 1e9

    pool = ThreadPoolExecutor(batch)

    def read_file(path, buf):
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [memoryview(buf)], 0)
            assert got == size
        finally:
            os.close(fd)

    def run_pread():
        t0 = time.perf_counter()
        for b in range(0, n, batch):
            list(pool.map(read_file, files[b:b + batch], out[:len(files[b:b + batch])]))
        return n * size / (time.perf_counter() - t0) / 1e9

    # One check that L2 gives back what was stored (object 0: src with index 0 in its first bytes).
    src[:8] = 0
    v = c.prepare_retrieve(keys[:1])[0]
    assert hashlib.sha256(bytes(v)).digest() == hashlib.sha256(src.tobytes()).digest(), "L2 returned other bytes"
    c.commit_retrieve(keys[:1])

    results = {}
    for state in ("cold", "warm"):
        for r in range(args.rounds):
            for kind, fn in (("l2", run_l2), ("pread", run_pread)):
                if state == "cold":
                    drop_cache(files)
                else:
                    fn()  # warm-up pass fills the page cache
                results.setdefault((state, kind), []).append(fn())
            log(f"{state} round {r}: l2 {results[(state, 'l2')][-1]:.2f} GB/s, "
                f"pread {results[(state, 'pread')][-1]:.2f} GB/s")
    st = c.stats()
    assert st["l2_read_errors"] == 0, st
    c.close()
    s.stop()
    subprocess.run(["rm", "-rf", work], check=False)

    print(f"\n{n} objects x {args.size_mib} MiB, batches of {batch} (worker queue depth 4), {args.rounds} rounds\n")
    print("| cache | L2 retrieve GB/s (median, min..max) | pread x{0} threads GB/s | L2 / pread |".format(batch))
    print("|---|---|---|---|")
    for state in ("cold", "warm"):
        a, b = results[(state, "l2")], results[(state, "pread")]
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"| {state} | {ma:.2f} ({min(a):.2f}..{max(a):.2f}) | {mb:.2f} ({min(b):.2f}..{max(b):.2f}) "
              f"| {ma / mb:.2f}x |")


if __name__ == "__main__":
    main()
