"""The L3 tier of shmkv-server on Redis (issue 11): real shmkv-server processes, real Redis Cluster
and standalone redis-server processes on loopback (tests/python/redis_cluster.py). Two servers with
different --shm-name and --socket stand for two nodes, "A" and "B".

Run with Debian's interpreter: SHMKV_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/test_l3_redis.py
Skipped only when redis-server / redis-cli are not installed.

Assumptions on the server's L3 contract, where the brief leaves room (each is what the tests
below rely on; a server that differs on one of them fails the test that names it):

1. A node learns that Redis holds a key from `lookup` (Tier::Holds is "known without I/O"), so
   every test looks a key up on a node before it retrieves it there, as an engine does;
   `prepare_retrieve`/`get` of a key the node has never looked up is not tested.
2. The Redis key is exactly b"shmkv:" + <32 lower-case hex of the namespace digest> + b":" +
   <lower-case hex of the client key>, the digest being the one L2 uses (first 16 bytes of
   SHA-256 of the canonical namespace). The value ends with the payload, after a header (so it is
   longer than the payload). Without --redis-ttl a key has no expiry (PTTL -1).
3. `l3_hits` counts the keys of a lookup's leading run that came from Redis (not a key after the
   first key found nowhere), as `l2_hits` does for the disk; `l3_loads`/`l3_load_bytes` count
   objects/payload bytes that prepare_retrieve loaded from Redis.
4. `l3_writes` counts objects stored in Redis (one per object); `l3_write_skipped_exists`,
   `l3_write_dropped` and `l3_write_errors` count objects too. Write-behind writes every
   committed object, whatever L1's fill level (so `l3_writes` reaches the number of stored
   objects on a healthy Redis, with a queue that is large enough: no drop, no error).
5. `remove` and `clear` are not used: what they do to the Redis copy is not in the contract.
6. A corrupt value may be detected by lookup (a full read) or only by prepare_retrieve; the tests
   assert that retrieval never yields it, that `l3_miss_corrupt` counts at least one per corrupt
   key, that the key disappears from Redis (within 10 s), and that a later lookup misses it.
   A value copied from another key (valid header and checksum, wrong key) is corrupt for the key
   it is stored under.
7. The clusters run with cluster-require-full-coverage no (the harness's choice: otherwise no
   slot serves while a master is down and not yet replaced, and "other slots fine" could not
   hold for any client). Dead-master misses count in `l3_miss_unavailable`.
8. --redis-password-file holds the password followed by a newline, which is not part of it.
   Wrong password: a log line on stderr names authentication ("auth", any case, on a line that
   also says redis or l3), `l3_auth_errors` >= 1, `l3_available` 0, the server serves from L1.
9. A full Redis (maxmemory + noeviction): the log line mentions the OOM reply or memory ("OOM",
   "maxmemory" or "memory", on a line that also says redis or l3).
10. Bounds: writes are accounted within 10 s; a restarted/absent Redis is used again within 30 s;
    after a failover, hits come back within 30 s (same server process).
"""
import hashlib
import itertools
import os
import re
import time

import pytest

from conftest import ServerProcess
from redis_cluster import key_slot, redis_procs, require_redis, wait_for  # noqa: F401 - redis_procs is a fixture

MiB = 1 << 20
KiB = 1 << 10
MODEL = "llama"
L3_STATS = ("l3_available", "l3_hits", "l3_loads", "l3_load_bytes", "l3_writes", "l3_write_bytes",
            "l3_write_skipped_exists", "l3_write_dropped", "l3_write_errors", "l3_miss_unavailable",
            "l3_miss_corrupt", "l3_miss_absent", "l3_moved", "l3_ask", "l3_slot_refreshes", "l3_reconnects",
            "l3_auth_errors", "l3_queue_bytes")

pytestmark = pytest.mark.usefixtures("redis_present")


@pytest.fixture
def redis_present():
    require_redis()


# ---------------------------------------------------------------------------------------------
# helpers


def ns_digest(model: str = MODEL, dtype: str = "bf16", layout: str = "NHD", world_size: int = 1, rank: int = 0) -> str:
    canonical = f"model={model};dtype={dtype};layout={layout};salt=;world_size={world_size};rank={rank};"
    return hashlib.sha256(canonical.encode()).digest()[:16].hex()


def redis_key(key: bytes, model: str = MODEL) -> bytes:
    return f"shmkv:{ns_digest(model)}:{key.hex()}".encode()


def payload(i, size: int) -> bytes:
    seed = hashlib.sha256(f"l3-object-{i}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def sha(b) -> str:
    return hashlib.sha256(bytes(b)).hexdigest()


class L3Server(ServerProcess):
    """A shmkv-server whose stderr (the log) goes to a file; `env` adds variables (a password)."""

    log_level = "info"

    def __init__(self, binary, tmp_path, name, pool_size, *extra, env=None):
        self.log_path = tmp_path / f"{name}.{time.monotonic_ns()}.log"
        self.env = env or {}
        super().__init__(binary, tmp_path, name, pool_size, *extra)

    def start(self):
        try:
            return super().start()
        except RuntimeError as e:
            raise AssertionError(f"{e}\n{self.log()}") from None

    def popen_kwargs(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "SHMKV_REDIS_PASSWORD"}
        env.update(self.env)
        return {"stderr": open(self.log_path, "w"), "env": env}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def nodes(server_bin, tmp_path, segment_name):
    """nodes("a", "--redis", url, ..., pool="64MiB", env=None) starts a server on its own segment and
    socket; every one still running at teardown is stopped with SIGTERM and must exit 0."""
    started = []

    def start(tag, *extra, pool="64MiB", env=None):
        s = L3Server(server_bin, tmp_path, f"{segment_name}_{tag}", pool, *extra, env=env)
        started.append(s)
        return s

    yield start
    for s in started:
        assert s.stop() in (0, None), s.log()[-4000:]


def client(shmkv_module, srv, model=MODEL):
    return shmkv_module.Client(srv.socket, timeout=10.0, model=model, world_size=1, rank=0, dtype="bf16",
                               layout="NHD")


def store(c, keys, payloads) -> None:
    """Stores every key in one prepare_store / commit_store batch (all must be new)."""
    slots = c.prepare_store(keys, [len(p) for p in payloads])
    assert c.last_statuses == ["ok"] * len(keys), c.last_statuses
    for view, p in zip(slots, payloads):
        view[:] = p
    c.commit_store(keys)


def stats_now(c) -> dict:
    st = c.stats()
    missing = [n for n in L3_STATS if n not in st]
    assert not missing, f"stats lack {missing}: {sorted(st)}"
    return st


def wait_writes(c, n, timeout=10.0, what=None) -> dict:
    """Waits until `n` objects were written or found existing in Redis and the queue is empty;
    returns the stats."""

    def done():
        st = stats_now(c)
        return st if st["l3_writes"] + st["l3_write_skipped_exists"] >= n and st["l3_queue_bytes"] == 0 else None

    try:
        return wait_for(done, timeout, what or f"{n} L3 writes", interval=0.02)
    except AssertionError as e:
        raise AssertionError(f"{e}: {stats_now(c)}") from None


def wait_accounted(c, n, timeout=10.0) -> dict:
    """Waits until `n` objects are accounted for by the write path, whatever the outcome."""

    def done():
        st = stats_now(c)
        total = (st["l3_writes"] + st["l3_write_skipped_exists"] + st["l3_write_dropped"] + st["l3_write_errors"])
        return st if total >= n and st["l3_queue_bytes"] == 0 else None

    try:
        return wait_for(done, timeout, f"{n} L3 writes accounted for", interval=0.02)
    except AssertionError as e:
        raise AssertionError(f"{e}: {stats_now(c)}") from None


def delta(after: dict, before: dict, name: str) -> int:
    return after[name] - before[name]


def retrieve_all(c, keys, payloads) -> None:
    """lookup then prepare_retrieve of the whole batch: every key found, every byte right."""
    assert c.lookup(keys) == len(keys)
    views = c.prepare_retrieve(keys)
    assert c.last_statuses == ["ok"] * len(keys), c.last_statuses
    for i, (v, p) in enumerate(zip(views, payloads)):
        assert v is not None and len(v) == len(p) and sha(v) == sha(p), f"object {i} differs"
    c.commit_retrieve(keys)


def read_one(c, key, expected) -> None:
    """A single-key lookup + get that must hit with the right bytes."""
    n = c.lookup([key])
    assert n == 1, f"lookup of {key!r} missed: {c.stats()}"
    got = c.get(key)
    assert got is not None, f"get of {key!r} missed after a hit: {c.stats()}"
    assert len(got) == len(expected) and sha(got) == sha(expected), f"wrong bytes for {key!r}"


def log_lines(srv, *patterns) -> list[str]:
    """Lines of the server log that match every regex of `patterns` (case-insensitive)."""
    return [ln for ln in srv.log().splitlines() if all(re.search(p, ln, re.I) for p in patterns)]


@pytest.fixture(scope="module")
def _shared_cluster(tmp_path_factory):
    """One 3-master cluster for the tests that do not change its topology."""
    require_redis()
    from redis_cluster import RedisCluster

    c = RedisCluster(tmp_path_factory.mktemp("l3-shared"), masters=3)
    yield c
    c.stop()


@pytest.fixture
def cluster(_shared_cluster):
    """The shared 3-master cluster, emptied (FLUSHALL on every master) for this test."""
    _shared_cluster.flushall()
    assert _shared_cluster.all_keys() == []
    return _shared_cluster


# ---------------------------------------------------------------------------------------------
# sharing between nodes


def test_chunks_stored_on_a_are_retrieved_on_b_byte_identical(nodes, shmkv_module, cluster):
    a = nodes("a", "--redis", cluster.url())
    b = nodes("b", "--redis", cluster.url())
    ca, cb = client(shmkv_module, a), client(shmkv_module, b)
    for c in (ca, cb):
        assert wait_for(lambda c=c: stats_now(c)["l3_available"] == 1, 10, "l3_available=1")
    keys = [hashlib.sha256(b"share-%d" % i).digest() for i in range(10)] + [b"short", b"\x00\xff"]
    sizes = [1, 4096, 12345, MiB + 17, 3 * MiB - 5, 64 * KiB, 100, 2 * MiB, 4095, 4097, 777, 65]
    payloads = [payload(i, n) for i, n in enumerate(sizes)]
    store(ca, keys, payloads)
    st = wait_writes(ca, len(keys))
    assert st["l3_writes"] == len(keys) and st["l3_write_skipped_exists"] == 0, st
    assert st["l3_write_bytes"] >= sum(sizes), st
    assert st["l3_write_dropped"] == 0 and st["l3_write_errors"] == 0, st

    # In Redis: one key per object, named shmkv:<namespace digest>:<key hex>, spread over the
    # masters; the value is a header followed by the payload; no expiry by default.
    expected = sorted(redis_key(k) for k in keys)
    assert cluster.all_keys("shmkv:*") == expected
    assert len({cluster.master_for_key(rk) for rk in expected}) >= 2
    for k, p in zip(keys, payloads):
        v = cluster.get(redis_key(k))
        assert v is not None and len(v) > len(p) and v.endswith(p), k
        assert cluster.command(cluster.master_for_key(redis_key(k)), "PTTL", redis_key(k)) == -1

    # Node B has never seen them: lookup finds them in Redis, prepare_retrieve loads them.
    before = stats_now(cb)
    assert before["objects"] == 0
    assert cb.lookup(keys) == len(keys)
    mid = stats_now(cb)
    assert delta(mid, before, "l3_hits") == len(keys), mid
    views = cb.prepare_retrieve(keys)
    assert cb.last_statuses == ["ok"] * len(keys), cb.last_statuses
    for i, (v, p) in enumerate(zip(views, payloads)):
        assert v is not None and len(v) == len(p) and sha(v) == sha(p), f"object {i} differs on node B"
    cb.commit_retrieve(keys)
    after = stats_now(cb)
    assert delta(after, before, "l3_loads") == len(keys), after
    assert delta(after, before, "l3_load_bytes") == sum(sizes), after
    assert after["objects"] == len(keys) and after["l3_miss_corrupt"] == 0, after
    # Now in B's L1: a second lookup does not go to Redis for them.
    assert cb.lookup(keys) == len(keys)
    assert stats_now(cb)["l3_hits"] == after["l3_hits"]
    # A run stops at the first key found nowhere; another namespace sees nothing.
    assert cb.lookup([keys[0], b"never-stored", keys[1]]) == 1
    with client(shmkv_module, b, model="other-model") as other:
        assert other.lookup(keys) == 0
    # B loaded them from Redis: it writes nothing back.
    time.sleep(0.3)
    st_b = stats_now(cb)
    assert st_b["l3_writes"] == 0 and st_b["l3_write_errors"] == 0, st_b
    assert cluster.all_keys("shmkv:*") == expected
    ca.close(), cb.close()


def test_b_retrieves_after_a_evicted_them_and_after_a_stopped(nodes, shmkv_module, cluster):
    a = nodes("a", "--redis", cluster.url(), pool="8MiB")
    ca = client(shmkv_module, a)
    keys = [b"evict-%02d" % i for i in range(24)]
    sizes = [MiB - 4096 * (i % 3) - 17 * i for i in range(24)]
    payloads = [payload(("evict", i), n) for i, n in enumerate(sizes)]
    for i, (k, p) in enumerate(zip(keys, payloads)):
        assert ca.put(k, p) is True
        wait_writes(ca, i + 1)  # the producer waits for Redis: nothing is evicted unwritten
    st = stats_now(ca)
    assert st["evictions"] >= 16 and st["l3_writes"] == 24 and st["l3_write_dropped"] == 0, st
    # A itself finds the evicted ones in Redis.
    assert ca.lookup(keys) == 24
    assert stats_now(ca)["l3_hits"] >= 16
    ca.close()

    b = nodes("b", "--redis", cluster.url(), pool="32MiB")
    cb = client(shmkv_module, b)
    retrieve_all(cb, keys[:8], payloads[:8])  # evicted from A's L1, A still running
    assert a.stop() == 0
    retrieve_all(cb, keys[8:], payloads[8:])  # A gone
    st = stats_now(cb)
    assert st["l3_loads"] == 24 and st["l3_load_bytes"] == sum(sizes), st
    cb.close()


def test_leading_run_mixes_l1_l2_and_l3(nodes, shmkv_module, cluster, tmp_path):
    disk = tmp_path / "disk"
    names = ["k0-l1", "k1-l2", "k2-l3", "k3-l1", "k4-l2", "k5-l3", "k6-none", "k7-l3"]
    keys = [n.encode() for n in names]
    payloads = [payload(("mix", i), 256 * KiB + i) for i in range(len(keys))]
    by_tier = {t: [i for i, n in enumerate(names) if n.endswith(t)] for t in ("l1", "l2", "l3")}

    # L2 only: written to disk by a node without Redis, which then stops.
    b1 = nodes("b", "--disk-dir", str(disk), "--disk-write-through")
    with client(shmkv_module, b1) as c:
        store(c, [keys[i] for i in by_tier["l2"]], [payloads[i] for i in by_tier["l2"]])
        wait_for(lambda: (lambda s: s["l2_objects"] == 2 and s["l2_writes_in_flight"] == 0)(c.stats()), 10,
                 "the L2 writes")
    assert b1.stop() == 0
    # L3 only: stored through node A.
    a = nodes("a", "--redis", cluster.url())
    with client(shmkv_module, a) as ca:
        store(ca, [keys[i] for i in by_tier["l3"]], [payloads[i] for i in by_tier["l3"]])
        wait_writes(ca, 3)
    assert a.stop() == 0
    # Node B with all three tiers; L1 objects stored through it.
    b2 = nodes("b", "--disk-dir", str(disk), "--redis", cluster.url())
    cb = client(shmkv_module, b2)
    store(cb, [keys[i] for i in by_tier["l1"]], [payloads[i] for i in by_tier["l1"]])
    before = stats_now(cb)
    assert before["l2_objects"] == 2 and before["objects"] == 2, before
    # [L1, L2, L3, L1, L2, L3, nowhere, L3]: the leading run is 6.
    assert cb.lookup(keys) == 6
    after = stats_now(cb)
    assert delta(after, before, "l2_hits") == 2, after
    assert delta(after, before, "l3_hits") == 2, after
    # The key found nowhere ended the last tier's run: one L3 miss (L2's run may have ended earlier
    # too, at a key L2 lacked).
    assert delta(after, before, "l3_misses") == 1 and delta(after, before, "l2_misses") >= 1, after
    views = cb.prepare_retrieve(keys[:6])
    assert cb.last_statuses == ["ok"] * 6, cb.last_statuses
    for i, v in enumerate(views):
        assert v is not None and sha(v) == sha(payloads[i]), f"{names[i]} differs"
    cb.commit_retrieve(keys[:6])
    done = stats_now(cb)
    assert delta(done, before, "l2_loads") == 2 and delta(done, before, "l3_loads") == 2, done
    # Every one of them is in L1 now, from any tier.
    assert cb.lookup(keys[:6]) == 6
    assert cb.lookup([keys[6], keys[0]]) == 0
    cb.close()


def test_content_addressed_write_modes_and_ttl(nodes, shmkv_module, cluster):
    a = nodes("a", "--redis", cluster.url(), "--redis-ttl", "100")
    ca = client(shmkv_module, a)
    k, p = b"content-addressed", payload("ca", 300 * KiB)
    assert ca.put(k, p) is True
    wait_writes(ca, 1)
    rk = redis_key(k)
    value = cluster.get(rk)
    assert value is not None and value.endswith(p)
    pttl = cluster.command(cluster.master_for_key(rk), "PTTL", rk)
    assert 0 < pttl <= 100_000, pttl

    # The same chunk committed on node B: the key exists in Redis, so it is not written again.
    b = nodes("b", "--redis", cluster.url())
    cb = client(shmkv_module, b)
    b_writes = 0
    if cb.put(k, p):  # B may answer `exists` already; if it stored the chunk, its write is skipped
        b_writes = 1
        st = wait_writes(cb, b_writes)
        assert st["l3_write_skipped_exists"] == 1 and st["l3_writes"] == 0, st
    assert cluster.get(rk) == value
    assert 0 < cluster.command(cluster.master_for_key(rk), "PTTL", rk) <= 100_000  # not rewritten
    # B's own chunk: no --redis-ttl, no expiry.
    assert cb.put(b"no-ttl", payload("nt", 1000)) is True
    assert wait_writes(cb, b_writes + 1)["l3_writes"] == 1
    assert cluster.command(cluster.master_for_key(redis_key(b"no-ttl")), "PTTL", redis_key(b"no-ttl")) == -1

    # --redis-write off: reads from Redis, writes nothing.
    c_off = nodes("off", "--redis", cluster.url(), "--redis-write", "off")
    co = client(shmkv_module, c_off)
    assert co.put(b"not-in-redis", payload("off", 5000)) is True
    read_one(co, k, p)
    time.sleep(1.0)
    st = stats_now(co)
    assert st["l3_writes"] == 0 and st["l3_queue_bytes"] == 0, st
    assert not cluster.exists(redis_key(b"not-in-redis"))

    # --redis-write through: written with the commit.
    c_through = nodes("through", "--redis", cluster.url(), "--redis-write", "through")
    ct = client(shmkv_module, c_through)
    assert ct.put(b"through", payload("through", 70000)) is True
    wait_writes(ct, 1)
    assert cluster.get(redis_key(b"through")).endswith(payload("through", 70000))
    read_one(cb, b"through", payload("through", 70000))
    for c in (ca, cb, co, ct):
        c.close()


# ---------------------------------------------------------------------------------------------
# cluster changes and failures


def test_resharding_while_b_reads_every_read_is_correct(nodes, shmkv_module, redis_procs):
    cluster = redis_procs.cluster(masters=3)
    slot_map = cluster.wait_agree()
    src, dst = cluster.ports[0], cluster.ports[1]
    src_slots = sorted(s for s, p in slot_map.items() if p == src)
    nslots = 2500  # about 3 s of redis-cli on an idle machine, with B reading all along
    moving = set(src_slots[:nslots])  # redis-cli takes a source's slots in ascending order
    # 64 keys of 128 KiB, at least 8 of them in slots that move.
    keys, in_moving = [], 0
    for i in itertools.count():
        k = b"reshard-%d" % i
        m = key_slot(redis_key(k)) in moving
        if m and in_moving < 8:
            keys.append(k)
            in_moving += 1
        elif not m and len(keys) - in_moving < 56:
            keys.append(k)
        if len(keys) == 64:
            break
    payloads = {k: payload(("reshard", k), 128 * KiB + len(k)) for k in keys}

    a = nodes("a", "--redis", cluster.url())
    ca = client(shmkv_module, a)
    store(ca, keys, [payloads[k] for k in keys])
    wait_writes(ca, len(keys))
    # B's pool holds a quarter of them: reading them round-robin loads every one from Redis.
    b = nodes("b", "--redis", cluster.url(), pool="2MiB")
    cb = client(shmkv_module, b)
    for k in keys:
        read_one(cb, k, payloads[k])
    before = stats_now(cb)
    assert before["l3_loads"] >= len(keys), before

    job = cluster.reshard(src, dst, nslots, background=True)
    reads_during = 0
    while not job.done():
        for k in keys:
            read_one(cb, k, payloads[k])
            reads_during += 1
    job.join()
    assert reads_during >= len(keys), "the reshard ended before one pass of reads: nothing was tested"
    after_map = cluster.wait_agree()
    moved_keys = [k for k in keys if key_slot(redis_key(k)) in moving and after_map[key_slot(redis_key(k))] == dst]
    assert len(moved_keys) >= 1, "no key of the test moved"
    for k in keys:
        assert cluster.exists(redis_key(k))
    # A full pass after the move (B's slot map is stale for the moved slots).
    for k in keys:
        read_one(cb, k, payloads[k])
    after = stats_now(cb)
    assert (delta(after, before, "l3_moved") + delta(after, before, "l3_ask")
            + delta(after, before, "l3_slot_refreshes")) >= 1, after
    assert after["l3_miss_corrupt"] == 0 and after["l3_miss_unavailable"] == 0, after
    # A writes through its stale map: the new chunks land on the right masters.
    new = [b"after-reshard-%d" % i for i in range(12)]
    store(ca, new, [payload(("new", k), 4096) for k in new])
    wait_writes(ca, len(keys) + len(new))
    assert stats_now(ca)["l3_write_errors"] == 0
    for k in new:
        read_one(cb, k, payload(("new", k), 4096))
    ca.close(), cb.close()


def test_killed_master_misses_its_slots_then_hits_after_failover(nodes, shmkv_module, redis_procs):
    cluster = redis_procs.cluster(masters=3, replicas=1)
    slot_map = cluster.wait_agree()
    masters = sorted(set(slot_map.values()))
    assert len(masters) == 3
    # Keys spread so that every master holds at least 5 of them.
    per_master = {m: [] for m in masters}
    for i in itertools.count():
        k = b"failover-%d" % i
        per_master[slot_map[key_slot(redis_key(k))]].append(k)
        if all(len(v) >= 5 for v in per_master.values()):
            break
    keys = [k for v in per_master.values() for k in v]
    payloads = {k: payload(("fo", k), 64 * KiB + len(k)) for k in keys}
    url = cluster.url()
    a = nodes("a", "--redis", url, "--redis-timeout", "500")
    b = nodes("b", "--redis", url, "--redis-timeout", "500")
    ca, cb = client(shmkv_module, a), client(shmkv_module, b)
    store(ca, keys, [payloads[k] for k in keys])
    wait_writes(ca, len(keys))
    cluster.wait_replicas_synced()

    victim = masters[0]
    replica = cluster.replicas_of(victim)[0]
    dead = per_master[victim]
    alive = [k for k in keys if k not in dead]
    # The replica waits for our word before it takes over, so that the dead phase can be observed.
    cluster.command(replica, "CONFIG", "SET", "cluster-replica-no-failover", "yes")
    b_pid = b.proc.pid
    cluster.kill(victim)

    # Right after the kill: its keys miss, no error; every other key hits with the right bytes.
    for k in dead:
        assert cb.lookup([k]) == 0
        assert cb.get(k) is None
    for k in alive:
        read_one(cb, k, payloads[k])
    assert cb.lookup([alive[0], dead[0], alive[1]]) == 1
    st = stats_now(cb)
    assert st["l3_miss_unavailable"] >= 1 and st["l3_miss_corrupt"] == 0, st

    # Once the cluster has marked it failed, a fresh node C sees the same.
    def flagged_fail():
        return all("fail" in n["flags"] for p in cluster.live_ports() for n in cluster.cluster_nodes(p)
                   if n["port"] == victim)

    wait_for(flagged_fail, 15, "every live node to flag the killed master as failed")
    c_node = nodes("c", "--redis", url, "--redis-timeout", "500")
    cc = client(shmkv_module, c_node)
    for k in dead:
        assert cc.lookup([k]) == 0
    for k in alive:
        read_one(cc, k, payloads[k])
    assert stats_now(cc)["l3_miss_unavailable"] >= 1

    # The replica takes over; B (not restarted) finds the keys again.
    cluster.command(replica, "CONFIG", "SET", "cluster-replica-no-failover", "no")
    assert cluster.wait_failover(victim, timeout=30) == replica
    wait_for(lambda: cb.lookup([dead[0]]) == 1, 30, "node B to find the failed-over keys again", interval=0.2)
    for k in dead:
        read_one(cb, k, payloads[k])
    assert b.proc.poll() is None and b.proc.pid == b_pid
    # New chunks in the promoted master's slots are written there.
    new, victim_slots = [], cluster.killed[victim]["slots"]
    for i in itertools.count():
        k = b"after-failover-%d" % i
        if key_slot(redis_key(k)) in victim_slots:
            new.append(k)
            if len(new) == 3:
                break
    store(ca, new, [payload(("af", k), 5000) for k in new])
    wait_writes(ca, len(keys) + 3, timeout=30)
    for k in new:
        assert cluster.command(replica, "EXISTS", redis_key(k)) == 1
        read_one(cb, k, payload(("af", k), 5000))
    for c in (ca, cb, cc):
        c.close()


def test_corrupt_values_are_misses_counted_and_deleted(nodes, shmkv_module, cluster):
    a = nodes("a", "--redis", cluster.url())
    ca = client(shmkv_module, a)
    size = 64 * KiB
    good = [b"good-%d" % i for i in range(2)]
    bad = {name.encode(): None for name in ("garbage", "truncated", "flipped", "header-only", "empty",
                                            "other-key")}
    keys = good + list(bad)
    payloads = {k: payload(("corrupt", k), size) for k in keys}
    store(ca, keys, [payloads[k] for k in keys])
    wait_writes(ca, len(keys))
    ca.close()
    assert a.stop() == 0
    values = {k: cluster.get(redis_key(k)) for k in keys}
    for k in keys:
        assert values[k] is not None and values[k].endswith(payloads[k])
    header = len(values[b"garbage"]) - size
    rng_bytes = hashlib.sha512(b"noise").digest() * (len(values[b"garbage"]) // 64 + 1)
    bad[b"garbage"] = rng_bytes[:len(values[b"garbage"])]
    bad[b"truncated"] = values[b"truncated"][:-1000]
    v = bytearray(values[b"flipped"])
    v[header + size // 2] ^= 0x01  # one payload bit: the checksum no longer matches
    bad[b"flipped"] = bytes(v)
    bad[b"header-only"] = values[b"header-only"][:header]
    bad[b"empty"] = b""
    bad[b"other-key"] = values[good[1]]  # a valid value of another key (same size)
    for k, v in bad.items():
        assert cluster.set(redis_key(k), v) == "OK"

    b = nodes("b", "--redis", cluster.url())
    cb = client(shmkv_module, b)
    before = stats_now(cb)
    for k in bad:
        n = cb.lookup([k])
        assert n in (0, 1)
        got = cb.get(k)  # after a lookup that hit, prepare_retrieve loads and must reject it
        assert got is None, f"{k!r}: corrupt value returned ({len(got)} bytes)"
    # A good key of the same size still loads.
    read_one(cb, good[0], payloads[good[0]])
    after = stats_now(cb)
    assert delta(after, before, "l3_miss_corrupt") >= len(bad), after
    for k in bad:
        wait_for(lambda k=k: not cluster.exists(redis_key(k)), 10, f"the corrupt value of {k!r} to be deleted")
    # The good keys are untouched; the bad ones now miss for everyone.
    for k in good:
        assert cluster.get(redis_key(k)) == values[k]
    read_one(cb, good[1], payloads[good[1]])
    for k in bad:
        assert cb.lookup([k]) == 0
    c2 = nodes("c", "--redis", cluster.url())
    with client(shmkv_module, c2) as cc:
        assert cc.lookup(list(bad)) == 0
        assert cc.lookup([good[0], b"garbage"]) == 1
    cb.close()


def test_batch_with_a_corrupt_value_never_exposes_its_bytes(nodes, shmkv_module, cluster):
    a = nodes("a", "--redis", cluster.url())
    keys = [b"batch-0", b"batch-1", b"batch-2"]
    payloads = [payload(("batch", i), 200 * KiB) for i in range(3)]
    with client(shmkv_module, a) as ca:
        store(ca, keys, payloads)
        wait_writes(ca, 3)
    assert a.stop() == 0
    rk = redis_key(keys[1])
    v = bytearray(cluster.get(rk))
    v[-1] ^= 0xFF  # last payload byte
    cluster.set(rk, bytes(v))
    b = nodes("b", "--redis", cluster.url())
    with client(shmkv_module, b) as cb:
        n = cb.lookup(keys)
        assert n in (1, 3), n  # 1 when lookup read and verified the value, 3 when it did not
        views = cb.prepare_retrieve(keys[:n])
        assert views[0] is not None and sha(views[0]) == sha(payloads[0])
        for i, view in enumerate(views):
            if view is not None:  # whatever arrives is right; the corrupt one never does
                assert i != 1 and sha(view) == sha(payloads[i]), i
        assert n == 1 or views[1] is None
        cb.commit_retrieve([k for k, view in zip(keys, views) if view is not None])
        assert stats_now(cb)["l3_miss_corrupt"] >= 1
        wait_for(lambda: not cluster.exists(rk), 10, "the corrupt value to be deleted")


# ---------------------------------------------------------------------------------------------
# Redis absent, authentication, standalone, full, queue


def test_redis_absent_at_start_then_used_without_restart(nodes, shmkv_module, redis_procs):
    cluster = redis_procs.cluster(masters=3, start=False)  # ports chosen, nothing listening
    url = cluster.url()
    a = nodes("a", "--redis", url, "--redis-timeout", "300")
    b = nodes("b", "--redis", url, "--redis-timeout", "300")
    ca, cb = client(shmkv_module, a), client(shmkv_module, b)
    for c in (ca, cb):
        st = stats_now(c)
        assert st["l3_available"] == 0, st
    # L1 serves meanwhile; Redis lookups miss without an error.
    early = payload("early", 10000)
    assert ca.put(b"early", early) is True
    read_one(ca, b"early", early)
    assert cb.lookup([b"early"]) == 0
    pids = (a.proc.pid, b.proc.pid)

    cluster.start()
    for c in (ca, cb):
        wait_for(lambda c=c: stats_now(c)["l3_available"] == 1, 30, "l3_available=1 after Redis came up",
                 interval=0.1)
    keys = [b"late-%d" % i for i in range(6)]
    payloads = [payload(("late", i), 100 * KiB) for i in range(6)]
    store(ca, keys, payloads)
    # (`early` may or may not be written once Redis is back; the six new ones must be.)
    wait_for(lambda: all(cluster.exists(redis_key(k)) for k in keys), 10, "the new chunks in Redis")
    retrieve_all(cb, keys, payloads)
    assert (a.proc.pid, b.proc.pid) == pids and a.proc.poll() is None and b.proc.poll() is None
    assert stats_now(cb)["l3_loads"] == 6
    ca.close(), cb.close()


def test_wrong_password_logs_and_keeps_serving_from_l1(nodes, shmkv_module, redis_procs, tmp_path):
    cluster = redis_procs.cluster(masters=3, password="right-pass")
    a = nodes("a", "--redis", cluster.url(with_password=False), env={"SHMKV_REDIS_PASSWORD": "wrong-pass"})
    ca = client(shmkv_module, a)
    wait_for(lambda: stats_now(ca)["l3_auth_errors"] >= 1, 10, "l3_auth_errors")
    st = stats_now(ca)
    assert st["l3_available"] == 0, st
    lines = log_lines(a, r"auth", r"redis|l3")
    assert lines, f"no log line about authentication:\n{a.log()[-3000:]}"
    assert not any("wrong-pass" in ln for ln in a.log().splitlines()), "the password is in the log"
    # L1 keeps serving.
    keys = [b"pw-%d" % i for i in range(4)]
    payloads = [payload(("pw", i), 50000) for i in range(4)]
    store(ca, keys, payloads)
    retrieve_all(ca, keys, payloads)
    time.sleep(0.5)
    assert stats_now(ca)["l3_writes"] == 0
    assert cluster.all_keys("shmkv:*") == []
    assert a.proc.poll() is None
    ca.close()


def test_password_from_file_env_and_url(nodes, shmkv_module, redis_procs, tmp_path):
    cluster = redis_procs.cluster(masters=3, password="right-pass")
    pw_file = tmp_path / "redis-password"
    pw_file.write_text("right-pass\n")
    pw_file.chmod(0o600)
    a = nodes("a", "--redis", cluster.url(with_password=False), "--redis-password-file", str(pw_file))
    b = nodes("b", "--redis", cluster.url(with_password=False), env={"SHMKV_REDIS_PASSWORD": "right-pass"})
    c = nodes("c", "--redis", cluster.url())  # redis://:right-pass@...
    ca, cb, cc = (client(shmkv_module, s) for s in (a, b, c))
    for cl in (ca, cb, cc):
        wait_for(lambda cl=cl: stats_now(cl)["l3_available"] == 1, 10, "l3_available=1 with the password")
    keys = [b"auth-%d" % i for i in range(6)]
    payloads = [payload(("auth", i), 30000 + i) for i in range(6)]
    store(ca, keys, payloads)
    wait_writes(ca, 6)
    retrieve_all(cb, keys, payloads)
    retrieve_all(cc, keys, payloads)
    for cl in (ca, cb, cc):
        assert stats_now(cl)["l3_auth_errors"] == 0
    for s in (a, b, c):
        assert "right-pass" not in s.log(), "the password is in the log"
    for cl in (ca, cb, cc):
        cl.close()


def test_standalone_redis(nodes, shmkv_module, redis_procs):
    r = redis_procs.standalone()
    a = nodes("a", "--redis", r.url())
    b = nodes("b", "--redis", r.url())
    ca, cb = client(shmkv_module, a), client(shmkv_module, b)
    keys = [b"standalone-%d" % i for i in range(8)]
    payloads = [payload(("sa", i), 200 * KiB + 3 * i) for i in range(8)]
    store(ca, keys, payloads)
    st = wait_writes(ca, 8)
    assert st["l3_writes"] == 8 and st["l3_available"] == 1, st
    assert sorted(r.all_keys("shmkv:*")) == sorted(redis_key(k) for k in keys)
    retrieve_all(cb, keys, payloads)
    st = stats_now(cb)
    assert st["l3_loads"] == 8 and st["l3_moved"] == 0 and st["l3_ask"] == 0, st
    ca.close(), cb.close()


def test_full_redis_counts_write_errors_and_keeps_serving(nodes, shmkv_module, redis_procs):
    r = redis_procs.standalone(maxmemory="8mb", policy="noeviction")
    a = nodes("a", "--redis", r.url())
    ca = client(shmkv_module, a)
    keys = [b"full-%d" % i for i in range(12)]
    payloads = [payload(("full", i), MiB) for i in range(12)]
    store(ca, keys, payloads)
    st = wait_accounted(ca, 12)
    assert st["l3_write_errors"] >= 1, st
    in_redis = [k for k in keys if r.command("EXISTS", redis_key(k)) == 1]
    assert st["l3_writes"] == len(in_redis) < 12, (st, len(in_redis))
    assert log_lines(a, r"OOM|maxmemory|memory", r"redis|l3"), f"no log line about the full Redis:\n{a.log()[-3000:]}"
    # Still serving: every chunk from L1, new stores accepted.
    retrieve_all(ca, keys, payloads)
    assert ca.put(b"after-full", payload("af", 1000)) is True
    read_one(ca, b"after-full", payload("af", 1000))
    assert a.proc.poll() is None
    ca.close()


def test_full_write_queue_drops_and_counts(nodes, shmkv_module, cluster):
    a = nodes("a", "--redis", cluster.url(), "--redis-max-inflight-bytes", "64KiB")
    ca = client(shmkv_module, a)
    keys = [b"queue-%d" % i for i in range(32)]
    payloads = [payload(("q", i), 256 * KiB) for i in range(32)]
    t0 = time.monotonic()
    store(ca, keys, payloads)  # one commit of 8 MiB against a 64 KiB queue
    assert time.monotonic() - t0 < 5, "the commit waited for Redis"
    st = wait_accounted(ca, 32)
    assert st["l3_write_dropped"] >= 1, st
    assert st["l3_write_errors"] == 0, st
    assert len(cluster.all_keys("shmkv:*")) == st["l3_writes"], st
    retrieve_all(ca, keys, payloads)  # L1 has them all
    assert a.proc.poll() is None
    ca.close()


def test_a_non_cluster_redis_listed_with_cluster_nodes_is_logged_counted_and_ignored(nodes, shmkv_module, redis_procs,
                                                                                     cluster):
    lone = redis_procs.standalone()
    # The stray seed first, so that the cluster is found only after it.
    url = "redis://" + lone.url().removeprefix("redis://") + "," + cluster.url().removeprefix("redis://")
    a = nodes("a", "--redis", url)
    b = nodes("b", "--redis", cluster.url())
    ca, cb = client(shmkv_module, a), client(shmkv_module, b)
    st = stats_now(ca)
    assert st["l3_config_errors"] >= 1 and st["l3_available"] == 1, st
    assert log_lines(a, r"not?n?-cluster|non-cluster", r"redis|l3"), a.log()[-3000:]
    keys = [b"mixed-seed-%d" % i for i in range(6)]
    payloads = [payload(("ms", i), 64 * KiB + i) for i in range(6)]
    store(ca, keys, payloads)
    wait_writes(ca, 6)
    assert lone.all_keys("shmkv:*") == [], "written to the stray non-cluster Redis"
    retrieve_all(cb, keys, payloads)
    ca.close(), cb.close()
