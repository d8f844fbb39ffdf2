#!/usr/bin/python3
"""The L3 Redis tier (docs/l3-redis.md) in GB/s against redis-benchmark on the same cluster, and
lookup latency across L1, L2 and L3, in one script.

What it starts (all on loopback, all stopped at the end, also on Ctrl-C or an error): a Redis
Cluster of 3 masters (tests/python/redis_cluster.py: persistence off, allkeys-lru) and two
shmkv-servers, "A" and "B", with their own --shm-name and --socket, both with
`--redis <cluster> --redis-write through`.

Per chunk size (--sizes, default 8MiB,32MiB), with C client processes (--clients, default 8; one
shmkv.Client each) and N chunks (--chunks):
  store      the C clients store N fresh chunks through A (prepare_store, one memcpy into the slot,
             commit_store; one chunk per call, as redis-benchmark has one request in flight per
             connection). Timed from the moment the clients are released until A's stats show
             l3_writes + l3_write_skipped_exists = N: the bytes are in Redis. A's write queue
             (--redis-max-inflight-bytes) holds a whole run, so nothing is dropped.
  retrieve   the C clients look their share of the keys up through B (untimed: B's L1 is empty for
             them; the lookup teaches B that Redis holds them), then, timed from their release to
             the last client's end, prepare_retrieve + commit_retrieve of one chunk per call: B
             GETs each chunk from Redis into its L1 slot. B's l3_loads must grow by N (every chunk
             came from Redis). The bytes are checked afterwards (CRC-32 of every chunk, untimed).
  baseline   redis-benchmark --cluster -t set,get -d SIZE -c C -n R --csv on the same
             cluster, R = max(N, 2C, --baseline-bytes / SIZE) requests (redis-benchmark's own start-up,
             connecting and reading the slot map, is inside its time: R large enough amortises it):
             GB/s = requests per second x SIZE.
The ratios shmkv/redis-benchmark (store vs SET, retrieve vs GET) are the figures of merit (goal:
>= 0.8x). 1 GB = 1e9 bytes.

Lookup latency (--lookup-calls calls per case, p50/p99 of one call): B is restarted with
--disk-dir (write-through, --redis-write off), so that a prompt of --prompt-keys keys (default 32)
has its whole run in L1 only, in L2 only (on B's disk, not in its L1), in L3 only (stored through
A), or mixed (L1, L2, L3, L1, ... key by key). The L3 keys are either new to B at every call (a
fresh prompt per call: the lookup asks Redis, STRLEN pipelined per node) or ones B looked up before
(B remembers them: no Redis round trip). Every call must count the whole prompt; the stats deltas
per call (lookup_hits, l2_hits, l3_hits) show which tier answered, and for the single-tier cases
must name that tier.

Usage (from the repository root, after building; Debian's redis-server and redis-tools installed):
  /usr/bin/python3 bench/l3_bench.py [--sizes 8MiB,32MiB] [--clients 8] [--chunks 32]
      [--lookup-calls 300] [--prompt-keys 32] [--json PATH] [--build DIR] [--quick] [--keep]
The server and the Python module come from --build, else SHMKV_BUILD_DIR, else ./build.
--quick: one small size, 4 clients, few chunks and calls: a smoke run of well under a minute.
Exit status: 0 when every phase verified (whatever the ratios), 1 when a check failed.
"""
import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

from redis_cluster import RedisCluster  # noqa: E402 - the tests' harness, on the path just above

MODEL = "l3bench"
GOAL = 0.8
PREFIX = 16  # bytes at the start of each chunk that make it distinct: CRC of run and size, b"l3b", index


class BenchError(Exception):
    """A check failed: the numbers would not mean what they say."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"size '{text}': want a number with B, KiB, MiB or GiB")
    return int(m.group(1)) << {"B": 0, None: 0, "KiB": 10, "MiB": 20, "GiB": 30}[m.group(2)]


def size_name(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def pct(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---------------------------------------------------------------------------------------------
# Chunks: a random base per size, the first PREFIX bytes replaced by the chunk's tag and index, so
# that every chunk differs while the clients only copy a shared buffer (no per-chunk generation in
# the timed region); the expected CRC-32s are computed before the clock starts.

_BASE: dict[int, bytes] = {}  # size -> base bytes; made before the clients fork, shared with them


def chunk_key(run: str, size: int, i: int) -> bytes:
    return f"l3bench-{run}-{size}-{i:06d}".encode()


def chunk_prefix(run: str, size: int, i: int) -> bytes:
    return zlib.crc32(f"{run}-{size}".encode()).to_bytes(4, "little") + b"l3b\0" + i.to_bytes(8, "little")


def expected_crcs(run: str, size: int, n: int) -> list[int]:
    """CRC-32 of every chunk: crc32(prefix + tail) computed as crc32(tail, crc32(prefix))."""
    tail = memoryview(_BASE[size])[PREFIX:]
    return [zlib.crc32(tail, zlib.crc32(chunk_prefix(run, size, i))) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Client processes (forked: they inherit _BASE and the module path)


def _client(sock):
    import shmkv  # noqa: PLC0415 - main() put the build's package on sys.path

    return shmkv.Client(sock, timeout=120.0, model=MODEL)


def store_worker(sock, run, size, indices, barrier, out):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler
    try:
        c = _client(sock)
        base = memoryview(_BASE[size])
        keys = [chunk_key(run, size, i) for i in indices]
        barrier.wait(timeout=120)
        bad = []
        for i, k in zip(indices, keys):
            slots = c.prepare_store([k], [size])
            if c.last_statuses != ["ok"]:
                bad.append((k.decode(), c.last_statuses[0]))
                continue
            s = slots[0]
            s[:PREFIX] = chunk_prefix(run, size, i)
            s[PREFIX:] = base[PREFIX:]
            c.commit_store([k])
        out.put({"t_end": time.monotonic(), "bad": bad})
        c.close()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out.put({"error": f"{type(e).__name__}: {e}"})


def retrieve_worker(sock, run, size, indices, crcs, barrier, out):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler
    try:
        c = _client(sock)
        keys = [chunk_key(run, size, i) for i in indices]
        t = time.monotonic()
        found = c.lookup(keys)
        t_lookup = time.monotonic() - t
        if found != len(keys):
            raise BenchError(f"B's lookup found {found} of {len(keys)} keys stored through A")
        barrier.wait(timeout=120)
        bad = []
        for k in keys:
            views = c.prepare_retrieve([k])
            if c.last_statuses != ["ok"] or views[0] is None:
                bad.append((k.decode(), c.last_statuses[0]))
                continue
            c.commit_retrieve([k])
        t_end = time.monotonic()
        # Untimed: every chunk's bytes (now in B's L1) against the CRC of what was stored.
        wrong = 0
        for i, k in zip(indices, keys):
            views = c.prepare_retrieve([k])
            if views[0] is None or len(views[0]) != size or zlib.crc32(views[0]) != crcs[i]:
                wrong += 1
            if views[0] is not None:
                c.commit_retrieve([k])
        out.put({"t_end": t_end, "t_lookup": t_lookup, "bad": bad, "wrong": wrong})
        c.close()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out.put({"error": f"{type(e).__name__}: {e}"})


class Workers:
    """C forked processes running `target(*args, indices, ..., barrier, out)`, released together."""

    def __init__(self, n, make_args):
        ctx = mp.get_context("fork")
        self.out = ctx.Queue()
        self.barrier = ctx.Barrier(n + 1)
        self.procs = [ctx.Process(target=t, args=(*a, self.barrier, self.out), daemon=True)
                      for t, a in (make_args(i) for i in range(n))]
        for p in self.procs:
            p.start()

    def release(self) -> float:
        """Waits until every worker is connected and ready, releases them; the release time."""
        try:
            self.barrier.wait(timeout=120)
        except Exception:  # a worker failed before the barrier: its error is in the queue
            raise BenchError("client processes did not get ready: " + "; ".join(
                r.get("error", "?") for r in self.results(timeout=5, allow_missing=True))) from None
        return time.monotonic()

    def results(self, timeout=600.0, allow_missing=False):
        out = []
        deadline = time.monotonic() + timeout
        for _ in self.procs:
            try:
                out.append(self.out.get(timeout=max(0.1, deadline - time.monotonic())))
            except Exception:  # noqa: BLE001 - queue.Empty
                if allow_missing:
                    break
                raise BenchError(f"client processes did not report within {timeout:g} s") from None
        errors = [r["error"] for r in out if "error" in r]
        if errors and not allow_missing:
            raise BenchError("client process failed: " + "; ".join(errors))
        return out

    def stop(self, grace=10.0):
        """Joins the workers (they exit once their result is sent); terminates any left."""
        deadline = time.monotonic() + grace
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=10)


def shares(n, c):
    """Indices 0..n-1 dealt round-robin to c clients."""
    return [list(range(w, n, c)) for w in range(c)]


# ---------------------------------------------------------------------------------------------
# Servers


STARTED_PIDS: list[int] = []  # every shmkv-server started (in the JSON report: a test checks they are gone)


class Server:
    """One shmkv-server, its log in WORK/<tag>.log, stopped with SIGTERM."""

    def __init__(self, binary, work, tag, pool, *extra):
        from shmkv.server import start_server  # noqa: PLC0415

        self.tag = tag
        self.socket = os.path.join(work, f"{tag}.sock")
        self.log_path = os.path.join(work, f"{tag}.log")
        self.args = ["--pool-size", str(pool), "--shm-name", f"l3bench{os.getpid()}{tag}", "--socket", self.socket,
                     "--log-level", "warn", *extra]
        with open(self.log_path, "ab") as logf:
            try:
                # Its own session: a Ctrl-C reaches the script, which stops the servers in order.
                self.proc, _ = start_server(binary, self.args, stderr=logf, start_new_session=True)
            except RuntimeError as e:
                raise BenchError(f"server {tag}: {e}\n{self.log()}") from None
        STARTED_PIDS.append(self.proc.pid)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def wait_stats(c, pred, timeout, what, interval=0.002):
    deadline = time.monotonic() + timeout
    while True:
        st = c.stats()
        if pred(st):
            return st, time.monotonic()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}: "
                             + json.dumps({k: v for k, v in st.items() if k.startswith(("l2_", "l3_"))}))
        time.sleep(interval)


L3_FAILS = ("l3_write_dropped", "l3_write_errors", "l3_miss_corrupt", "l3_miss_unavailable", "l3_miss_absent",
            "l3_load_full")


def check_no_failures(name, before, after):
    bad = {k: after.get(k, 0) - before.get(k, 0) for k in L3_FAILS if after.get(k, 0) != before.get(k, 0)}
    if bad:
        raise BenchError(f"server {name} counted L3 failures: {bad}")


# ---------------------------------------------------------------------------------------------
# Phases


def run_store(a_ctl, a, run, size, n, clients, timeout):
    before = a_ctl.stats()
    w = Workers(clients, lambda i: (store_worker, (a.socket, run, size, shares(n, clients)[i])))
    try:
        t0 = w.release()
        done_n = lambda st: (st["l3_writes"] + st["l3_write_skipped_exists"]  # noqa: E731
                             - before["l3_writes"] - before["l3_write_skipped_exists"])
        accounted = lambda st: done_n(st) + sum(st[k] - before[k] for k in ("l3_write_dropped", "l3_write_errors"))  # noqa: E731
        st, t1 = wait_stats(a_ctl, lambda s: accounted(s) >= n, timeout, f"A to write {n} chunks to Redis")
        res = w.results()
    finally:
        w.stop()
    bad = [b for r in res for b in r["bad"]]
    if bad:
        raise BenchError(f"A refused stores: {bad[:5]}")
    check_no_failures("A", before, st)
    if done_n(st) != n:
        raise BenchError(f"A wrote {done_n(st)} of {n} chunks")
    t_l1 = max(r["t_end"] for r in res) - t0
    return {"seconds": t1 - t0, "gbps": n * size / (t1 - t0) / 1e9, "client_seconds": t_l1,
            "written": st["l3_writes"] - before["l3_writes"],
            "skipped_exists": st["l3_write_skipped_exists"] - before["l3_write_skipped_exists"],
            "write_bytes": st["l3_write_bytes"] - before["l3_write_bytes"]}


def run_retrieve(b_ctl, b, run, size, n, clients, crcs):
    before = b_ctl.stats()
    w = Workers(clients, lambda i: (retrieve_worker, (b.socket, run, size, shares(n, clients)[i], crcs)))
    try:
        t0 = w.release()
        res = w.results()
    finally:
        w.stop()
    after = b_ctl.stats()
    bad = [x for r in res for x in r["bad"]]
    if bad:
        raise BenchError(f"B did not retrieve: {bad[:5]}")
    wrong = sum(r["wrong"] for r in res)
    if wrong:
        raise BenchError(f"{wrong} chunks retrieved through B differ from what was stored through A")
    check_no_failures("B", before, after)
    loads = after["l3_loads"] - before["l3_loads"]
    if loads != n:
        raise BenchError(f"B loaded {loads} chunks from Redis, expected {n} (some did not come from L3)")
    t = max(r["t_end"] for r in res) - t0
    return {"seconds": t, "gbps": n * size / t / 1e9, "l3_loads": loads,
            "l3_load_bytes": after["l3_load_bytes"] - before["l3_load_bytes"],
            "lookup_seconds_max": max(r["t_lookup"] for r in res), "verified": n}


def run_redis_benchmark(port, size, clients, requests):
    argv = ["redis-benchmark", "--cluster", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-d", str(size),
            "-c", str(clients), "-n", str(requests), "--csv"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BenchError(f"redis-benchmark failed (exit {r.returncode}): {r.stdout[-1000:]}{r.stderr[-1000:]}")
    rps = {}
    for line in r.stdout.splitlines():
        f = [x.strip('"') for x in line.split(",")]
        if len(f) >= 2 and f[0] in ("SET", "GET"):
            rps[f[0]] = float(f[1])
    if set(rps) != {"SET", "GET"}:
        raise BenchError(f"cannot parse redis-benchmark's CSV output: {r.stdout[-1000:]}")
    return {"command": " ".join(argv), "requests": requests,
            **{op.lower(): {"rps": v, "gbps": v * size / 1e9} for op, v in rps.items()}}


def put_batch(c, keys, payload, what):
    """Stores `keys` (all new), 64 per prepare_store/commit_store."""
    for i in range(0, len(keys), 64):
        ks = keys[i:i + 64]
        slots = c.prepare_store(ks, [len(payload)] * len(ks))
        if c.last_statuses != ["ok"] * len(ks):
            raise BenchError(f"{what}: prepare_store answered {sorted(set(c.last_statuses))}")
        for s in slots:
            s[:] = payload
        c.commit_store(ks)


def run_latency(args, server_bin, work, cluster, a_ctl, b_pool, run):
    """Restarts B with --disk-dir and times lookups of prompts in each tier; returns {case: {...}}."""
    import shmkv  # noqa: PLC0415

    k, size, calls = args.prompt_keys, args.lookup_size, args.lookup_calls
    key = lambda tier, i: f"l3bench-{run}-lat-{tier}-{i:06d}".encode()  # noqa: E731
    keys = {tier: [key(tier, i) for i in range(k)] for tier in ("l1", "l2", "l3")}
    n3 = sum(1 for i in range(k) if i % 3 == 2)  # the L3 keys of a mixed prompt
    cold = [[key("l3cold", j * k + i) for i in range(k)] for j in range(calls)]
    cold_mixed = [[key("l3coldmix", j * k + i) for i in range(n3)] for j in range(calls)]
    payload = os.urandom(size)
    disk = os.path.join(work, "disk-b")
    common = ["--disk-dir", disk, "--disk-write-through", "--redis", cluster.url(), "--redis-write", "off"]
    # 1. The L2 keys: stored into B with write-through, then B restarts with an empty L1.
    b = Server(server_bin, work, "b2", b_pool, *common)
    try:
        with shmkv.Client(b.socket, timeout=60.0, model=MODEL) as c:
            put_batch(c, keys["l2"], payload, "B, L2 keys")
            wait_stats(c, lambda st: st["l2_objects"] >= k and not st["l2_dirty_objects"]
                       and not st["l2_writes_in_flight"], 60, "B to write its L2 keys to disk")
    finally:
        b.stop()
    # 2. The L3 keys, stored through A only: the prompt's own, and fresh ones for every call of
    # the cases that look up keys B has never seen (each such lookup asks Redis).
    before = a_ctl.stats()
    l3_all = keys["l3"] + [x for p in cold for x in p] + [x for p in cold_mixed for x in p]
    put_batch(a_ctl, l3_all, payload, "A, L3 keys")
    wait_stats(a_ctl, lambda st: st["l3_writes"] + st["l3_write_skipped_exists"] - before["l3_writes"]
               - before["l3_write_skipped_exists"] >= len(l3_all), 300, f"A to write {len(l3_all)} L3 keys")
    check_no_failures("A", before, a_ctl.stats())
    b = Server(server_bin, work, "b3", b_pool, *common)
    try:
        with shmkv.Client(b.socket, timeout=60.0, model=MODEL) as c:
            # 3. The L1 keys: put into B (on disk too, but lookup finds them in L1 first).
            put_batch(c, keys["l1"], payload, "B, L1 keys")
            wait_stats(c, lambda st: st.get("l3_available") == 1, 30, "B's L3 tier to be available")
            mixed = [keys[("l1", "l2", "l3")[i % 3]][i] for i in range(k)]

            def mixed_cold(j):
                it = iter(cold_mixed[j])
                return [next(it) if i % 3 == 2 else mixed[i] for i in range(k)]

            # A mixed prompt: lookup_hits counts the first L1 run only (its first key); the later
            # L1 keys are L1's, uncounted.
            mixed_hits = (1 if k else 0, (k + 1) // 3, n3)
            cases = (  # name, prompt of call j, (L1 run, L2, L3) hits expected per call
                ("L1 only", lambda j: keys["l1"], (k, 0, 0)),
                ("L2 only", lambda j: keys["l2"], (0, k, 0)),
                ("L3 only, new to B (asks Redis)", lambda j: cold[j], (0, 0, k)),
                ("L3 only, looked up before", lambda j: keys["l3"], (0, 0, k)),
                ("mixed L1/L2/L3, L3 new to B", mixed_cold, mixed_hits),
                ("mixed L1/L2/L3, looked up before", lambda j: mixed, mixed_hits),
            )
            out = {}
            for case, prompt, expect in cases:
                if "new to B" not in case:  # (those use a fresh prompt every call)
                    for _ in range(5):  # warm-up (the first lookup of L3 keys teaches B them)
                        c.lookup(prompt(0))
                st0 = c.stats()
                lat = []
                for j in range(calls):
                    pr = prompt(j)
                    t = time.perf_counter()
                    got = c.lookup(pr)
                    lat.append(time.perf_counter() - t)
                    if got != k:
                        raise BenchError(f"lookup {case}: counted {got} of {k} keys")
                st1 = c.stats()
                per = {name: (st1[name] - st0[name]) / calls for name in ("lookup_hits", "l2_hits", "l3_hits")}
                out[case] = {"calls": calls, "p50_ms": 1e3 * statistics.median(lat), "p99_ms": 1e3 * pct(lat, 0.99),
                             "mean_ms": 1e3 * statistics.mean(lat), "hits_per_lookup": per}
                log(f"lookup {case}: p50 {out[case]['p50_ms']:.3f} ms, p99 {out[case]['p99_ms']:.3f} ms, "
                    f"hits/lookup L1 {per['lookup_hits']:g} L2 {per['l2_hits']:g} L3 {per['l3_hits']:g}")
                got_hits = (per["lookup_hits"], per["l2_hits"], per["l3_hits"])
                if got_hits != expect:  # the latency would not be the named tiers'
                    raise BenchError(f"lookup {case}: hits per call (L1 run, L2, L3) {got_hits}, expected {expect}")
            check_no_failures("B", st0, st1)
            return out
    finally:
        b.stop()


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring (head bench/l3_bench.py) for what each phase times.")
    ap.add_argument("--sizes", default="8MiB,32MiB", help="chunk sizes, comma-separated (default 8MiB,32MiB)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent client processes, and redis-benchmark -c")
    ap.add_argument("--chunks", type=int, default=32, help="chunks per size and round (N; default 32)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per size (fresh keys each; the table shows medians)")
    ap.add_argument("--baseline-bytes", type=parse_size, default=parse_size("1GiB"),
                    help="redis-benchmark -n is at least this many bytes' worth of requests (its start-up is in "
                         "its time; default 1GiB)")
    ap.add_argument("--lookup-calls", type=int, default=300, help="lookup calls per latency case")
    ap.add_argument("--prompt-keys", type=int, default=32, help="keys in a latency prompt")
    ap.add_argument("--lookup-size", type=parse_size, default=parse_size("16KiB"),
                    help="chunk size of the latency cases' keys (default 16KiB)")
    ap.add_argument("--no-latency", action="store_true", help="skip the lookup latency cases")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2MiB chunks, 4 clients, 16 chunks, 50 calls")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    ap.add_argument("--build", default=os.environ.get("SHMKV_BUILD_DIR", os.path.join(ROOT, "build")))
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs) at the end")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.clients, args.chunks, args.lookup_calls = "2MiB", 4, 16, 50
        args.baseline_bytes = min(args.baseline_bytes, 128 << 20)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or args.clients < 1 or args.chunks < args.clients:
        ap.error("want at least one size, --clients >= 1 and --chunks >= --clients")
    for tool in ("redis-server", "redis-cli", "redis-benchmark"):
        if shutil.which(tool) is None:
            sys.exit(f"l3_bench: {tool} is not installed (scripts/install-deps.sh installs redis-server and "
                     f"redis-tools)")
    sys.path.insert(0, os.path.join(args.build, "python"))
    import shmkv  # noqa: PLC0415

    server_bin = os.path.join(args.build, "src", "shmkv-server")
    n, C = args.chunks, args.clients
    run = f"{os.getpid()}-{time.time_ns() % 10**9}"  # fresh keys in every run of the script
    biggest = n * max(sizes)  # one round of one size: removed (pools) and flushed (Redis) after it
    lat_bytes = (3 + 2 * args.lookup_calls) * args.prompt_keys * args.lookup_size
    # A: the write queue holds a whole run (no drops), and is at most a quarter of the pool; the
    # pool is not prefaulted (only what is stored is touched). B: holds every chunk loaded.
    inflight = max(biggest, lat_bytes) + (64 << 20)
    a_pool = max(4 * inflight, biggest + lat_bytes + (256 << 20))
    b_pool = biggest + lat_bytes + (256 << 20)
    per_master = max(256 << 20, 2 * (biggest + lat_bytes) // 3 + (128 << 20))

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    work = tempfile.mkdtemp(prefix="shmkv-l3-bench-")
    cluster = a = b = None
    ctl = []
    report = {"clients": C, "chunks": n, "rounds": args.rounds, "sizes": [size_name(s) for s in sizes], "nproc": os.cpu_count(),
              "command": " ".join([sys.executable, *sys.argv]), "throughput": {}, "lookup_latency": None,
              "server_pids": STARTED_PIDS, "redis_ports": []}
    ok = False
    try:
        log(f"starting a 3-master Redis Cluster (maxmemory {per_master >> 20} MiB each, allkeys-lru, no persistence)")
        cluster = RedisCluster(work, masters=3, replicas=0, node_timeout_ms=5000,
                               extra=["--maxmemory", str(per_master), "--maxmemory-policy", "allkeys-lru"])
        url = cluster.url()
        report["redis_ports"] = list(cluster.ports)
        common = ["--redis", url, "--redis-write", "through"]
        a = Server(server_bin, work, "a", a_pool, "--no-prefault", "--redis-max-inflight-bytes", str(inflight), *common)
        b = Server(server_bin, work, "b", b_pool, *common)
        a_ctl = shmkv.Client(a.socket, timeout=60.0, model=MODEL, instance_id="bench-ctl")
        b_ctl = shmkv.Client(b.socket, timeout=60.0, model=MODEL, instance_id="bench-ctl")
        ctl += [a_ctl, b_ctl]
        for name, c in (("A", a_ctl), ("B", b_ctl)):
            wait_stats(c, lambda st: st.get("l3_available") == 1, 30, f"{name}'s L3 tier to be available")
        log(f"servers A (pool {a_pool >> 20} MiB, queue {inflight >> 20} MiB) and B (pool {b_pool >> 20} MiB) up "
            f"on {url}")

        for size in sizes:
            sn = size_name(size)
            _BASE.clear()
            _BASE[size] = os.urandom(size)
            requests = max(n, 2 * C, -(-args.baseline_bytes // size))
            rounds = []
            for r in range(args.rounds):
                rrun = f"{run}-r{r}"
                crcs = expected_crcs(rrun, size, n)
                timeout = 120 + n * size / 20e6  # 20 MB/s at the very least
                st = run_store(a_ctl, a, rrun, size, n, C, timeout)
                log(f"{sn} round {r}: store {st['gbps']:.3f} GB/s ({st['seconds']:.2f} s; clients done after "
                    f"{st['client_seconds']:.2f} s; {st['written']} written, {st['skipped_exists']} existed)")
                rt = run_retrieve(b_ctl, b, rrun, size, n, C, crcs)
                log(f"{sn} round {r}: retrieve {rt['gbps']:.3f} GB/s ({rt['seconds']:.2f} s; {rt['l3_loads']} loads "
                    f"from Redis, bytes verified)")
                rb = run_redis_benchmark(cluster.ports[0], size, C, requests)
                log(f"{sn} round {r}: redis-benchmark SET {rb['set']['gbps']:.3f} GB/s ({rb['set']['rps']:g} rps), "
                    f"GET {rb['get']['gbps']:.3f} GB/s ({rb['get']['rps']:g} rps), {requests} requests each")
                rounds.append({"store": st, "retrieve": rt, "redis_benchmark": rb})
                # Room for the next round: the chunks leave both pools and Redis.
                keys = [chunk_key(rrun, size, i) for i in range(n)]
                a_ctl.remove(keys)
                b_ctl.remove(keys)
                for port in cluster.masters():
                    cluster.command(port, "FLUSHALL")
            med = lambda f: statistics.median(f(x) for x in rounds)  # noqa: E731
            t = {"size": size, "rounds": rounds,
                 "store_gbps": med(lambda x: x["store"]["gbps"]),
                 "retrieve_gbps": med(lambda x: x["retrieve"]["gbps"]),
                 "set_gbps": med(lambda x: x["redis_benchmark"]["set"]["gbps"]),
                 "get_gbps": med(lambda x: x["redis_benchmark"]["get"]["gbps"]),
                 "redis_benchmark_command": rounds[0]["redis_benchmark"]["command"]}
            t["ratio_store_vs_set"] = t["store_gbps"] / t["set_gbps"]
            t["ratio_retrieve_vs_get"] = t["retrieve_gbps"] / t["get_gbps"]
            report["throughput"][sn] = t
            _BASE.clear()

        if not args.no_latency:
            report["lookup_latency"] = run_latency(args, server_bin, work, cluster, a_ctl, b_pool, run)
        ok = True
    except (BenchError, shmkv.Error) as e:
        log(f"l3_bench: FAILED: {type(e).__name__}: {e}")
        for s in (a, b):
            if s is not None:
                log(f"--- server {s.tag} log (tail) ---\n{s.log()}")
    finally:
        for c in ctl:
            c.close()
        for s in (b, a):
            if s is not None:
                s.stop()
        if cluster is not None:
            cluster.stop()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**report, "ok": ok}, f, indent=1)
    sys.exit(0 if ok else 1)


def print_report(r):
    print(f"\nshmkv L3 (Redis Cluster, 3 masters, loopback) vs redis-benchmark: {r['clients']} clients, "
          f"{r['chunks']} chunks per size and round, {r['nproc']} CPUs; GB/s = 1e9 B/s")
    if r["throughput"]:
        print("| chunk | shmkv store | redis-benchmark SET | store shmkv/redis-benchmark | shmkv retrieve "
              "| redis-benchmark GET | retrieve shmkv/redis-benchmark |")
        print("|---|---|---|---|---|---|---|")
        for sn, t in r["throughput"].items():
            rs, rg = t["ratio_store_vs_set"], t["ratio_retrieve_vs_get"]
            print(f"| {sn} | {t['store_gbps']:.3f} | {t['set_gbps']:.3f} | {rs:.2f}x {'ok' if rs >= GOAL else 'below'} "
                  f"| {t['retrieve_gbps']:.3f} | {t['get_gbps']:.3f} | {rg:.2f}x {'ok' if rg >= GOAL else 'below'} |")
        print(f"(GB/s: median of {r['rounds']} round(s); goal: >= {GOAL}x in both directions)")
    if r["lookup_latency"]:
        print("\n| lookup of a prompt | p50 ms | p99 ms | mean ms | hits per lookup L1 / L2 / L3 |")
        print("|---|---|---|---|---|")
        for case, v in r["lookup_latency"].items():
            h = v["hits_per_lookup"]
            print(f"| {case} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['mean_ms']:.3f} "
                  f"| {h['lookup_hits']:g} / {h['l2_hits']:g} / {h['l3_hits']:g} |")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: main()'s finally has stopped everything
        log(f"l3_bench: interrupted ({e or 'Ctrl-C'}); everything it started is stopped")
        sys.exit(130)
