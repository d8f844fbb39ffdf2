#!/usr/bin/python3
"""Retrieve from the L2 disk tier (disk -> L1 -> the worker's buffer) in GB/s, against fio reading
the same files with O_DIRECT and io_uring at the same block size and queue depth, in the same
script (docs/l2-tier.md, docs/performance.md). Also times write-behind with O_DIRECT against
buffered I/O (--disk-direct off), the mode of earlier versions.

Setup, each timed as write-behind throughput: a shmkv-server with --disk-dir and
--disk-write-through stores N objects of SIZE bytes (put = prepare, copy into the pool, commit)
and the time runs until every write has landed (l2_dirty_objects and l2_writes_in_flight 0):
once with --disk-direct off (buffered, into the page cache) in a scratch directory, once with
--disk-direct on (the benchmark's directory). Then the server is restarted with the same
--disk-dir and a pool that holds a quarter of the data set (at least connections + 1 batches), so every
retrieve below loads from disk (L1 evicts the previous batches' clean copies, nothing is written).

Each round, alternating so drift hits every method alike:
  l2 pipelined:  the N keys in sub-batches of B keys over C connections on C threads
                 (--connections, default 3): while one thread copies its sub-batch out of the pool
                 (numpy copyto into a private buffer) and commits, the others' prepare_retrieve
                 have the server READ the next sub-batches (O_DIRECT, straight into the pool
                 slots; the worker keeps 4 reads in flight). The protocol is unchanged: each
                 connection sends one request at a time.
  l2 serial:     one connection: prepare_retrieve of B keys, copy, commit, next (no overlap; what
                 earlier versions of this script measured).
  fio:           fio --rw=read --direct=1 --ioengine=io_uring --bs=SIZE --iodepth=4 over the
                 same N files (read-only), i.e. the device with the same request size and queue
                 depth, no copy at all.
  pread xB:      the same files, B at a time on B threads (os.preadv into a private buffer),
                 after evicting them from the page cache (buffered reads from the disk).
1 GB = 1e9 bytes. Prints a Markdown table: median GB/s, min..max, ratio to fio.

Both ratios to fio are printed: of the medians, and the median of the per-round ratios.

Usage (from the repository root, after building):
  /usr/bin/python3 bench/l2_bench.py [--size-mib 32] [--objects 32] [--batch 4] [--rounds 5] [--dir /var/tmp]
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUEUE_DEPTH = 4  # the server's file worker (DiskTierOptions::queue_depth)


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


def object_files(disk):
    """The object files (not the tier's lock file, .shmkv.lock)."""
    return sorted(os.path.join(dp, f) for dp, _, fs in os.walk(disk) for f in fs if not f.startswith("."))


def store_all(shmkv, server_bin, disk, pool, name, sock, keys, src, direct):
    """Stores every key with write-through; returns GB/s from the first put to the last write."""
    s = Server(server_bin, disk, pool, name, sock, "--disk-write-through", "--disk-direct", direct)
    c = shmkv.Client(sock, timeout=60.0, model="bench")
    t0 = time.perf_counter()
    for i, k in enumerate(keys):
        src[:8] = np.frombuffer(i.to_bytes(8, "little"), dtype=np.uint8)  # distinct objects
        assert c.put(k, src) is not False
        while c.stats()["l2_dirty_objects"] > 2:  # the pool holds a few: do not outrun the disk
            time.sleep(0.002)
    while (lambda st: st["l2_writes_in_flight"] or st["l2_dirty_objects"])(c.stats()):
        time.sleep(0.002)
    gbps = len(keys) * src.size / (time.perf_counter() - t0) / 1e9
    st = c.stats()
    assert st["l2_objects"] == len(keys) and st["l2_write_errors"] == 0 and st["l2_evicted_dirty"] == 0, st
    c.close()
    s.stop()
    return gbps


def fio_read(links, size, depth):
    """fio over the object files, through hard links with short names in `links` (fio's filename
    option is limited in length)."""
    names = sorted(os.listdir(links), key=int)
    cmd = ["fio", "--name=l2", "--readonly", "--rw=read", f"--bs={size}", f"--iodepth={depth}",
           "--ioengine=io_uring", "--direct=1", f"--directory={links}", "--filename=" + ":".join(names),
           f"--size={len(names) * size}", "--output-format=json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    assert job["read"]["io_bytes"] == len(names) * size, job["read"]["io_bytes"]
    return job["read"]["bw_bytes"] / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=32)
    ap.add_argument("--objects", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=3, help="connections (threads) of l2 pipelined")
    ap.add_argument("--build", default=os.environ.get("SHMKV_BUILD_DIR", os.path.join(ROOT, "build")))
    ap.add_argument("--dir", default="/var/tmp", help="parent of the disk directory (a disk file system)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(args.build, "python"))
    import shmkv  # noqa: PLC0415

    if shutil.which("fio") is None:
        sys.exit("fio is not installed (scripts/install-deps.sh installs it)")
    size = args.size_mib << 20
    n, batch = args.objects, args.batch
    server_bin = os.path.join(args.build, "src", "shmkv-server")
    work = tempfile.mkdtemp(prefix="shmkv-l2-bench-", dir=args.dir)
    disk = os.path.join(work, "disk")
    sock = os.path.join(work, "s.sock")
    name = f"l2bench{os.getpid()}"
    keys = [hashlib.sha256(b"bench-%d" % i).digest() for i in range(n)]
    src = np.random.default_rng(7).integers(0, 256, size=size, dtype=np.uint8)
    pool_mib = max(n * args.size_mib // 4, (args.connections + 1) * batch * args.size_mib)

    log(f"write-behind: {n} x {args.size_mib} MiB with write-through, buffered then O_DIRECT, into {work}")
    writes = {"buffered": [], "O_DIRECT": []}
    for r in range(max(1, args.rounds // 2)):
        for mode, flag, d in (("buffered", "off", os.path.join(work, "buffered")), ("O_DIRECT", "on", disk)):
            shutil.rmtree(d, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            writes[mode].append(store_all(shmkv, server_bin, d, f"{pool_mib}MiB", name, sock, keys, src, flag))
        log(f"write round {r}: buffered {writes['buffered'][-1]:.2f} GB/s, O_DIRECT {writes['O_DIRECT'][-1]:.2f} GB/s")
    shutil.rmtree(os.path.join(work, "buffered"), ignore_errors=True)
    subprocess.run(["sync"], check=True)
    files = object_files(disk)
    assert len(files) == n and all(os.path.getsize(f) == size for f in files)
    links = os.path.join(work, "fio")
    os.makedirs(links)
    for i, f in enumerate(files):
        os.link(f, os.path.join(links, str(i)))

    s = Server(server_bin, disk, f"{pool_mib}MiB", name, sock, "--disk-direct", "on")
    conns = [shmkv.Client(sock, timeout=120.0, model="bench") for _ in range(max(1, args.connections))]
    c = conns[0]
    assert c.lookup(keys) == n
    out = [[np.empty(size, dtype=np.uint8) for _ in range(batch)] for _ in conns]
    sub_batches = [keys[b:b + batch] for b in range(0, n, batch)]

    def take(conn, bufs, ks):
        views = conn.prepare_retrieve(ks)
        for j, v in enumerate(views):
            assert v is not None, "a key went missing"
            np.copyto(bufs[j], np.frombuffer(v, dtype=np.uint8))
        conn.commit_retrieve(ks)

    def run_serial():
        t0 = time.perf_counter()
        for ks in sub_batches:
            take(c, out[0], ks)
        return n * size / (time.perf_counter() - t0) / 1e9

    def run_pipelined():
        # Thread t takes sub-batches t, t+C, ...: one loads while another copies.
        errors = []

        def worker(t):
            try:
                for ks in sub_batches[t::len(conns)]:
                    take(conns[t], out[t], ks)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(conns))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
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
        drop_cache(files)
        t0 = time.perf_counter()
        for b in range(0, n, batch):
            list(pool.map(read_file, files[b:b + batch], out[0][:len(files[b:b + batch])]))
        return n * size / (time.perf_counter() - t0) / 1e9

    # One check that L2 gives back what was stored (object 0: src with index 0 in its first bytes).
    src[:8] = 0
    v = c.prepare_retrieve(keys[:1])[0]
    assert hashlib.sha256(bytes(v)).digest() == hashlib.sha256(src.tobytes()).digest(), "L2 returned other bytes"
    c.commit_retrieve(keys[:1])

    methods = (("l2 pipelined", run_pipelined), ("l2 serial", run_serial),
               ("fio", lambda: fio_read(links, size, QUEUE_DEPTH)), ("pread", run_pread))
    results = {m: [] for m, _ in methods}
    for r in range(args.rounds):
        for m, fn in methods:
            results[m].append(fn())
        log(f"round {r}: " + ", ".join(f"{m} {results[m][-1]:.2f}" for m, _ in methods) + " GB/s")
    st = c.stats()
    assert st["l2_read_errors"] == 0 and st["l2_load_full"] == 0, st
    for conn in conns:
        conn.close()
    s.stop()
    subprocess.run(["rm", "-rf", work], check=False)

    fio_med = statistics.median(results["fio"])
    print(f"\n{n} objects x {args.size_mib} MiB, sub-batches of {batch}, worker and fio queue depth "
          f"{QUEUE_DEPTH}, {args.rounds} rounds, O_DIRECT\n")
    # Both ratios: of the medians, and the median of each round's own ratio (fio ran right after
    # the L2 passes of that round), which is steadier when the disk's speed drifts.
    print("| method | GB/s (median, min..max) | / fio (medians) | / fio (median of per-round ratios) |")
    print("|---|---|---|---|")
    for m, _ in methods:
        a = results[m]
        per_round = statistics.median(x / f for x, f in zip(a, results["fio"]))
        print(f"| {m} | {statistics.median(a):.2f} ({min(a):.2f}..{max(a):.2f}) | "
              f"{statistics.median(a) / fio_med:.2f}x | {per_round:.2f}x |")
    wb, wd = writes["buffered"], writes["O_DIRECT"]
    print(f"\nwrite-behind (put with --disk-write-through until every write landed), {len(wb)} rounds\n")
    print("| files | GB/s (median, min..max) | / buffered |")
    print("|---|---|---|")
    for mode, a in (("buffered (--disk-direct off)", wb), ("O_DIRECT (--disk-direct on)", wd)):
        print(f"| {mode} | {statistics.median(a):.2f} ({min(a):.2f}..{max(a):.2f}) | "
              f"{statistics.median(a) / statistics.median(wb):.2f}x |")


if __name__ == "__main__":
    main()
