"""The Redis test harness itself (tests/python/redis_cluster.py): real redis-server processes on
loopback, no shmkv involved. Skipped only when redis-server / redis-cli are not installed.

Run: /usr/bin/python3 -m pytest tests/python/test_redis_cluster_harness.py
"""
import os
import time

import pytest

from redis_cluster import (BUS_OFFSET, NSLOTS, RedisError, RespConnection, key_slot, parse_info,
                           redis_procs, require_redis)  # noqa: F401 - redis_procs is a fixture

pytestmark = pytest.mark.usefixtures("redis_present")


@pytest.fixture
def redis_present():
    require_redis()


def test_three_masters_cover_every_slot_and_route_through_redis_cli(redis_procs):
    c = redis_procs.cluster(masters=3)
    assert len(c.ports) == 3 and len(set(c.ports)) == 3
    assert c.seeds == ",".join(f"127.0.0.1:{p}" for p in c.ports)
    assert c.url() == "redis://" + c.seeds
    # Each master serves a share; together exactly the 16384 slots.
    nodes = c.cluster_nodes()
    masters = [n for n in nodes if "master" in n["flags"]]
    assert len(masters) == 3 and all(n["slots"] for n in masters)
    covered = set().union(*(n["slots"] for n in masters))
    assert covered == set(range(NSLOTS)) and sum(len(n["slots"]) for n in masters) == NSLOTS
    assert sorted(c.masters()) == sorted(c.ports)
    for p in c.ports:
        info = parse_info(c.command(p, "CLUSTER", "INFO"))
        assert info["cluster_state"] == "ok" and info["cluster_slots_assigned"] == str(NSLOTS), info
    # Our CRC16 is redis' own.
    for k in (b"a", b"shmkv:0123:abcd", b"{user1}.x", b"\x00\xff binary", b"foo{}bar"):
        assert key_slot(k) == c.command(c.ports[0], "CLUSTER", "KEYSLOT", k), k
    # redis-cli -c follows MOVED: SET through one node, GET through another.
    keys = [f"harness-{i}" for i in range(12)]
    for k in keys:
        assert c.cli(c.ports[0], "SET", k, f"value-{k}").strip() == "OK"
    for k in keys:
        assert c.cli(c.ports[1], "GET", k).strip() == f"value-{k}"
        # The key lives on the master that master_for_key names, and only there.
        owner = c.master_for_key(k)
        assert c.command(owner, "GET", k) == f"value-{k}".encode()
        other = next(p for p in c.ports if p != owner)
        with pytest.raises(RedisError, match="MOVED"):
            c.command(other, "GET", k)
    spread = {c.master_for_key(k) for k in keys}
    assert len(spread) >= 2, "12 keys all on one master: the slot map is wrong"
    assert c.all_keys("harness-*") == sorted(k.encode() for k in keys)
    # Binary-safe values through the RESP client.
    blob = bytes(range(256)) * 1024 + b"\r\n$-1\r\n"
    assert c.set(b"bin\x00key", blob) == "OK" and c.get(b"bin\x00key") == blob
    assert c.get(b"absent") is None
    # Processes: a cluster node listens on its port and the bus port.
    for p in c.ports:
        with RespConnection(p + BUS_OFFSET, timeout=2.0):
            pass
    c.stop()
    for p in c.ports:
        assert not c.nodes[p].alive()
        with pytest.raises(OSError):
            RespConnection(p, timeout=1.0)
    c.stop()  # idempotent


def test_failover_promotes_a_replica_within_a_bound(redis_procs):
    c = redis_procs.cluster(masters=3, replicas=1)
    assert len(c.ports) == 6
    assert len(c.masters()) == 3
    for m in c.masters():
        assert len(c.replicas_of(m)) == 1
    # A key on some master, replicated before the kill.
    key = b"failover-key"
    victim = c.master_for_key(key)
    assert c.set(key, b"v" * 1000) == "OK"
    c.wait_replicas_synced()
    replica = c.replicas_of(victim)[0]
    t0 = time.monotonic()
    c.kill(victim)
    assert not c.nodes[victim].alive()
    new_master = c.wait_failover(victim, timeout=20)
    elapsed = time.monotonic() - t0
    assert new_master == replica
    assert elapsed < 20, elapsed
    assert c.master_for_key(key) == replica
    assert c.get(key) == b"v" * 1000  # the data came along
    assert victim not in c.masters() and replica in c.masters()


def test_cluster_with_password_and_urls(redis_procs):
    c = redis_procs.cluster(masters=3, password="s3cret pass")
    assert c.url() == "redis://:s3cret pass@" + c.seeds
    assert c.url(with_password=False) == "redis://" + c.seeds
    assert c.url(user="shmkv") == "redis://shmkv:s3cret pass@" + c.seeds
    with pytest.raises(RedisError, match="NOAUTH"):
        RespConnection(c.ports[0]).command("GET", "x")
    with pytest.raises(RedisError, match="WRONGPASS|invalid"):
        RespConnection(c.ports[0], password="wrong")
    assert c.cli(c.ports[0], "SET", "pw-key", "1").strip() == "OK"
    assert c.cli(c.ports[2], "GET", "pw-key").strip() == "1"


def test_reshard_in_the_background_moves_slots_and_keys(redis_procs):
    c = redis_procs.cluster(masters=3)
    src, dst = c.ports[0], c.ports[1]
    src_slots = sorted(s for s, p in c.slot_map().items() if p == src)
    keys = [f"rk-{i}" for i in range(300)]
    for k in keys:
        c.set(k, k)
    on_src = [k for k in keys if c.master_for_key(k) == src]
    assert on_src
    job = c.reshard(src, dst, 500, background=True)
    reads = 0
    while not job.done():
        for k in keys[:20]:  # redis-cli -c follows MOVED and ASK while slots move
            assert c.cli(c.ports[2], "GET", k).strip() == k
            reads += 1
    job.join()
    moved = c.wait_agree()
    assert sum(1 for s in src_slots if moved[s] == dst) == 500
    assert sum(1 for p in moved.values() if p == src) == len(src_slots) - 500
    for k in keys:
        assert c.get(k) == k.encode()
    assert sorted(c.all_keys("rk-*")) == sorted(k.encode() for k in keys)


def test_standalone_with_maxmemory_noeviction(redis_procs):
    r = redis_procs.standalone(maxmemory="8mb", policy="noeviction", password="pw")
    assert r.url() == f"redis://:pw@127.0.0.1:{r.port}"
    assert r.url(with_password=False) == f"redis://127.0.0.1:{r.port}"
    info = parse_info(r.command("INFO", "server"))
    assert info["redis_mode"] == "standalone"
    assert r.command("CONFIG", "GET", "maxmemory-policy") == [b"maxmemory-policy", b"noeviction"]
    stored = 0
    with pytest.raises(RedisError, match="OOM"):
        for i in range(10):
            r.set(f"big-{i}", b"x" * (1 << 20))
            stored += 1
    assert 1 <= stored < 8, stored  # a few fit (the query buffer counts too), then OOM
    assert r.cli("GET", "big-0").strip() == "x" * (1 << 20)
    r.stop()
    assert not r.node.alive()


def test_stop_ends_every_process(redis_procs):
    # The fixture's finalizer calls stop() on everything it made, whatever the test's outcome.
    c = redis_procs.cluster(masters=3)
    pids = [n.proc.pid for n in c.nodes.values()]
    for r in redis_procs.made:
        r.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_ports_are_not_reused_and_bus_ports_are_free(redis_procs):
    from redis_cluster import free_ports

    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(p + BUS_OFFSET < 32768 for p in ports)  # below the ephemeral range
    assert not set(ports) & set(free_ports(8))


def test_a_node_that_cannot_bind_is_reported(tmp_path, redis_procs):
    first = redis_procs.standalone()
    from redis_cluster import StandaloneRedis

    clash = StandaloneRedis(tmp_path / "clash", port=first.port, start=False)
    redis_procs.made.append(clash)
    with pytest.raises(AssertionError, match="exited"):
        clash.start()
