#!/usr/bin/python3
"""Sustained mixed load on one shmkv-server with its pool kept full (docs/reliability.md).

N client processes (default 16), each with its own connection, run a random mix of operations on
a key space twice what the pool holds, for a fixed time:
  lookup    lookup of a batch of keys (no pin)
  retrieve  prepare_retrieve of a batch, read and check every object found, commit_retrieve
  store     prepare_store of a batch, write the objects that got a slot, commit_store
  remove    remove of a batch
Before the clock starts the pool is filled with every key of the space, so it starts full and
stores keep it full by eviction (they add more than removes take). Each object's first 4 bytes are
the CRC-32 of the rest, which begins with the key: a retrieve that finds a wrong byte counts as an
error, like any exception. The server's memory (VmRSS, and RssAnon: its own heap, without the
pool pages it maps) and the pool's fill are sampled every half second.

Prints per operation: calls/s, keys/s, latency p50/p99 of one call; the error count (must be 0);
the pool fill (min over the run); the server's RSS at start, max and end. --json prints the same
as JSON.

Usage (from the repository root, after building):
  /usr/bin/python3 bench/load_bench.py [--seconds 60] [--clients 16] [--pool-size 256MiB]
      [--object-size 256KiB] [--batch 4] [--build DIR] [--json]
The server and module come from --build, else SHMKV_BUILD_DIR, else ./build.
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ("lookup", "retrieve", "store", "remove")
WEIGHTS = (30, 30, 30, 10)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"size '{text}': want a number with B, KiB, MiB or GiB")
    return int(m.group(1)) << {"B": 0, None: 0, "KiB": 10, "MiB": 20, "GiB": 30}[m.group(2)]


def key_of(i: int) -> bytes:
    return b"load-%08d" % i


def make_object(key: bytes, size: int, rng: random.Random) -> bytes:
    body = key + rng.randbytes(size - 4 - len(key))
    return struct.pack("<I", zlib.crc32(body)) + body


def object_ok(key: bytes, data: bytes) -> bool:
    return data[4:4 + len(key)] == key and struct.unpack("<I", data[:4])[0] == zlib.crc32(data[4:])


def client_main(idx, args, keyspace, sock, start_at, out):
    """One client process: the op mix until the deadline; sends its latencies and counts home."""
    sys.path.insert(0, os.path.join(args.build, "python"))
    import shmkv  # noqa: PLC0415

    rng = random.Random(1000 + idx)
    lat = {op: [] for op in OPS}
    keys_done = dict.fromkeys(OPS, 0)
    statuses = {}
    errors = []
    c = shmkv.Client(sock, timeout=30.0, model="load", instance_id=f"load-{idx}")
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = start_at + args.seconds
    while time.time() < deadline:
        op = rng.choices(OPS, WEIGHTS)[0]
        keys = list(dict.fromkeys(key_of(rng.randrange(keyspace)) for _ in range(args.batch)))
        t0 = time.perf_counter()
        try:
            if op == "lookup":
                c.lookup(keys)
            elif op == "retrieve":
                views = c.prepare_retrieve(keys)
                got = [k for k, v in zip(keys, views) if v is not None]
                for k, v in zip(keys, views):
                    if v is not None and not object_ok(k, bytes(v)):
                        errors.append(f"retrieve: {k!r} has wrong bytes")
                if got:
                    c.commit_retrieve(got)
                statuses["retrieve:ok"] = statuses.get("retrieve:ok", 0) + len(got)
                statuses["retrieve:missing"] = statuses.get("retrieve:missing", 0) + len(keys) - len(got)
            elif op == "store":
                slots = c.prepare_store(keys, [args.object_size] * len(keys))
                for s in c.last_statuses:
                    statuses[f"store:{s}"] = statuses.get(f"store:{s}", 0) + 1
                mine = []
                for k, s in zip(keys, slots):
                    if s is not None:
                        memoryview(s)[:] = make_object(k, len(s), rng)
                        mine.append(k)
                if mine:
                    c.commit_store(mine)
            else:
                for r in c.remove(keys):
                    statuses[f"remove:{r}"] = statuses.get(f"remove:{r}", 0) + 1
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            errors.append(f"{op}: {e!r}")
            continue
        lat[op].append(time.perf_counter() - t0)
        keys_done[op] += len(keys)
    c.close()
    out.put({"lat": lat, "keys": keys_done, "statuses": statuses, "errors": errors})


def proc_memory(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssShmem"):
                fields[name] = int(value.split()[0]) << 10
    return fields


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--pool-size", type=parse_size, default=parse_size("256MiB"))
    ap.add_argument("--object-size", type=parse_size, default=parse_size("256KiB"))
    ap.add_argument("--batch", type=int, default=4, help="keys per call")
    ap.add_argument("--build", default=os.environ.get("SHMKV_BUILD_DIR", os.path.join(ROOT, "build")))
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    if args.seconds <= 0 or args.clients < 1 or args.batch < 1 or args.object_size < 64:
        ap.error("--seconds, --clients and --batch must be positive, --object-size at least 64 B")
    if args.pool_size < 8 * args.object_size:
        ap.error("--pool-size must hold at least 8 objects")
    server_bin = os.path.join(args.build, "src", "shmkv-server")
    if not os.path.exists(server_bin):
        sys.exit(f"load_bench: {server_bin} does not exist; build first or pass --build / SHMKV_BUILD_DIR")
    sys.path.insert(0, os.path.join(args.build, "python"))
    import shmkv  # noqa: PLC0415

    capacity = args.pool_size // ((args.object_size + 4095) // 4096 * 4096)
    keyspace = capacity * 2
    tmp = tempfile.mkdtemp(prefix="shmkv-load-")
    sock = os.path.join(tmp, "load.sock")
    srv = subprocess.Popen([server_bin, "--pool-size", str(args.pool_size), "--shm-name", f"load{os.getpid()}",
                            "--socket", sock, "--log-level", "warn"], stdout=subprocess.PIPE, text=True)
    line = srv.stdout.readline()
    if not line.startswith("shmkv-server ready"):
        sys.exit(f"load_bench: the server did not start: {line!r}")
    try:
        # Fill the pool: every key once, so the run starts full and keeps evicting.
        rng = random.Random(1)
        with shmkv.Client(sock, timeout=30.0, model="load", instance_id="fill") as c:
            for i in range(0, keyspace, 16):
                keys = [key_of(j) for j in range(i, min(keyspace, i + 16))]
                slots = c.prepare_store(keys, [args.object_size] * len(keys))
                for k, s in zip(keys, slots):
                    memoryview(s)[:] = make_object(k, len(s), rng)
                c.commit_store(keys)
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        start_at = time.time() + 1.0 + 0.05 * args.clients  # every client connected before the clock
        procs = [ctx.Process(target=client_main, args=(i, args, keyspace, sock, start_at, out))
                 for i in range(args.clients)]
        for p in procs:
            p.start()
        samples = []
        with shmkv.Client(sock, timeout=30.0, model="load", instance_id="sampler") as c:
            while time.time() < start_at:
                time.sleep(0.01)
            while time.time() < start_at + args.seconds + 0.5:
                s = c.stats()
                samples.append({"t": round(time.time() - start_at, 2), "fill": s["used_bytes"] / s["pool_size"],
                                **proc_memory(srv.pid)})
                time.sleep(0.5)
            final_stats = c.stats()
        results = [out.get(timeout=120 + args.seconds) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        memory_end = proc_memory(srv.pid)
    finally:
        srv.terminate()
        srv.wait(timeout=30)

    report = {"seconds": args.seconds, "clients": args.clients, "pool_size": args.pool_size,
              "object_size": args.object_size, "batch": args.batch, "keyspace": keyspace,
              "pool_capacity_objects": capacity, "ops": {}, "statuses": {}, "errors": 0, "error_samples": []}
    for op in OPS:
        lat = [x for r in results for x in r["lat"][op]]
        keys = sum(r["keys"][op] for r in results)
        report["ops"][op] = {"calls_per_s": round(len(lat) / args.seconds, 1), "keys_per_s": round(keys / args.seconds, 1),
                             "p50_ms": round(1e3 * statistics.median(lat), 3) if lat else None,
                             "p99_ms": round(1e3 * pct(lat, 0.99), 3) if lat else None}
    for r in results:
        for k, v in r["statuses"].items():
            report["statuses"][k] = report["statuses"].get(k, 0) + v
        report["errors"] += len(r["errors"])
        report["error_samples"] += r["errors"][:3]
    report["total_calls_per_s"] = round(sum(o["calls_per_s"] for o in report["ops"].values()), 1)
    during = [s for s in samples if s["t"] >= 0]
    report["pool_fill_min"] = round(min(s["fill"] for s in during), 4)
    report["pool_fill_mean"] = round(statistics.mean(s["fill"] for s in during), 4)
    report["server_memory"] = {
        name: {"start": during[0][name], "max": max(s[name] for s in during), "end": memory_end[name]}
        for name in ("VmRSS", "RssAnon", "RssShmem")}
    report["server_stats"] = {k: final_stats[k] for k in ("objects", "used_bytes", "evictions", "stores", "retrieves",
                                                          "lookups", "reserved_objects", "pinned_objects",
                                                          "expired_leases")}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"shmkv load: {args.clients} clients, {args.seconds:g} s, pool {args.pool_size >> 20} MiB "
              f"({capacity} objects of {args.object_size >> 10} KiB, {keyspace} keys), batch {args.batch}")
        print(f"  {'op':<9} {'calls/s':>9} {'keys/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for op, o in report["ops"].items():
            print(f"  {op:<9} {o['calls_per_s']:>9.1f} {o['keys_per_s']:>9.1f} {o['p50_ms']:>8.3f} {o['p99_ms']:>8.3f}")
        print(f"  total     {report['total_calls_per_s']:>9.1f} calls/s")
        print(f"  errors    {report['errors']} {report['error_samples'][:3] if report['errors'] else ''}")
        print(f"  pool fill min {100 * report['pool_fill_min']:.1f}%, mean {100 * report['pool_fill_mean']:.1f}%; "
              f"{final_stats['evictions']} evictions")
        for name, m in report["server_memory"].items():
            print(f"  server {name:<8} start {m['start'] / 2**20:7.1f} MiB  max {m['max'] / 2**20:7.1f} MiB  "
                  f"end {m['end'] / 2**20:7.1f} MiB")
        print(f"  statuses  {json.dumps(report['statuses'], sort_keys=True)}")
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
