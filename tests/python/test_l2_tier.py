"""The L2 disk tier of shmkv-server (docs/l2-tier.md): real server processes, the real
shmkv-file-worker in PIPE mode, real files.

Run with Debian's interpreter: SHMKV_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/test_l2_tier.py
"""
import hashlib
import os
import pathlib
import signal
import subprocess
import time

import pytest

from conftest import ServerProcess

MiB = 1 << 20
NS_HEX_LEN = 32  # 16-byte namespace digest


class L2Server(ServerProcess):
    """A ServerProcess with its stderr (the log) captured in a file we can read back."""

    def __init__(self, binary, tmp_path, name, pool_size, *extra):
        self.log_path = tmp_path / f"{name}.{time.monotonic_ns()}.log"
        super().__init__(binary, tmp_path, name, pool_size, *extra)

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--pool-size", self.pool_size, "--shm-name", self.name, "--socket", self.socket,
             "--log-level", "info", *self.extra],
            stdout=subprocess.PIPE, stderr=open(self.log_path, "w"), text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("shmkv-server ready:"), f"server did not start: {line!r}\n{self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def l2(server_bin, tmp_path, segment_name):
    """Starts L2 servers; every one is stopped with SIGTERM at teardown and must exit 0."""
    started = []

    def start(disk_dir, *extra, pool="8MiB"):
        s = L2Server(server_bin, tmp_path, segment_name, pool, "--disk-dir", str(disk_dir), *extra)
        started.append(s)
        return s

    yield start
    for s in started:
        assert s.stop() in (0, None), s.log()


def client(shmkv_module, srv, model="llama"):
    return shmkv_module.Client(srv.socket, timeout=10.0, model=model, world_size=1, rank=0, dtype="bf16",
                               layout="NHD")


def payload(i: int, size: int) -> bytes:
    # Deterministic and distinct per object, cheap to make.
    seed = hashlib.sha256(f"object-{i}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def sha(b) -> str:
    return hashlib.sha256(bytes(b)).hexdigest()


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def settled(c):
    """Waits until no L2 write is in flight and returns the stats."""
    return wait_for(lambda: (lambda s: s if s["l2_writes_in_flight"] == 0 else None)(c.stats()),
                    what="L2 writes to finish")


def files_under(root: pathlib.Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_eviction_demotes_to_disk_and_back_byte_identical(l2, shmkv_module, tmp_path):
    disk = tmp_path / "disk"
    srv = l2(disk, pool="8MiB")
    c = client(shmkv_module, srv)
    keys = [hashlib.sha256(b"chunk%d" % i).digest() for i in range(24)]
    sizes = [MiB - 4096 * (i % 3) - 17 * i for i in range(24)]  # not page multiples
    for i, k in enumerate(keys):
        assert c.put(k, payload(i, sizes[i])) is not False
        settled(c)  # the producer here is slower than the disk: nothing dirty is ever evicted
    st = c.stats()
    assert st["evictions"] >= 16, st  # 24 MiB through an 8 MiB pool
    assert st["l2_evicted_dirty"] == 0, st
    assert st["l2_objects"] >= 16 and st["l2_write_errors"] == 0, st
    # Every key is found: L1 holds the newest, L2 the rest.
    assert c.lookup(keys) == 24
    assert c.stats()["l2_hits"] >= 16
    # The early ones come back from disk through L1, byte-identical.
    for i in range(8):
        got = c.get(keys[i])
        assert got is not None and sha(got) == sha(payload(i, sizes[i])), f"object {i} differs"
    st = c.stats()
    assert st["l2_loads"] >= 8 and st["l2_read_errors"] == 0, st
    # A batch prepare_retrieve that needs several loads answers once, with every slot pinned.
    views = c.prepare_retrieve(keys[8:12])
    assert all(v is not None for v in views)
    assert [sha(v) for v in views] == [sha(payload(i, sizes[i])) for i in range(8, 12)]
    c.commit_retrieve(keys[8:12])
    # Files are named from digests: <32 hex of the namespace>/<hex of the key>.
    names = files_under(disk)
    assert len(names) == st["l2_objects"]
    for n in names:
        ns, key_hex = n.split("/")
        assert len(ns) == NS_HEX_LEN and bytes.fromhex(key_hex) in keys


def test_write_through_and_persistence_across_restart(l2, shmkv_module, tmp_path):
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    keys = [b"persist-%d" % i for i in range(5)]
    sizes = [MiB + 123, 2 * MiB, 4096, 1, 3 * MiB - 5]
    for i, k in enumerate(keys):
        c.put(k, payload(i, sizes[i]))
    st = settled(c)
    # Write-through: every commit is on disk although L1 never had to evict.
    assert st["evictions"] == 0 and st["l2_objects"] == 5 and st["l2_dirty_objects"] == 0, st
    assert st["l2_bytes"] == sum(sizes)
    c.close()
    assert srv.stop() == 0
    # A write torn by a crash leaves a temp file; the restarted server removes it.
    ns_dir = next(disk.iterdir())
    torn = ns_dir / ".shmkv-tmp-00000000deadbeef"
    torn.write_bytes(b"torn")
    (disk / "not-ours.txt").write_text("left alone")

    srv2 = l2(disk, pool="16MiB")
    assert "1 torn temp file(s) removed" in srv2.log()
    assert not torn.exists() and (disk / "not-ours.txt").exists()
    c2 = client(shmkv_module, srv2)
    st = c2.stats()
    assert st["objects"] == 0 and st["l2_objects"] == 5, st
    assert c2.lookup(keys) == 5  # hits, all from disk
    for i, k in enumerate(keys):
        got = c2.get(k)
        assert got is not None and len(got) == sizes[i] and sha(got) == sha(payload(i, sizes[i]))
    # Another namespace does not see them.
    c3 = client(shmkv_module, srv2, model="other-model")
    assert c3.lookup(keys) == 0
    # The on-disk copy answers prepare_store with `exists`, not a second copy.
    c4 = client(shmkv_module, srv2)
    assert c4.remove([keys[0]]) == ["removed"]  # from L1 and disk
    assert c4.lookup(keys) == 0
    assert c4.stats()["l2_objects"] == 4
    c2.close(), c3.close(), c4.close()


def test_prepare_store_of_a_disk_object_is_exists(l2, shmkv_module, tmp_path):
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    c.put(b"on-disk", payload(1, MiB))
    settled(c)
    c.close()
    srv.stop()
    srv2 = l2(disk, pool="16MiB")
    c2 = client(shmkv_module, srv2)
    slots = c2.prepare_store([b"on-disk", b"new"], [MiB, MiB])
    assert slots[0] is None and slots[1] is not None  # exists (on disk), ok
    c2.abort_store([b"new"])
    c2.close()


def test_disk_size_bound_and_lru(l2, shmkv_module, tmp_path):
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", "--disk-size", "3MiB", pool="32MiB")
    c = client(shmkv_module, srv)
    a, b, cc, d = b"A", b"B", b"C", b"D"
    for i, k in enumerate([a, b, cc]):
        c.put(k, payload(i, MiB))
        settled(c)
        time.sleep(0.02)  # distinct modification times: the restart rebuilds the LRU from them
    assert c.stats()["l2_objects"] == 3
    # An object larger than the whole tier stays in L1 only.
    c.put(b"huge", payload(9, 4 * MiB))
    st = settled(c)
    assert st["l2_skipped_too_large"] == 1 and st["l2_objects"] == 3, st
    c.close()
    srv.stop()

    srv2 = l2(disk, "--disk-write-through", "--disk-size", "3MiB", pool="32MiB")
    c2 = client(shmkv_module, srv2)
    assert c2.lookup([a]) == 1  # touches A on disk: B is now the least recently used
    c2.put(d, payload(3, MiB))
    st = settled(c2)
    assert st["l2_objects"] == 3 and st["l2_bytes"] <= 3 * MiB and st["l2_deletes"] == 1, st
    wait_for(lambda: len(files_under(disk)) == 3, what="the LRU file to be deleted")
    on_disk = {bytes.fromhex(n.split("/")[1]) for n in files_under(disk)}
    assert on_disk == {a, cc, d}
    assert c2.lookup([b]) == 0
    assert sha(c2.get(a)) == sha(payload(0, MiB))
    c2.close()


def test_restart_with_smaller_disk_size_trims_oldest(l2, shmkv_module, tmp_path):
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="32MiB")
    c = client(shmkv_module, srv)
    for i in range(4):
        c.put(b"t%d" % i, payload(i, MiB))
        settled(c)
        time.sleep(0.02)
    c.close()
    srv.stop()
    srv2 = l2(disk, "--disk-size", "2MiB", pool="32MiB")
    assert "2 trimmed to fit" in srv2.log()
    c2 = client(shmkv_module, srv2)
    assert c2.lookup([b"t2", b"t3"]) == 2 and c2.lookup([b"t0"]) == 0
    c2.close()


def test_truncated_file_reports_missing_and_nothing_half_loaded(l2, shmkv_module, tmp_path):
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    keys = [b"h0", b"h1", b"h2"]
    for i, k in enumerate(keys):
        c.put(k, payload(i, MiB))
    settled(c)
    c.close()
    srv.stop()
    srv2 = l2(disk, pool="16MiB")
    c2 = client(shmkv_module, srv2)
    # Damaged behind the server's back after its index was built: the READ comes back short.
    victim = disk / next(n for n in files_under(disk) if n.endswith(b"h1".hex()))
    with open(victim, "r+b") as f:
        f.truncate(MiB // 2)
    assert c2.lookup(keys) == 3  # the index does not read files
    views = c2.prepare_retrieve(keys)
    assert views[0] is not None and views[1] is None  # the prefix ends at the bad file
    assert sha(views[0]) == sha(payload(0, MiB))
    c2.commit_retrieve([keys[0]])
    st = c2.stats()
    assert st["l2_read_errors"] == 1 and st["reserved_objects"] == 0, st
    assert "L2 read of" in srv2.log() and "file truncated" in srv2.log()
    # The bad file is dropped; the key is gone from every tier, nothing half-loaded is visible.
    assert c2.lookup([keys[1]]) == 0
    assert c2.get(keys[1]) is None
    c2.close()


def test_disk_full_clear_error_and_l1_keeps_serving(l2, shmkv_module, tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no real way to fill a disk here: mounting a 3 MiB tmpfs failed ({r.stderr.strip()}); "
                    "needs root or CAP_SYS_ADMIN")
    try:
        # The tier believes it has 64 MiB; the file system has 3: writes fail with ENOSPC.
        srv = l2(mnt, "--disk-write-through", "--disk-size", "64MiB", pool="32MiB")
        c = client(shmkv_module, srv)
        keys = [b"full-%d" % i for i in range(6)]
        for i, k in enumerate(keys):
            c.put(k, payload(i, MiB))
        st = wait_for(lambda: (lambda s: s if s["l2_write_errors"] >= 1 and s["l2_writes_in_flight"] == 0
                                             else None)(c.stats()), what="a failed write")
        assert st["l2_writes"] < 6, st
        assert "No space left on device" in srv.log() and "L1 keeps serving" in srv.log()
        # L1 serves every object, intact; new stores still work.
        for i, k in enumerate(keys):
            assert sha(c.get(k)) == sha(payload(i, MiB))
        c.put(b"after", payload(7, MiB))
        assert sha(c.get(b"after")) == sha(payload(7, MiB))
        # Nothing corrupted on disk: every file there is complete, no temp files linger.
        names = files_under(mnt)
        assert all(not pathlib.PurePath(n).name.startswith(".shmkv-tmp-") for n in names), names
        for n in names:
            assert (mnt / n).stat().st_size == MiB
        assert st["l2_available"] == 1
        c.close()
        t0 = time.monotonic()
        assert srv.stop() == 0
        # Write-through drains its queue at SIGTERM, but a failing disk is not waited for.
        assert time.monotonic() - t0 < 3
        assert "not written to L2: writes fail" in srv.log()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def worker_pid(srv):
    children = pathlib.Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    pid = int(children[0])
    assert "shmkv-file-worker" in pathlib.Path(f"/proc/{pid}/cmdline").read_text()
    return pid


def test_worker_killed_l1_keeps_serving_and_the_worker_restarts(l2, shmkv_module, tmp_path):
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    c.put(b"before", payload(1, MiB))
    settled(c)
    worker = worker_pid(srv)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: "L2 disk tier unavailable" in srv.log(), what="the death to be logged")
    assert f"file worker (pid {worker}) is gone" in srv.log()
    assert "killed by signal 9" in srv.log() and "restarting the file worker in 1000 ms (1 of 3)" in srv.log()
    st = c.stats()
    assert st["l2_available"] == 0 and st["l2_worker_deaths"] == 1, st
    # L1 keeps serving: old and new objects, while the tier is down.
    assert sha(c.get(b"before")) == sha(payload(1, MiB))
    c.put(b"after", payload(2, MiB))  # dirty: cannot be written now
    assert sha(c.get(b"after")) == sha(payload(2, MiB))
    assert c.lookup([b"before", b"after"]) == 2
    # The restarted worker takes over, and the object committed during the outage is written.
    wait_for(lambda: "L2 disk tier available again" in srv.log(), what="the restart")
    st = wait_for(lambda: (lambda s: s if s["l2_objects"] == 2 else None)(c.stats()), what="the pending write")
    assert st["l2_available"] == 1 and st["l2_worker_restarts"] == 1 and st["l2_dirty_objects"] == 0, st
    assert worker_pid(srv) != worker
    # A worker that keeps dying is given up on after 3 restarts; L1 still serves.
    for n in range(2, 5):
        os.kill(worker_pid(srv), signal.SIGKILL)
        wait_for(lambda: c.stats()["l2_worker_deaths"] == n, what=f"death {n}")
        if n < 4:
            wait_for(lambda: c.stats()["l2_available"] == 1, what=f"restart {n}")
    wait_for(lambda: "is not restarted again (3 restarts)" in srv.log(), what="giving up")
    time.sleep(1.2)
    st = c.stats()
    assert st["l2_available"] == 0 and st["l2_worker_restarts"] == 3, st
    assert sha(c.get(b"after")) == sha(payload(2, MiB))
    c.close()
    assert srv.stop() == 0


def test_hostile_key_bytes_stay_inside_the_namespace_folder(l2, shmkv_module, tmp_path):
    disk = tmp_path / "sub" / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    evil = [b"../../escape", b"/etc/passwd", b"a b\n\x00..\\", b"." , b".shmkv-tmp-x"]
    for i, k in enumerate(evil):
        c.put(k, payload(i, 4096))
    st = settled(c)
    assert st["l2_objects"] == len(evil) and st["l2_write_errors"] == 0, st
    names = files_under(disk)
    assert len(names) == len(evil)
    ns_dirs = {n.split("/")[0] for n in names}
    assert len(ns_dirs) == 1 and all(len(d) == NS_HEX_LEN for d in ns_dirs)
    assert sorted(bytes.fromhex(n.split("/")[1]) for n in names) == sorted(evil)
    # Nothing was created outside the disk directory.
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["disk"]
    assert not (tmp_path / "escape").exists()
    c.close()


def test_stats_cli_prints_l2_figures(l2, shmkv_module, shmkv_bin, tmp_path):
    srv = l2(tmp_path / "disk", pool="8MiB")
    out = subprocess.run([shmkv_bin, "stats", "--socket", srv.socket], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    for field in ("l2_objects", "l2_bytes", "l2_hits", "l2_writes", "l2_write_errors", "l2_read_errors",
                  "l2_capacity", "l2_available"):
        assert field in out.stdout


def test_disk_flags_need_disk_dir_and_a_missing_worker_is_a_clear_error(server_bin, tmp_path, segment_name):
    r = subprocess.run([server_bin, "--pool-size", "8MiB", "--shm-name", segment_name, "--socket",
                        str(tmp_path / "s.sock"), "--disk-write-through"], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "need --disk-dir" in r.stderr
    r = subprocess.run([server_bin, "--pool-size", "8MiB", "--shm-name", segment_name, "--socket",
                        str(tmp_path / "s.sock"), "--disk-dir", str(tmp_path / "d"), "--file-worker",
                        str(tmp_path / "no-such-worker")], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "starting the file worker" in r.stderr and "no-such-worker" in r.stderr
    assert not pathlib.Path(f"/dev/shm/{segment_name}").exists()


def test_a_stalled_disk_never_blocks_the_loop(l2, shmkv_module, tmp_path):
    """The worker is stopped (SIGSTOP): its writes and reads hang. Other clients are still served,
    eviction drops dirty objects instead of waiting (counted), and a retrieve waiting for a load
    completes with the right bytes once the disk is back."""
    import threading

    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="8MiB")
    a = client(shmkv_module, srv)
    a.put(b"w0", payload(0, MiB))
    settled(a)
    worker = worker_pid(srv)
    # Push w0 out of L1 (clean, so it is just dropped): it now lives on disk only.
    for i in range(1, 9):
        a.put(b"x%d" % i, payload(i, MiB))
        settled(a)
    assert a.lookup([b"w0"]) == 1 and a.stats()["objects"] < 9
    os.kill(worker, signal.SIGSTOP)
    try:
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("w0", a.get(b"w0")))
        t.start()  # its prepare_retrieve waits for a READ that cannot run yet
        b = client(shmkv_module, srv)
        t0 = time.monotonic()
        for i in range(10, 22):  # 12 MiB through an 8 MiB pool while at most 4 writes hang
            assert b.put(b"y%d" % i, payload(i, MiB)) is not False
            assert sha(b.get(b"y%d" % i)) == sha(payload(i, MiB))
        assert time.monotonic() - t0 < 8  # served without waiting for the disk
        st = b.stats()
        assert st["l2_writes_in_flight"] >= 1 and st["l2_evicted_dirty"] >= 1, st
        assert t.is_alive()  # still waiting for its load
    finally:
        os.kill(worker, signal.SIGCONT)
    t.join(timeout=10)
    assert not t.is_alive()
    assert got["w0"] is not None and sha(got["w0"]) == sha(payload(0, MiB))
    st = settled(b)
    assert st["l2_write_errors"] == 0 and st["l2_read_errors"] == 0 and st["l2_available"] == 1, st
    a.close()
    b.close()


def test_prefix_alternating_between_l1_and_disk_counts_whole(l2, shmkv_module, tmp_path):
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    c.put(b"b", payload(2, MiB))
    settled(c)
    c.close()
    srv.stop()
    # Demote mode, L1 far below its watermark: a and c are never written, they live in L1 only.
    srv2 = l2(disk, pool="16MiB")
    c2 = client(shmkv_module, srv2)
    c2.put(b"a", payload(1, MiB))
    c2.put(b"c", payload(3, MiB))
    st = c2.stats()
    assert st["l2_writes"] == 0 and st["l2_dirty_objects"] == 2 and st["objects"] == 2, st
    keys = [b"a", b"b", b"c", b"d"]
    assert c2.lookup(keys) == 3  # a (L1), b (disk), c (L1); d nowhere
    views = c2.prepare_retrieve(keys)
    assert views[3] is None
    assert [sha(v) for v in views[:3]] == [sha(payload(i, MiB)) for i in (1, 2, 3)]
    c2.commit_retrieve(keys[:3])
    st = c2.stats()
    assert st["l2_hits"] == 1 and st["l2_loads"] == 1, st
    c2.close()


def test_write_through_drains_the_queue_on_sigterm(l2, shmkv_module, tmp_path):
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="64MiB")
    c = client(shmkv_module, srv)
    worker = worker_pid(srv)
    keys = [b"drain-%d" % i for i in range(20)]
    os.kill(worker, signal.SIGSTOP)  # writes pile up: at most 4 in flight, the rest queued
    try:
        for i, k in enumerate(keys):
            c.put(k, payload(i, MiB))
        st = c.stats()
        assert st["l2_dirty_objects"] >= 10, st
    finally:
        os.kill(worker, signal.SIGCONT)
    c.close()
    assert srv.stop() == 0  # SIGTERM at once: the server writes the queue before it exits
    srv2 = l2(disk, pool="64MiB")
    c2 = client(shmkv_module, srv2)
    assert c2.stats()["l2_objects"] == 20
    assert c2.lookup(keys) == 20
    assert sha(c2.get(keys[-1])) == sha(payload(19, MiB))
    c2.close()
