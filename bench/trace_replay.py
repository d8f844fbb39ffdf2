#!/usr/bin/python3
"""Prefix-cache hit rate of shmkv on a request trace, against plain LRU and the offline optimum.

Replays a trace in the Mooncake format (one JSON object per line, ``hash_ids`` = the prompt's
prefix blocks, equal ids = the same chained prefix block) through a real ``shmkv-server``: per
request one lookup of the whole chain, a retrieve of the leading hits, and a store of the rest
(prepare_store of the whole chain, committing up to the first block that gets no room, as
shmkv.KVConnector does). Each block is one
object of ``--block-bytes`` (default 4096, one pool slot), and the pool is sized to hold exactly
the capacity asked for, so a pool of a few MiB models millions of tokens.

In the same run the same request sequence goes through two simulations of the same capacity:

- plain LRU (what shmkv did before docs/eviction.md: a lookup touches its hits tail first, the
  misses are stored head first evicting the least recently used block, then committed tail
  first);
- the offline optimum: Belady's MIN with bypass over blocks (evict the block whose next use is
  farthest in the future, the deeper block of a chain first on ties; a block of the current
  request may be dropped at once). A child's next use is never before its parent's, so MIN never
  keeps a block whose parent it dropped.

Hit rate = leading hit blocks / prompt blocks, summed over the requests (the prefill saved).
Timestamps only order the requests (they are replayed back to back).

Besides a trace file, ``--workload`` generates synthetic traces in the same format (the cases the
eviction policy must not lose on): ``demo`` (the demo's chats: 24 conversations x 4 turns sharing
4 system prompts), ``chats`` (512 such conversations with random think times), ``hot-prompt`` (one
system prompt shared by thousands of users with Zipf popularity), ``scan`` (unique prompts only),
``hot-and-scan`` (reused prompts interleaved with one-off ones) and ``shifting`` (the popular set
changes four times).

Examples (binaries from SHMKV_BUILD_DIR, else ./build; --server overrides):

  /usr/bin/python3 bench/trace_replay.py --trace PATH/TO/mooncake_conversation_trace.jsonl \\
      --capacity-tokens 1M,3M,10M
  /usr/bin/python3 bench/trace_replay.py --workload hot-prompt --capacity-blocks 500,2000,8000 --json
"""
from __future__ import annotations

import argparse
import gzip
import heapq
import itertools
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---- traces ---------------------------------------------------------------------------------------
def load_trace(path: str, limit: int | None = None) -> list[list[int]]:
    """The hash_ids of every request of a Mooncake-format JSONL file (.gz too), in time order."""
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt") as f:
        for n, line in enumerate(f):
            if limit is not None and n >= limit:
                break
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
                ids = obj["hash_ids"]
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"trace_replay: {path}:{n + 1}: not a trace line with hash_ids ({e})")
            if not isinstance(ids, list) or not all(isinstance(x, int) for x in ids):
                raise SystemExit(f"trace_replay: {path}:{n + 1}: hash_ids must be a list of integers")
            rows.append((obj.get("timestamp", 0), n, ids))
    rows.sort(key=lambda r: (r[0], r[1]))  # stable: equal timestamps keep the file's order
    return [ids for _, _, ids in rows if ids]


def workload_demo(conversations=24, turns=4, system_prompts=4, system_blocks=6, turn_blocks=2.5, seed=1234,
                  mean_gap=None) -> list[list[int]]:
    """scripts/demo.py's chats in blocks (its defaults: 1536-token system prompts and 640 new
    tokens per turn in 256-token chunks). Without mean_gap the turns go round-robin, as the
    demo's workers take them; with it each conversation's turns are exponential gaps apart."""
    rng = random.Random(seed)
    ids = itertools.count()
    systems = [[next(ids) for _ in range(system_blocks)] for _ in range(system_prompts)]
    hist = [list(systems[c % system_prompts]) for c in range(conversations)]
    carry = [0.0] * conversations

    def turn(c):
        carry[c] += max(0.0, rng.gauss(turn_blocks, turn_blocks / 4))
        n = int(carry[c])
        carry[c] -= n
        hist[c] += [next(ids) for _ in range(n)]
        return list(hist[c])

    out = []
    if mean_gap is None:
        for _ in range(turns):
            out += [turn(c) for c in range(conversations)]
        return out
    events = [(rng.expovariate(1 / mean_gap), c, 0) for c in range(conversations)]
    heapq.heapify(events)
    while events:
        t, c, k = heapq.heappop(events)
        out.append(turn(c))
        if k + 1 < turns:
            heapq.heappush(events, (t + rng.expovariate(1 / mean_gap), c, k + 1))
    return out


def workload_hot_prompt(users=4000, requests=40000, system_blocks=8, zipf=0.9, seed=7, max_history=48):
    """One system prompt before every request; each user's own history grows 1-3 blocks a turn
    and starts over past max_history; users drawn with Zipf popularity."""
    rng = random.Random(seed)
    ids = itertools.count()
    system = [next(ids) for _ in range(system_blocks)]
    weights = [1 / (i + 1) ** zipf for i in range(users)]
    history: dict[int, list[int]] = {}
    out = []
    for u in rng.choices(range(users), weights=weights, k=requests):
        h = history.get(u)
        if h is None or len(h) >= max_history:
            h = []
        h = h + [next(ids) for _ in range(rng.randint(1, 3))]
        history[u] = h
        out.append(system + h)
    return out


def workload_scan(requests=5000, max_blocks=32, seed=3):
    rng = random.Random(seed)
    ids = itertools.count()
    return [[next(ids) for _ in range(rng.randint(1, max_blocks))] for _ in range(requests)]


def workload_hot_and_scan(requests=40000, hot=200, max_blocks=16, seed=5):
    rng = random.Random(seed)
    ids = itertools.count()
    hotset = [[next(ids) for _ in range(rng.randint(1, max_blocks))] for _ in range(hot)]
    return [rng.choice(hotset) if rng.random() < 0.5 else [next(ids) for _ in range(rng.randint(1, max_blocks))]
            for _ in range(requests)]


def workload_shifting(requests=40000, hot=300, max_blocks=16, phases=4, zipf=0.8, seed=9):
    rng = random.Random(seed)
    ids = itertools.count()
    weights = [1 / (i + 1) ** zipf for i in range(hot)]
    out = []
    for _ in range(phases):
        hotset = [[next(ids) for _ in range(rng.randint(1, max_blocks))] for _ in range(hot)]
        out += [rng.choices(hotset, weights=weights)[0] for _ in range(requests // phases)]
    return out


# name -> (generator, block tokens, default capacities in blocks)
WORKLOADS = {
    "demo": (workload_demo, 256, [64, 128, 256]),
    "chats": (lambda: workload_demo(conversations=512, turns=8, system_prompts=16, mean_gap=60.0), 256,
              [512, 2048, 8192]),
    "hot-prompt": (workload_hot_prompt, 512, [500, 2000, 8000]),
    "scan": (workload_scan, 512, [500, 2000]),
    "hot-and-scan": (workload_hot_and_scan, 512, [500, 2000]),
    "shifting": (workload_shifting, 512, [500, 2000]),
}


# ---- simulations ----------------------------------------------------------------------------------
def simulate_lru(requests, capacity: int) -> float:
    """Plain LRU with shmkv's order of touches (see the module docstring)."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = total = 0
    for chain in requests:
        h = 0
        while h < len(chain) and chain[h] in cache:
            h += 1
        hits += h
        total += len(chain)
        for k in reversed(chain):  # lookup hits, and the existing blocks prepare_store finds
            if k in cache:
                cache.move_to_end(k)
        fresh = []
        for k in chain[h:]:  # reservations, head first, each evicting the coldest committed block
            if k in cache:
                continue
            if len(cache) + len(fresh) >= capacity:
                if not cache:
                    break  # full: the chain is longer than the pool; the rest is not stored
                cache.popitem(last=False)
            fresh.append(k)
        for k in reversed(fresh):  # commit: tail first into the hot end
            cache[k] = None
    return hits / total if total else 0.0


def simulate_optimal(requests, capacity: int) -> float:
    """Belady's MIN with bypass over blocks, deeper block first on ties."""
    never = len(requests)
    next_use: list[list[int]] = [None] * len(requests)  # type: ignore[list-item]
    last: dict[int, int] = {}
    for t in range(len(requests) - 1, -1, -1):
        next_use[t] = [last.get(k, never) for k in requests[t]]
        for k in requests[t]:
            last[k] = t
    cache: dict[int, tuple[int, int]] = {}  # block -> (its next use, its depth)
    heap: list[tuple[int, int, int]] = []  # (-next use, -depth, block); stale entries skipped
    hits = total = 0
    for t, chain in enumerate(requests):
        h = 0
        while h < len(chain) and chain[h] in cache:
            h += 1
        hits += h
        total += len(chain)
        for depth, (k, nu) in enumerate(zip(chain, next_use[t])):
            cache[k] = (nu, depth)
            heapq.heappush(heap, (-nu, -depth, k))
        while len(cache) > capacity:
            nu, _, k = heapq.heappop(heap)
            if cache.get(k, (None,))[0] == -nu:
                del cache[k]
        if len(heap) > 4 * capacity + 1024:  # drop the stale entries now and then
            heap = [(-nu, -d, k) for k, (nu, d) in cache.items()]
            heapq.heapify(heap)
    return hits / total if total else 0.0


# ---- the real server ------------------------------------------------------------------------------
def find_server(explicit: str | None) -> str:
    if explicit:
        path = pathlib.Path(explicit)
    else:
        build = pathlib.Path(os.environ.get("SHMKV_BUILD_DIR", ROOT / "build"))
        path = build / "src" / "shmkv-server"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise SystemExit(f"trace_replay: no shmkv-server at {path}: build shmkv, set SHMKV_BUILD_DIR or pass --server")
    return str(path)


def import_shmkv(server_path: str):
    build = pathlib.Path(server_path).resolve().parents[1]
    candidates = [build / "python", pathlib.Path(os.environ.get("SHMKV_BUILD_DIR", ROOT / "build")) / "python"]
    for c in candidates:
        if (c / "shmkv").is_dir() and str(c) not in sys.path:
            sys.path.insert(0, str(c))
    try:
        import shmkv  # noqa: PLC0415
    except ImportError as e:
        raise SystemExit(f"trace_replay: the shmkv Python module is not built next to {server_path} ({e})")
    return shmkv


def replay_server(shmkv, server: str, requests, capacity: int, block_bytes: int, policy: str, workdir: str):
    """Hit rate of a real shmkv-server holding `capacity` blocks, and its final stats."""
    sock = os.path.join(workdir, f"replay-{policy}-{capacity}.sock")
    name = f"replay{os.getpid()}_{policy}_{capacity}"
    log = open(os.path.join(workdir, f"server-{policy}-{capacity}.log"), "w+")
    proc = subprocess.Popen([server, "--pool-size", str(capacity * block_bytes), "--shm-name", name, "--socket", sock,
                             "--eviction-policy", policy, "--log-level", "warn"],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("shmkv-server ready"):
            proc.wait(timeout=10)
            log.seek(0)
            raise SystemExit(f"trace_replay: the server did not start: {line.strip()} {log.read().strip()}")
        hits = total = 0
        keys_of = {}
        with shmkv.Client(sock, timeout=30.0, instance_id="trace-replay") as c:
            for chain in requests:
                keys = [keys_of.get(b) or keys_of.setdefault(b, b.to_bytes(8, "little", signed=True)) for b in chain]
                n = c.lookup(keys)
                hits += n
                total += len(keys)
                if n:
                    c.prepare_retrieve(keys[:n])
                    c.post_commit_retrieve(keys[:n])
                if n == len(keys):
                    continue
                # The whole chain, as shmkv.KVConnector sends it: the blocks present answer
                # `exists` (and are touched), and each block's position is its depth.
                c.prepare_store(keys, [block_bytes] * len(keys))
                statuses = c.last_statuses
                reserved, abandoned, full = [], [], False
                for k, s in zip(keys, statuses):
                    if s == "ok":
                        (abandoned if full else reserved).append(k)
                    elif s not in ("exists", "busy"):
                        full = True  # a block after a missing one could never be part of a prefix
                if abandoned:
                    c.abort_store(abandoned)
                if reserved:
                    c.post_commit_store(reserved)
            c.sync()
            stats = c.stats()
        return (hits / total if total else 0.0), stats
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


# ---- command line ---------------------------------------------------------------------------------
def parse_count(text: str) -> int:
    t = text.strip().upper()
    mult = 1
    for suffix, m in (("K", 1000), ("M", 1000 ** 2), ("G", 1000 ** 3)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        v = float(t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a count like 3M, 500K or 19531")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be positive")
    return int(v)


def parse_list(text: str) -> list[int]:
    return [parse_count(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", help="a Mooncake-format JSONL trace (.gz too)")
    src.add_argument("--workload", choices=sorted(WORKLOADS), help="a synthetic trace instead")
    cap = p.add_mutually_exclusive_group()
    cap.add_argument("--capacity-tokens", type=parse_list, help="pool capacities in tokens: 1M,3M,10M")
    cap.add_argument("--capacity-blocks", type=parse_list, help="pool capacities in blocks")
    p.add_argument("--block-tokens", type=int, help="tokens per block (trace: 512, as Mooncake's; workloads: their own)")
    p.add_argument("--block-bytes", type=int, default=4096, help="bytes per block object in the pool")
    p.add_argument("--limit", type=int, help="replay only the first N requests of the trace")
    p.add_argument("--server", help="shmkv-server binary (default: $SHMKV_BUILD_DIR/src/shmkv-server, else ./build)")
    p.add_argument("--policies", default="adaptive",
                   help="server eviction policies to replay, comma separated (adaptive, lru)")
    p.add_argument("--no-optimal", action="store_true", help="skip the offline optimum (slow on huge traces)")
    p.add_argument("--json", action="store_true", help="one JSON object per capacity instead of the table")
    a = p.parse_args(argv)
    if a.block_bytes <= 0:
        p.error("--block-bytes must be positive")
    policies = [x.strip() for x in a.policies.split(",") if x.strip()]
    for pol in policies:
        if pol not in ("adaptive", "lru"):
            p.error(f"--policies: '{pol}' is not adaptive or lru")

    if a.trace:
        requests = load_trace(a.trace, a.limit)
        block_tokens = a.block_tokens or 512
        default_caps = [1_000_000 // block_tokens, 3_000_000 // block_tokens, 10_000_000 // block_tokens]
        source = a.trace if a.limit is None else f"{a.trace} (first {a.limit} requests)"
    else:
        gen, wl_block_tokens, default_caps = WORKLOADS[a.workload]
        requests = gen()
        block_tokens = a.block_tokens or wl_block_tokens
        source = f"workload {a.workload}"
    if not requests:
        raise SystemExit("trace_replay: the trace has no requests")
    if a.capacity_tokens:
        capacities = [max(1, t // block_tokens) for t in a.capacity_tokens]
    elif a.capacity_blocks:
        capacities = a.capacity_blocks
    else:
        capacities = default_caps

    server = find_server(a.server)
    shmkv = import_shmkv(server)
    blocks = sum(map(len, requests))
    if not a.json:
        print(f"{source}: {len(requests):,} requests, {blocks:,} prompt blocks of {block_tokens} tokens, "
              f"{len(set(itertools.chain.from_iterable(requests))):,} distinct", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="shmkv-replay-") as workdir:
        for capacity in capacities:
            row = {"capacity_tokens": capacity * block_tokens, "capacity_blocks": capacity}
            for pol in policies:
                t0 = time.perf_counter()
                rate, stats = replay_server(shmkv, server, requests, capacity, a.block_bytes, pol, workdir)
                key = "shmkv_hit_rate" if pol == policies[0] else f"shmkv_{pol}_hit_rate"
                row[key] = round(rate, 4)
                row.setdefault("shmkv_policy", pol)
                row[f"shmkv_{pol}_seconds"] = round(time.perf_counter() - t0, 2)
                row[f"shmkv_{pol}_evictions"] = stats.get("evictions")
            row["lru_hit_rate"] = round(simulate_lru(requests, capacity), 4)
            if not a.no_optimal:
                row["optimal_hit_rate"] = round(simulate_optimal(requests, capacity), 4)
                row["shmkv_fraction_of_optimal"] = (round(row["shmkv_hit_rate"] / row["optimal_hit_rate"], 3)
                                                    if row["optimal_hit_rate"] else None)
            row["shmkv_vs_lru"] = round(row["shmkv_hit_rate"] / row["lru_hit_rate"], 3) if row["lru_hit_rate"] else None
            rows.append(row)
            if a.json:
                print(json.dumps(row), flush=True)
            else:
                print_row(row, policies, a.no_optimal, first=len(rows) == 1)
    return 0


def print_row(row, policies, no_optimal, first):
    if first:
        cols = ["capacity (tokens)", "blocks"] + [f"shmkv {p}" for p in policies] + ["LRU (sim)"]
        cols += [] if no_optimal else ["optimal (sim)", "shmkv / optimal"]
        cols += ["shmkv / LRU"]
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
    vals = [f"{row['capacity_tokens']:,}", f"{row['capacity_blocks']:,}"]
    vals += [f"{row['shmkv_hit_rate' if p == policies[0] else f'shmkv_{p}_hit_rate']:.4f}" for p in policies]
    vals += [f"{row['lru_hit_rate']:.4f}"]
    if not no_optimal:
        frac = row["shmkv_fraction_of_optimal"]
        vals += [f"{row['optimal_hit_rate']:.4f}", "-" if frac is None else f"{frac:.3f}"]
    vals += ["-" if row["shmkv_vs_lru"] is None else f"{row['shmkv_vs_lru']:.3f}"]
    print("| " + " | ".join(vals) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
