#!/usr/bin/python3
"""WRITE and READ throughput of shmkv-file-worker --direct against fio, same sizes, same queue depth.

For each queue depth Q and each round:
  worker WRITE: N pipelined `WRITE obj<i> <ptr> <32 MiB>` (pool -> file, O_DIRECT, temp file +
                rename), timed from the first byte sent to the last reply read; files deleted
                beforehand (untimed) so every round writes fresh files.
  worker READ:  N pipelined `READ obj<i> <ptr> <32 MiB>` into a second pool region; the bytes are
                verified against the source afterwards (untimed).
  fio write:    --rw=write --bs=32M --filesize=32M --nrfiles=N --iodepth=Q --ioengine=io_uring
                --direct=1 --fallocate=none, into fresh files (deleted beforehand).
  fio read:     the same files, --rw=read.
  The fio pair runs twice: with fio's defaults, and with --fixedbufs=1 (registered buffers), which
  is io_uring's fastest O_DIRECT path and the stronger baseline.
Worker and fio rounds alternate so drift of the disk hits both alike. Reports the median GB/s
(1 GB = 1e9 bytes) of the rounds and the ratio worker / fio, as a Markdown table on stdout.

Usage (from the repository root, after building):
  /usr/bin/python3 bench/file_worker_bench.py [--objects 32] [--queue-depths 1,8] [--rounds 3]
      [--io-engines auto|uring|threads|uring,threads]
"""
import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import resource_tracker, shared_memory

MIB = 1 << 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Worker:
    def __init__(self, binary: str, root: str, queue_depth: int, engine: str):
        self.proc = subprocess.Popen([binary, "--root", root, "--direct", "--queue-depth", str(queue_depth),
                                      "--io-engine", engine],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def replies(self, n: int) -> list:
        return [self.proc.stdout.readline().decode().rstrip("\n") for _ in range(n)]

    def call(self, line: str) -> str:
        self.send(line + "\n")
        return self.replies(1)[0]

    def close(self) -> None:
        self.call("QUIT")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


def fio(fio_dir: str, rw: str, objects: int, obj_bytes: int, queue_depth: int, fixedbufs: bool) -> float:
    cmd = ["fio", "--name=shmkv_fw", f"--directory={fio_dir}", f"--rw={rw}", f"--bs={obj_bytes}",
           f"--filesize={obj_bytes}", f"--nrfiles={objects}", f"--size={objects * obj_bytes}",
           f"--iodepth={queue_depth}", "--ioengine=io_uring", "--direct=1", "--fallocate=none",
           "--output-format=json"] + (["--fixedbufs=1"] if fixedbufs else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job["write" if rw == "write" else "read"]["bw_bytes"] / 1e9


def clear(directory: str) -> None:
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))


def main() -> int:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(repo, "build"))
    ap.add_argument("--dir", default="/var/tmp", help="parent of the scratch directory (a disk, not tmpfs)")
    ap.add_argument("--objects", type=int, default=32, help="objects per pass")
    ap.add_argument("--object-mib", type=int, default=32)
    ap.add_argument("--queue-depths", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--io-engines", default="auto",
                    help="comma-separated --io-engine values of the worker (auto, uring, threads); each is "
                         "measured in every round, against the same fio runs")
    args = ap.parse_args()

    worker_bin = os.path.join(args.build_dir, "src", "file_worker", "shmkv-file-worker")
    holder_bin = os.path.join(args.build_dir, "tests", "segment_holder")
    for b in (worker_bin, holder_bin):
        if not os.path.exists(b):
            log(f"{b} is not built")
            return 1
    if shutil.which("fio") is None:
        log("fio is not installed")
        return 1
    fstype = subprocess.run(["findmnt", "-no", "FSTYPE", "-T", args.dir], capture_output=True,
                            text=True).stdout.strip() or "unknown fs"
    obj = args.object_mib * MIB
    n = args.objects
    depths = [int(q) for q in args.queue_depths.split(",")]
    engines = [e for e in args.io_engines.split(",") if e]
    scratch = tempfile.mkdtemp(prefix="shmkv_fw_bench_", dir=args.dir)
    worker_root = os.path.join(scratch, "worker")
    fio_dir = os.path.join(scratch, "fio")
    os.makedirs(worker_root)
    os.makedirs(fio_dir)

    seg_name = f"lmcache_l1_pool_fwbench{os.getpid()}"
    seg_size = 2 * n * obj  # sources in the first half, READ destinations in the second
    holder = subprocess.Popen([holder_bin, seg_name, str(seg_size)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    shm = None
    try:
        if holder.stdout.readline().strip() != seg_name:
            log("segment_holder failed")
            return 1
        shm = shared_memory.SharedMemory(name=seg_name, create=False)
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001 - the holder owns it
        view = ctypes.c_char.from_buffer(shm.buf)
        base = ctypes.addressof(view)
        del view
        block = os.urandom(obj)
        for i in range(n):
            shm.buf[i * obj:(i + 1) * obj] = block
            shm.buf[i * obj:i * obj + 8] = i.to_bytes(8, "little")  # objects differ
        log(f"scratch {scratch} ({fstype}); {n} objects x {args.object_mib} MiB per pass; "
            f"queue depths {depths}; worker engines {engines}; {args.rounds} rounds")

        results = {}
        for q in depths:
            wr = {e: [] for e in engines}
            rd = {e: [] for e in engines}
            fwr, frd, xwr, xrd = [], [], [], []
            workers = {e: Worker(worker_bin, worker_root, q, e) for e in engines}
            for w in workers.values():
                assert w.call(f"ATTACH {seg_name} {seg_size} {base}") == "OK"
            for r in range(args.rounds):
                for e, worker in workers.items():
                    for i in range(n):
                        worker.call(f"DELETE obj{i}")
                    batch = "".join(f"WRITE obj{i} {base + i * obj} {obj}\n" for i in range(n))
                    t0 = time.perf_counter()
                    worker.send(batch)
                    got = worker.replies(n)
                    t1 = time.perf_counter()
                    assert got == [f"OK {obj}"] * n, got[:3]
                    wr[e].append(n * obj / (t1 - t0) / 1e9)

                    dst = n * obj
                    shm.buf[dst:dst + n * obj] = bytes(n * obj)  # the READ must really bring the bytes
                    batch = "".join(f"READ obj{i} {base + dst + i * obj} {obj}\n" for i in range(n))
                    t0 = time.perf_counter()
                    worker.send(batch)
                    got = worker.replies(n)
                    t1 = time.perf_counter()
                    assert got == [f"OK {obj}"] * n, got[:3]
                    rd[e].append(n * obj / (t1 - t0) / 1e9)
                    assert bytes(shm.buf[dst:dst + n * obj]) == bytes(shm.buf[0:n * obj]), "READ returned other bytes"

                clear(fio_dir)
                fwr.append(fio(fio_dir, "write", n, obj, q, fixedbufs=False))
                frd.append(fio(fio_dir, "read", n, obj, q, fixedbufs=False))
                clear(fio_dir)
                xwr.append(fio(fio_dir, "write", n, obj, q, fixedbufs=True))
                xrd.append(fio(fio_dir, "read", n, obj, q, fixedbufs=True))
                mine = " | ".join(f"worker[{e}] write {wr[e][-1]:.2f} read {rd[e][-1]:.2f}" for e in engines)
                log(f"qd {q} round {r + 1}: {mine} | "
                    f"fio write {fwr[-1]:.2f} read {frd[-1]:.2f} | "
                    f"fio fixedbufs write {xwr[-1]:.2f} read {xrd[-1]:.2f} GB/s")
            for w in workers.values():
                w.close()
            for e in engines:
                results[(q, e)] = {k: statistics.median(v) for k, v in
                                   (("write", wr[e]), ("read", rd[e]), ("fio_write", fwr), ("fio_read", frd),
                                    ("fix_write", xwr), ("fix_read", xrd))}

        print(f"{n} objects of {args.object_mib} MiB per pass, O_DIRECT, {fstype} under {args.dir}, "
              f"median of {args.rounds} rounds, GB/s = 1e9 bytes/s\n")
        print("| queue depth | worker --io-engine | direction | shmkv-file-worker GB/s | fio io_uring GB/s "
              "| worker / fio | fio io_uring --fixedbufs GB/s | worker / fio --fixedbufs |")
        print("|---|---|---|---|---|---|---|---|")
        for (q, e), m in results.items():
            for d in ("write", "read"):
                label = "WRITE (pool → file)" if d == "write" else "READ (file → pool)"
                f, x = m["fio_" + d], m["fix_" + d]
                print(f"| {q} | {e} | {label} | {m[d]:.2f} | {f:.2f} | {m[d] / f:.2f} | {x:.2f} | {m[d] / x:.2f} |")
        return 0
    finally:
        if shm is not None:
            shm.close()
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
