"""shmkv-server and the Python client end to end: real server processes, real segments."""
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import ServerProcess


def client(shmkv, server, **kw):
    kw.setdefault("timeout", 5.0)
    return shmkv.Client(server.socket, model="llama", dtype="bfloat16", layout="NHD", **kw)


def test_round_trip_is_zero_copy_and_byte_exact(shmkv_module, server):
    with client(shmkv_module, server) as c:
        info = c.info()
        assert info["shm_name"] == server.name
        assert os.path.exists(f"/dev/shm/{server.name}")  # the reported name is the real segment
        assert info["pool_size"] == 64 << 20 and info["alignment"] == 4096
        keys = [b"chunk-%d" % i for i in range(4)]
        sizes = [1 << 20, 4096, 12345, 3 << 20]
        slots = c.prepare_store(keys, sizes)
        assert c.last_statuses == ["ok"] * 4
        rng = np.random.default_rng(1)
        payloads = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
        for view, data in zip(slots, payloads):
            arr = np.frombuffer(view, dtype=np.uint8)
            assert arr.flags.writeable and not arr.flags.owndata
            arr[:] = data
        c.commit_store(keys)
        assert c.lookup(keys) == 4
        views = c.prepare_retrieve(keys)
        for view, data in zip(views, payloads):
            assert view.readonly
            assert np.array_equal(np.frombuffer(view, dtype=np.uint8), data)
        c.commit_retrieve(keys)
        stats = c.stats()
        for field in ("objects", "used_bytes", "pool_size", "reserved_objects", "pinned_objects", "sessions",
                      "evictions"):
            assert field in stats
        assert stats["objects"] == 4 and stats["pinned_objects"] == 0 and stats["reserved_objects"] == 0


def test_torch_frombuffer_views_the_pool_without_a_copy(shmkv_module, server):
    torch = pytest.importorskip("torch")
    with client(shmkv_module, server) as c:
        [slot] = c.prepare_store([b"t"], [4096])
        t = torch.frombuffer(slot, dtype=torch.bfloat16)
        t.fill_(1.5)
        c.commit_store([b"t"])
        [view] = c.prepare_retrieve([b"t"])
        raw = np.frombuffer(view, dtype=np.uint16)
        assert (raw == 0x3FC0).all()  # bfloat16 1.5, written through the torch view
        c.commit_retrieve([b"t"])


def test_put_get_and_per_key_statuses(shmkv_module, server):
    with client(shmkv_module, server) as a, client(shmkv_module, server) as b:
        assert a.put(b"k", b"hello") is True
        assert a.put(b"k", b"again") is False  # exists
        assert b.get(b"k") == b"hello"
        assert b.get(b"nope") is None
        a.prepare_store([b"w"], [100])
        b.prepare_store([b"w", b"k", b"huge"], [100, 100, 64 << 20])
        assert b.last_statuses == ["busy", "exists", "full"]
        assert b.lookup([b"w"]) == 0  # reserved objects are invisible
        assert b.prepare_retrieve([b"w"]) == [None] and b.last_statuses == ["missing"]
        a.abort_store([b"w"])
        assert a.stats()["reserved_objects"] == 0


def test_namespaces_never_collide(shmkv_module, server):
    with shmkv_module.Client(server.socket, model="m1") as a, shmkv_module.Client(server.socket, model="m2") as b, \
            shmkv_module.Client(server.socket, model="m1", salt="tenant") as c:
        a.put(b"same", b"a")
        assert b.get(b"same") is None and c.get(b"same") is None
        b.put(b"same", b"b")
        assert a.get(b"same") == b"a" and b.get(b"same") == b"b"


def test_errors_name_the_problem(shmkv_module, server):
    with client(shmkv_module, server) as c:
        with pytest.raises(shmkv_module.Error, match="commit_store: key #0 is not reserved"):
            c.commit_store([b"never-prepared"])
        with pytest.raises(shmkv_module.Error, match="commit_retrieve: key #0 is not pinned"):
            c.commit_retrieve([b"never-retrieved"])
        with pytest.raises(shmkv_module.Error, match="2 keys but 1 sizes"):
            c.prepare_store([b"a", b"b"], [1])
        with pytest.raises(shmkv_module.Error, match="size 0"):
            c.prepare_store([b"a"], [0])
        with pytest.raises(shmkv_module.Error, match="keys must be 1..64 bytes"):
            c.lookup([b"x" * 65])
        assert c.stats()["reserved_objects"] == 0  # nothing half-done


def test_commit_store_is_all_or_nothing(shmkv_module, server):
    with client(shmkv_module, server) as c:
        c.prepare_store([b"a", b"b"], [10, 10])
        with pytest.raises(shmkv_module.Error):
            c.commit_store([b"a", b"zzz"])
        assert c.lookup([b"a"]) == 0  # a stayed reserved
        c.commit_store([b"a", b"b"])
        assert c.lookup([b"a", b"b"]) == 2


WORKER = textwrap.dedent("""
    import hashlib, sys
    sys.path.insert(0, sys.argv[1])
    import shmkv, numpy as np
    sock, wid = sys.argv[2], int(sys.argv[3])
    c = shmkv.Client(sock, timeout=10.0, model="shared")
    rng = np.random.default_rng(wid)
    for round in range(20):
        keys = [b"w%d-r%d-c%d" % (wid, round, i) for i in range(8)]
        datas = [rng.integers(0, 256, 64 * 1024, dtype=np.uint8) for _ in keys]
        slots = c.prepare_store(keys, [d.size for d in datas])
        assert c.last_statuses == ["ok"] * 8, c.last_statuses
        for s, d in zip(slots, datas):
            np.frombuffer(s, dtype=np.uint8)[:] = d
        c.commit_store(keys)
        views = c.prepare_retrieve(keys)
        for v, d in zip(views, datas):
            assert hashlib.sha256(v).digest() == hashlib.sha256(d).digest()
        c.commit_retrieve(keys)
    print("ok")
""")


def test_parallel_workers_store_and_retrieve_with_checksums(shmkv_module, server, build_dir):
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(build_dir / "python"), server.socket, str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err
    with client(shmkv_module, server) as c:
        s = c.stats()
        assert s["objects"] == 4 * 20 * 8 and s["pinned_objects"] == 0 and s["reserved_objects"] == 0


HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import shmkv
    c = shmkv.Client(sys.argv[2], model="shared")
    c.put(b"committed", b"x" * 5000)
    slots = c.prepare_store([b"uncommitted-%d" % i for i in range(3)], [8192] * 3)
    for s in slots:
        s[:5] = b"dirty"
    c.prepare_retrieve([b"committed"])
    c.lookup([b"committed"], pin=True)
    print("holding", flush=True)
    sys.stdin.read()
""")


def test_sigkill_of_a_worker_frees_its_reservations_and_pins_at_once(shmkv_module, server, build_dir):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(build_dir / "python"), server.socket],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "holding"
    with shmkv_module.Client(server.socket, model="shared") as c:
        before = c.stats()
        assert before["reserved_objects"] == 3 and before["pinned_objects"] == 1
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        killed = time.monotonic()
        while True:
            s = c.stats()
            if s["reserved_objects"] == 0 and s["pinned_objects"] == 0:
                break
            assert time.monotonic() - killed < 0.1, f"leases still held 100 ms after SIGKILL: {s}"
            time.sleep(0.002)
        assert c.lookup([b"uncommitted-0"]) == 0  # never admitted
        assert c.prepare_retrieve([b"uncommitted-%d" % i for i in range(3)]) == [None] * 3
        assert c.get(b"committed") == b"x" * 5000
        assert c.remove([b"committed"]) == ["removed"]  # no pin left behind


def test_a_stopped_server_gives_a_timeout_that_names_the_operation(shmkv_module, server):
    c = client(shmkv_module, server, timeout=0.3, instance_id="rank0")
    server.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(shmkv_module.TimeoutError) as exc:
            c.prepare_store([b"a"], [10])
        assert time.monotonic() - t0 < 2
        assert isinstance(exc.value, TimeoutError)
        msg = str(exc.value)
        assert "prepare_store" in msg and "rank0" in msg and "300 ms" in msg
    finally:
        server.proc.send_signal(signal.SIGCONT)
    c.put(b"after", b"1")  # reconnects once the server answers again
    assert c.get(b"after") == b"1"


def test_the_client_recovers_after_a_server_restart(shmkv_module, server):
    c = client(shmkv_module, server)
    c.put(b"old", b"before restart")
    [old_view] = c.prepare_retrieve([b"old"])
    gen = c.info()["generation"]
    server.stop(signal.SIGKILL)
    server.start()  # same name and socket; the stale segment is cleaned at start
    # A lookup is idempotent: the client reconnects and sends it again, so it simply succeeds.
    assert c.lookup([b"old"]) == 0  # a fresh server: the old object is gone, no crash
    assert c.info()["generation"] != gen
    assert bytes(old_view[:6]) == b"before"  # the old mapping stays valid for old views
    c.put(b"new", b"after restart")
    assert c.get(b"new") == b"after restart"
    # A call that changes state is not repeated: its leases died with the old server.
    server.stop(signal.SIGKILL)
    server.start()
    with pytest.raises(shmkv_module.Error, match="reconnects"):
        c.prepare_store([b"x"], [10])
    assert c.lookup([b"new"]) == 0
    c.close()


def frame(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


def raw_call(sock_path: str, data: bytes, expect_close: bool = False) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sock_path)
    s.sendall(data)
    header = s.recv(4)
    assert len(header) == 4
    n = struct.unpack("<I", header)[0]
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    if expect_close:
        assert s.recv(1) == b""  # the server hung up on this connection only
    s.close()
    return body


def msgpack_map(**fields) -> bytes:
    """A tiny msgpack encoder for str/int/bytes/list/dict/bool values (no dependency needed)."""
    def enc(v):
        if isinstance(v, bool):
            return b"\xc3" if v else b"\xc2"
        if isinstance(v, int):
            return b"\xcf" + struct.pack(">Q", v) if v >= 0 else b"\xd3" + struct.pack(">q", v)
        if isinstance(v, str):
            b = v.encode()
            return b"\xdb" + struct.pack(">I", len(b)) + b
        if isinstance(v, bytes):
            return b"\xc6" + struct.pack(">I", len(v)) + v
        if isinstance(v, list):
            return b"\xdd" + struct.pack(">I", len(v)) + b"".join(enc(x) for x in v)
        if isinstance(v, dict):
            return b"\xdf" + struct.pack(">I", len(v)) + b"".join(enc(k) + enc(x) for k, x in v.items())
        raise TypeError(v)
    return b"\xdf" + struct.pack(">I", len(fields)) + b"".join(enc(k) + enc(v) for k, v in fields.items())


@pytest.mark.parametrize("payload,expect,closes", [
    (struct.pack("<I", 0), b"frame length 0", True),
    (struct.pack("<I", 1 << 30), b"frame length", True),
    (frame(b"\xc1\xc1\xc1"), b"not valid msgpack", False),
    (frame(b"\x93\x01\x02\x03"), b"not a msgpack map", False),
    (frame(msgpack_map(id=1)), b"field 'op' is missing", False),
    (frame(msgpack_map(id=2, op="launch_missiles")), b"unknown operation", False),
    (frame(msgpack_map(id=3, op="prepare_store", keys=[b"k"], sizes=[1])), b"not registered", False),
    (frame(msgpack_map(id=4, op="register", instance_id=7, namespace=[])), b"instance_id", False),
    (frame(msgpack_map(id=5, op="lookup", keys=[1, 2])), b"not registered", False),
])
def test_malformed_input_gets_an_error_and_the_server_keeps_serving(shmkv_module, server, payload, expect, closes):
    with client(shmkv_module, server) as bystander:
        bystander.put(b"safe", b"data")
        reply = raw_call(server.socket, payload, expect_close=closes)
        assert b"\xa2ok\xc2" in reply  # "ok": false
        assert expect in reply, reply
        assert server.proc.poll() is None
        assert bystander.get(b"safe") == b"data"


def test_wrong_types_after_registration_are_rejected(server):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(server.socket)

    def call(**fields):
        s.sendall(frame(msgpack_map(**fields)))
        n = struct.unpack("<I", s.recv(4))[0]
        body = b""
        while len(body) < n:
            body += s.recv(n - len(body))
        return body

    assert b"\xa2ok\xc3" in call(id=1, op="register", instance_id="raw", namespace={"model": "m"})
    for bad, why in [(dict(keys=b"notalist", sizes=[1]), b"must be an array"),
                     (dict(keys=[b"k"], sizes=[-1]), b"non-negative integer"),
                     (dict(keys=[7], sizes=[1]), b"byte string")]:
        reply = call(id=2, op="prepare_store", **bad)
        assert why in reply, reply
    assert b"\xa2ok\xc3" in call(id=3, op="health")
    s.close()


def test_eviction_keeps_the_longest_prefixes(shmkv_module, server_bin, tmp_path, segment_name):
    srv = ServerProcess(server_bin, tmp_path, segment_name, "1MiB")
    try:
        with client(shmkv_module, srv) as c:
            chunk = 64 << 10  # 16 chunks fill the pool
            chain = [b"chain-%d" % i for i in range(8)]
            c.prepare_store(chain, [chunk] * 8)
            c.commit_store(chain)
            assert c.lookup(chain) == 8
            # Another prompt's 12 chunks need room: the chain's tail must go first.
            other = [b"other-%d" % i for i in range(12)]
            c.prepare_store(other, [chunk] * 12)
            assert c.last_statuses == ["ok"] * 12
            c.commit_store(other)
            kept = c.lookup(chain)
            assert 0 < kept < 8
            present = [c.lookup([k]) for k in chain]
            assert present == [1] * kept + [0] * (8 - kept), present  # a prefix survives, nothing else
            assert c.stats()["evictions"] >= 8 - kept
            # Pinned objects are never evicted: pin everything, then a store reports full.
            c.prepare_retrieve(other + chain[:kept])
            c.prepare_store([b"more"], [chunk])
            assert c.last_statuses == ["full"]
    finally:
        srv.stop()


def test_reservation_ttl_backstop(shmkv_module, server_bin, tmp_path, segment_name):
    srv = ServerProcess(server_bin, tmp_path, segment_name, "8MiB", "--reserve-ttl", "0.2", "--pin-ttl", "0.2")
    try:
        with client(shmkv_module, srv) as c:
            c.put(b"p", b"1")
            c.prepare_store([b"hung"], [100])
            c.prepare_retrieve([b"p"])
            time.sleep(0.6)
            s = c.stats()
            assert s["reserved_objects"] == 0 and s["pinned_objects"] == 0 and s["expired_leases"] >= 2
            assert s["quarantined_slots"] == 1  # the hung writer may still write: its slot waits
            with pytest.raises(shmkv_module.Error, match="Expired: .*reservation of key #0 expired"):
                c.commit_store([b"hung"])
            assert c.stats()["quarantined_slots"] == 0
    finally:
        srv.stop()


def test_sigterm_unlinks_segment_and_socket(server):
    assert os.path.exists(f"/dev/shm/{server.name}") and os.path.exists(server.socket)
    assert server.stop(signal.SIGTERM) == 0
    assert not os.path.exists(f"/dev/shm/{server.name}")
    assert not os.path.exists(server.socket)


def test_shmkv_stats_cli(shmkv_module, server, shmkv_bin):
    with client(shmkv_module, server) as c:
        c.put(b"a", b"1")
        out = subprocess.run([shmkv_bin, "stats", "--socket", server.socket, "--json"], capture_output=True,
                             text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        import json
        stats = json.loads(out.stdout)
        assert stats["objects"] == 1 and stats["pool_size"] == 64 << 20
        text = subprocess.run([shmkv_bin, "stats", "--socket", server.socket], capture_output=True, text=True,
                              timeout=10)
        assert text.returncode == 0, text.stderr
        import re
        # The summary a person reads first: uptime, pool use in binary units, the hit rate.
        assert re.search(r"^  up \d+", text.stdout, re.M), text.stdout
        assert "64.0 MiB" in text.stdout and "1 objects" in text.stdout, text.stdout
        assert re.search(r"hit rate (-|[\d.]+%) of keys", text.stdout), text.stdout
        # Every counter, values in one column.
        counters = text.stdout.split("\n\n", 1)[1]
        rows = [ln for ln in counters.splitlines() if re.match(r"^  [a-z0-9_]+ +\d+", ln)]
        assert rows and len({ln.index(re.search(r" \d", ln).group()) for ln in rows}) == 1, rows
    missing = subprocess.run([shmkv_bin, "stats", "--socket", "/nonexistent.sock"], capture_output=True, text=True,
                             timeout=10)
    assert missing.returncode == 1 and "is the server running" in missing.stderr


def test_posted_commits_apply_and_a_failed_one_is_raised_by_the_next_call(shmkv_module, server):
    with shmkv_module.Client(server.socket) as c:
        slots = c.prepare_store([b"p1"], [4096])
        memoryview(slots[0])[:3] = b"abc"
        c.post_commit_store([b"p1"])
        assert c.lookup([b"p1"]) == 1  # the next call read the post's reply first: it was applied
        views = c.prepare_retrieve([b"p1"])
        assert bytes(views[0][:3]) == b"abc"
        c.post_commit_retrieve([b"p1"])
        c.sync()
        assert c.stats()["pinned_objects"] == 0
        c.post_commit_store([b"never-prepared"])
        with pytest.raises(shmkv_module.Error, match="never-prepared|not reserved|unknown"):
            c.lookup([b"p1"])
        assert c.lookup([b"p1"]) == 1  # the failure is reported once; the connection serves on
