"""The L2 disk tier of shmkv-server (docs/l2-tier.md): real server processes, the real
shmkv-file-worker in PIPE mode, real files.

Run with Debian's interpreter: SHMKV_BUILD_DIR=build /usr/bin/python3 -m pytest tests/python/test_l2_tier.py
"""
import contextlib
import hashlib
import os
import pathlib
import signal
import subprocess
import time

import pytest

from conftest import ServerProcess, process_alive

MiB = 1 << 20
NS_HEX_LEN = 32  # 16-byte namespace digest


class L2Server(ServerProcess):
    """A ServerProcess with its stderr (the log) captured in a file we can read back."""

    def __init__(self, binary, tmp_path, name, pool_size, *extra):
        self.log_path = tmp_path / f"{name}.{time.monotonic_ns()}.log"
        super().__init__(binary, tmp_path, name, pool_size, *extra)

    log_level = "info"

    def start(self):
        try:
            return super().start()
        except RuntimeError as e:
            raise AssertionError(f"{e}\n{self.log()}") from None

    def popen_kwargs(self) -> dict:
        return {"stderr": open(self.log_path, "w")}

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
    """The object files (the lock file is not one)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != ".shmkv.lock")


def file_of(disk: pathlib.Path, key: bytes) -> pathlib.Path:
    """The object file of `key` (one namespace in use): `<hex>`, or `<hex>.<length>` when padded."""
    return disk / next(n for n in files_under(disk) if n.split("/")[1].split(".")[0] == key.hex())


def uses_direct_io(srv) -> bool:
    """Whether the server's L2 tier runs O_DIRECT (its start line says so)."""
    log = srv.log()
    assert ("O_DIRECT I/O" in log) != ("buffered I/O" in log), log
    return "O_DIRECT I/O" in log


def padded(n: int) -> int:
    return (n + 4095) // 4096 * 4096


def fs_takes_o_direct(directory) -> bool:
    probe = os.path.join(directory, ".probe-o-direct")
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)  # ramfs creates the file before it refuses O_DIRECT
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def evict_all_by_restart(l2, disk, srv, c, *extra, pool="16MiB"):
    """Stops `srv` and starts a new one on `disk`: every object lives on disk only."""
    c.close()
    assert srv.stop() == 0
    return l2(disk, *extra, pool=pool)


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
    # Files are named from digests: <32 hex of the namespace>/<hex of the key>, and with O_DIRECT
    # `.<length>` after it for the sizes that are not page multiples (padded).
    names = files_under(disk)
    assert len(names) == st["l2_objects"]
    direct = uses_direct_io(srv)
    for n in names:
        ns, name = n.split("/")
        key_hex, _, length = name.partition(".")
        i = keys.index(bytes.fromhex(key_hex))
        assert len(ns) == NS_HEX_LEN
        if direct and sizes[i] % 4096 != 0:
            assert (int(length), (disk / n).stat().st_size) == (sizes[i], padded(sizes[i])), n
        else:
            assert length == "" and (disk / n).stat().st_size == sizes[i], n


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
    # l2_bytes counts the files: padded to 4096 bytes with O_DIRECT.
    assert st["l2_bytes"] == sum(padded(n) if uses_direct_io(srv) else n for n in sizes), st
    c.close()
    assert srv.stop() == 0
    # A write torn by a crash leaves a temp file; the restarted server removes it.
    ns_dir = next(p for p in disk.iterdir() if p.is_dir())
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
        assert st["l2_available"] == 1
        c.close()
        t0 = time.monotonic()
        assert srv.stop() == 0
        # Write-through drains its queue at SIGTERM, but a failing disk is not waited for.
        assert time.monotonic() - t0 < 3
        assert "not written to L2: writes fail" in srv.log()
        # Nothing corrupted on disk: every object file is complete, no temp files linger (checked
        # after the stop: before it, a retried write may have its temp file open).
        names = [n for n in files_under(mnt) if n != ".shmkv.lock"]
        assert all(not pathlib.PurePath(n).name.startswith(".shmkv-tmp-") for n in names), names
        for n in names:
            assert (mnt / n).stat().st_size == MiB
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
    # Not l2_available == 0 here: on a loaded machine the restart may already have happened.
    st = c.stats()
    assert st["l2_worker_deaths"] == 1, st
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
                        str(tmp_path / "s.sock"), "--disk-direct", "on"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "need --disk-dir" in r.stderr, r.stderr
    r = subprocess.run([server_bin, "--pool-size", "8MiB", "--shm-name", segment_name, "--socket",
                        str(tmp_path / "s.sock"), "--disk-dir", str(tmp_path / "d"), "--disk-direct", "yes"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "--disk-direct: 'yes' is not auto, on or off" in r.stderr, r.stderr
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
        # Each request is bounded by the client's 10 s timeout: answered at all = not blocked on the disk.
        for i in range(10, 22):  # 12 MiB through an 8 MiB pool while at most 4 writes hang
            assert b.put(b"y%d" % i, payload(i, MiB)) is not False
            assert sha(b.get(b"y%d" % i)) == sha(payload(i, MiB))
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


# ---- Review findings (docs/l2-tier.md): each test failed before its fix. ----

def test_load_of_a_batch_does_not_evict_a_later_l1_key_of_the_batch(l2, shmkv_module, tmp_path):
    """Finding 1: h is on disk only, t is dirty in L1 at the front of the LRU; loading h for
    prepare_retrieve([h, t]) must not evict t to make room."""
    import threading

    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="8MiB")
    c = client(shmkv_module, srv)
    c.put(b"h", payload(0, MiB))
    settled(c)
    for i in range(8):  # h is pushed out of L1 (clean: it is on disk)
        c.put(b"x%d" % i, payload(10 + i, MiB))
        settled(c)
    assert c.lookup([b"h"]) == 1 and c.stats()["l2_hits"] == 1  # on disk only
    worker = worker_pid(srv)
    os.kill(worker, signal.SIGSTOP)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("views", c2.prepare_retrieve([b"h", b"t"])))
    c2 = client(shmkv_module, srv)
    try:
        for i in range(4):  # four writes hang: io-pinned
            c.put(b"w%d" % i, payload(20 + i, MiB))
        c.put(b"t", payload(1, MiB))  # dirty, queued behind them
        for i in range(5, 8):  # the remaining x's are more recent than t: t is the LRU front
            assert c.get(b"x%d" % i) is not None
        st = c.stats()
        assert st["l2_dirty_objects"] == 1 and st["l2_evicted_dirty"] == 0, st
        t.start()
        wait_for(lambda: c.stats()["l2_loads_in_flight"] == 1, what="the load of h to start")
        st = c.stats()
        assert st["l2_evicted_dirty"] == 0, st  # room for h came from an x, not from t
    finally:
        os.kill(worker, signal.SIGCONT)
    t.join(timeout=15)
    assert not t.is_alive()
    views = got["views"]
    assert views[0] is not None and views[1] is not None, views
    assert sha(views[0]) == sha(payload(0, MiB)) and sha(views[1]) == sha(payload(1, MiB))
    c2.commit_retrieve([b"h", b"t"])
    c.close(), c2.close()


def test_remove_and_clear_while_the_worker_is_down_do_not_come_back(l2, shmkv_module, tmp_path):
    """Finding 3: files dropped while no worker runs are deleted once one runs, or at shutdown."""
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    for k in (b"k1", b"k2", b"k3", b"k4"):
        c.put(k, payload(1, 4096))
    settled(c)
    f1, f2, f3 = file_of(disk, b"k1"), file_of(disk, b"k2"), file_of(disk, b"k3")
    # Worker down, remove; the restarted worker deletes the file.
    os.kill(worker_pid(srv), signal.SIGKILL)
    wait_for(lambda: c.stats()["l2_worker_deaths"] == 1, what="the death")
    assert c.remove([b"k1"]) == ["removed"]
    wait_for(lambda: c.stats()["l2_available"] == 1, what="the restart")
    wait_for(lambda: not f1.exists(), what="k1's file to be deleted by the restarted worker")
    # Worker down again; remove one, clear the rest, stop the server at once (before or after
    # the restart, nothing may come back).
    os.kill(worker_pid(srv), signal.SIGKILL)
    wait_for(lambda: c.stats()["l2_worker_deaths"] == 2, what="the second death")
    assert c.remove([b"k2"]) == ["removed"]
    assert c.clear() == 2  # k3 and k4, each in L1 and on disk: counted once
    srv2 = evict_all_by_restart(l2, disk, srv, c)
    assert not f2.exists() and not f3.exists()
    c2 = client(shmkv_module, srv2)
    assert c2.lookup([b"k1"]) == 0 and c2.lookup([b"k2"]) == 0 and c2.lookup([b"k3"]) == 0
    assert c2.stats()["l2_objects"] == 0
    c2.close()


def test_a_restarted_worker_holds_no_socket_of_the_server(l2, shmkv_module, tmp_path):
    """Finding 4: the worker gets stdin, stdout, stderr and the disk directory's lock (fd 3) only:
    no client socket, no listener."""
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="8MiB")
    c = client(shmkv_module, srv)
    c.put(b"a", payload(1, 4096))
    settled(c)

    def worker_fds():
        pid = worker_pid(srv)
        fd_dir = pathlib.Path(f"/proc/{pid}/fd")
        return {int(p.name): os.readlink(p) for p in fd_dir.iterdir()}

    old = worker_pid(srv)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: c.stats()["l2_worker_deaths"] == 1 and c.stats()["l2_available"] == 1, what="the restart")
    fds = worker_fds()
    assert not [t for t in fds.values() if t.startswith("socket:")], fds
    # The directory's lock only as the documented fd 3 (issue 9 item 11: the worker co-holds it).
    assert [fd for fd, t in fds.items() if t.endswith(".shmkv.lock")] == [3], fds
    assert {0, 1, 2} <= set(fds)
    c.close()


def test_one_unwritable_object_does_not_hold_up_the_others(l2, shmkv_module, tmp_path):
    """Finding 5: a directory squats on one key's file name; its WRITE always fails. It is given
    up on after 3 tries; the other objects are written promptly (no global pause)."""
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    c.put(b"first", payload(0, 4096))
    settled(c)
    ns_dir = file_of(disk, b"first").parent
    (ns_dir / b"bad".hex()).mkdir()
    c.put(b"bad", payload(1, 4096))
    keys = [b"ok-%d" % i for i in range(30)]
    for i, k in enumerate(keys):
        c.put(k, payload(2 + i, 4096))
    st = wait_for(lambda: (lambda s: s if s["l2_objects"] == 31 and s["l2_dirty_objects"] == 0
                                     and s["l2_writes_in_flight"] == 0 else None)(c.stats()),
                  timeout=8, what="the other objects to be written")
    assert st["l2_write_gave_up"] == 1 and st["l2_write_errors"] == 3, st
    assert "given up: the object stays in L1 only" in srv.log()
    assert "write-behind pauses" not in srv.log()
    assert sha(c.get(b"bad")) == sha(payload(1, 4096))  # L1 still serves it
    c.close()


def test_clear_counts_an_object_in_both_tiers_once(l2, shmkv_module, tmp_path):
    """Finding 6: write-through keeps objects in L1 and on disk; clear counts the union."""
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="8MiB")
    c = client(shmkv_module, srv)
    keys = [b"c%d" % i for i in range(10)]
    for i, k in enumerate(keys):  # 10 MiB through 8: the first are on disk only
        c.put(k, payload(i, MiB))
        settled(c)
    st = c.stats()
    assert st["l2_objects"] == 10 and st["objects"] < 10, st
    assert c.clear() == 10
    assert c.lookup(keys) == 0
    st = c.stats()
    assert st["objects"] == 0 and st["l2_objects"] == 0, st
    wait_for(lambda: files_under(disk) == [], what="the files to be deleted")
    c.close()


def test_a_read_error_other_than_a_short_file_keeps_the_file(l2, shmkv_module, tmp_path):
    """Finding 7: only a short or vanished file is dropped; another READ error (here the name is
    briefly a directory) reports missing this time and serves the object once it is readable."""
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    c.put(b"r", payload(5, MiB))
    settled(c)
    srv2 = evict_all_by_restart(l2, disk, srv, c)
    c2 = client(shmkv_module, srv2)
    f = file_of(disk, b"r")
    aside = disk / "aside"
    f.rename(aside)
    f.mkdir()
    assert c2.get(b"r") is None
    st = c2.stats()
    assert st["l2_read_errors"] == 1 and st["l2_objects"] == 1, st
    assert "the file is kept" in srv2.log()
    f.rmdir()
    aside.rename(f)
    assert c2.lookup([b"r"]) == 1
    assert sha(c2.get(b"r")) == sha(payload(5, MiB))
    c2.close()


def test_clear_during_io_in_flight_wins_over_late_replies(l2, shmkv_module, tmp_path):
    """Finding 8: a WRITE or READ that completes after a clear neither indexes the object nor
    commits it into L1."""
    import threading

    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    c.put(b"on-disk", payload(1, MiB))
    settled(c)
    srv2 = evict_all_by_restart(l2, disk, srv, c, "--disk-write-through")
    c2 = client(shmkv_module, srv2)
    reader = client(shmkv_module, srv2)
    worker = worker_pid(srv2)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("v", reader.get(b"on-disk")))
    os.kill(worker, signal.SIGSTOP)
    try:
        c2.put(b"in-flight", payload(2, MiB))  # its WRITE hangs
        t.start()  # its READ hangs
        wait_for(lambda: (lambda s: s["l2_writes_in_flight"] == 1 and s["l2_loads_in_flight"] == 1)(c2.stats()),
                 what="a write and a load in flight")
        c2.clear()
    finally:
        os.kill(worker, signal.SIGCONT)
    t.join(timeout=15)
    assert not t.is_alive() and got["v"] is None  # the load was cancelled by the clear
    st = settled(c2)
    wait_for(lambda: c2.stats()["l2_loads_in_flight"] == 0, what="the load to settle")
    assert c2.lookup([b"in-flight"]) == 0 and c2.lookup([b"on-disk"]) == 0
    st = c2.stats()
    assert st["l2_objects"] == 0 and st["objects"] == 0, st
    wait_for(lambda: files_under(disk) == [], what="no object file left")
    c2.close(), reader.close()


def test_a_second_server_on_the_same_disk_dir_fails_clearly(l2, server_bin, tmp_path, segment_name):
    """Finding 9: the disk directory is locked for the first server's life."""
    disk = tmp_path / "disk"
    l2(disk, pool="8MiB")
    r = subprocess.run([server_bin, "--pool-size", "8MiB", "--shm-name", segment_name + "b", "--socket",
                        str(tmp_path / "second.sock"), "--disk-dir", str(disk)], capture_output=True, text=True,
                       timeout=20)
    assert r.returncode != 0
    assert f"disk dir '{disk}' is in use by another shmkv-server" in r.stderr, r.stderr
    assert str(disk / ".shmkv.lock") in r.stderr


def test_files_larger_than_a_smaller_pool_are_ignored(l2, shmkv_module, tmp_path):
    """Finding 10: after a restart with a smaller pool, a file that cannot fit it is no hit."""
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    c.put(b"big", payload(1, 3 * MiB))
    c.put(b"small", payload(2, MiB))
    settled(c)
    c.close()
    assert srv.stop() == 0
    srv2 = l2(disk, pool="2MiB")
    assert "larger than the pool" in srv2.log()
    c2 = client(shmkv_module, srv2)
    assert c2.lookup([b"big"]) == 0 and c2.lookup([b"small"]) == 1
    assert c2.get(b"big") is None
    assert sha(c2.get(b"small")) == sha(payload(2, MiB))
    assert file_of(disk, b"big").exists()  # not deleted: a bigger pool serves it again
    c2.close()


def test_a_hung_worker_fails_loads_after_the_io_timeout_and_is_restarted(l2, shmkv_module, tmp_path):
    """Finding 11: a stopped worker does not hang a retrieve forever."""
    import threading

    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    c.put(b"k", payload(1, MiB))
    settled(c)
    srv2 = evict_all_by_restart(l2, disk, srv, c, "--disk-io-timeout", "2")
    c2 = client(shmkv_module, srv2)
    worker = worker_pid(srv2)
    os.kill(worker, signal.SIGSTOP)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("v", c2.get(b"k")))
    t.start()
    t.join(timeout=9)  # below the client's 10 s timeout
    assert not t.is_alive() and got["v"] is None
    assert "no reply within 2000 ms" in srv2.log()
    # A stopped worker does not exit by itself: after its grace it is killed (reaped through a pidfd).
    wait_for(lambda: "killed by signal 9" in srv2.log(), what="the hung worker to be killed")
    wait_for(lambda: c2.stats()["l2_available"] == 1, what="the restart")
    assert sha(c2.get(b"k")) == sha(payload(1, MiB))
    assert c2.stats()["l2_worker_deaths"] == 1
    c2.close()


def test_a_client_that_disconnects_during_its_load_leaves_nothing_pinned(l2, shmkv_module, build_dir, tmp_path):
    """A client killed while its prepare_retrieve waits for a disk load: the load settles, its pins
    go with the session, the server keeps serving the object."""
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    c.put(b"k", payload(1, MiB))
    settled(c)
    srv2 = evict_all_by_restart(l2, disk, srv, c)
    c2 = client(shmkv_module, srv2)
    worker = worker_pid(srv2)
    script = (f"import sys; sys.path.insert(0, {str(build_dir / 'python')!r}); import shmkv\n"
              f"c = shmkv.Client({srv2.socket!r}, timeout=60.0, model='llama', world_size=1, rank=0, dtype='bf16', "
              "layout='NHD')\nprint('connected', flush=True)\nc.get(b'k')\n")
    os.kill(worker, signal.SIGSTOP)
    doomed = subprocess.Popen(["/usr/bin/python3", "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert doomed.stdout.readline().strip() == "connected"
        wait_for(lambda: c2.stats()["l2_loads_in_flight"] == 1, what="the load to start")
        doomed.kill()
        doomed.wait(timeout=10)
    finally:
        os.kill(worker, signal.SIGCONT)
    st = wait_for(lambda: (lambda s: s if s["l2_loads_in_flight"] == 0 and s["pinned_objects"] == 0 else None)(
        c2.stats()), what="the load to settle and the pins to go")
    assert st["l2_loads"] == 1 and st["l2_read_errors"] == 0, st
    assert sha(c2.get(b"k")) == sha(payload(1, MiB))
    assert c2.stats()["l2_loads"] == 1  # served from L1 now
    c2.close()


def test_a_killed_server_takes_its_file_worker_along(l2, server_bin, shmkv_module, tmp_path, segment_name):
    """Issue 9 item 11: a SIGKILLed server used to leave its worker running, and the worker went on
    with whatever reached its stdin while a new server already owned the directory. Now the worker
    dies with its server (PR_SET_PDEATHSIG), and it holds the directory's lock itself, so no new
    server can own the directory while an old worker is alive."""
    disk = tmp_path / "disk"
    srv = L2Server(server_bin, tmp_path, segment_name, "16MiB", "--disk-dir", str(disk), "--disk-write-through")
    hold = None
    try:
        c = client(shmkv_module, srv)
        c.put(b"first", payload(0, MiB))
        settled(c)
        obj = file_of(disk, b"first")
        worker = worker_pid(srv)
        # The worker shares the server's lock on the directory (its fd 3) and knows its parent.
        assert os.readlink(f"/proc/{worker}/fd/3") == str(disk / ".shmkv.lock")
        assert f"--parent-pid\0{srv.proc.pid}\0" in pathlib.Path(f"/proc/{worker}/cmdline").read_text()
        # A second writer on the worker's command pipe: the server's death is then no end of input
        # for the worker (as with commands still queued in the pipe), so only its tie to the server
        # can end it. (Not SIGSTOP: a stopped process in an orphaned process group gets SIGHUP.)
        hold = os.open(f"/proc/{worker}/fd/0", os.O_WRONLY)
        c.close()
        srv.proc.kill()
        srv.proc.wait(timeout=10)
        wait_for(lambda: not process_alive(worker), timeout=5, what="the worker to die with its server")
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait(timeout=10)
    before = files_under(disk)
    srv2 = l2(disk, pool="16MiB")  # the directory is free now; the stale segment is cleaned up
    # What an old worker would still run now must not reach the directory the new server owns.
    rel = obj.relative_to(disk).as_posix()
    with contextlib.suppress(BrokenPipeError):
        os.write(hold, f"DELETE {rel}\nWRITE {rel}.x 0 4096\n".encode())
    os.close(hold)
    time.sleep(0.5)
    assert files_under(disk) == before
    c2 = client(shmkv_module, srv2)
    assert sha(c2.get(b"first")) == sha(payload(0, MiB))
    c2.close()


def test_a_retrieve_that_starts_with_a_key_held_nowhere_answers_at_once(l2, shmkv_module, tmp_path):
    """[missing, on disk]: the disk key does not extend the prefix, so nothing is loaded, both keys
    report missing, and the requests behind it are answered in order."""
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", pool="16MiB")
    c = client(shmkv_module, srv)
    c.put(b"on-disk", payload(2, MiB))
    settled(c)
    srv = evict_all_by_restart(l2, disk, srv, c)
    c = client(shmkv_module, srv)
    assert c.prepare_retrieve([b"nowhere", b"on-disk"]) == [None, None]
    assert c.last_statuses == ["missing", "missing"]
    assert c.lookup([b"nowhere", b"on-disk"]) == 0
    # The connection is in step, and the disk object still loads when asked for on its own.
    (view,) = c.prepare_retrieve([b"on-disk"])
    assert sha(view) == sha(payload(2, MiB))
    c.commit_retrieve([b"on-disk"])
    c.close()


def test_padded_objects_come_back_with_their_true_length(l2, shmkv_module, tmp_path):
    """O_DIRECT: objects of any length are written padded with zeros to 4096 under
    `<hex key>.<length>`, and come back with their true length, byte for byte, also after a restart."""
    if not fs_takes_o_direct(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", "--disk-direct", "on", pool="16MiB")
    assert uses_direct_io(srv)
    c = client(shmkv_module, srv)
    keys = [b"p1", b"p5000", b"p4096", b"pMiB+123"]
    sizes = [1, 5000, 4096, MiB + 123]
    for i, k in enumerate(keys):
        c.put(k, payload(i, sizes[i]))
    st = settled(c)
    assert st["l2_objects"] == 4 and st["l2_write_bytes"] == sum(sizes), st
    for i, k in enumerate(keys):
        f = file_of(disk, k)
        name = f.name
        assert name == (k.hex() if sizes[i] % 4096 == 0 else f"{k.hex()}.{sizes[i]}"), name
        data = f.read_bytes()
        assert len(data) == padded(sizes[i])
        assert data[:sizes[i]] == payload(i, sizes[i]) and data[sizes[i]:] == bytes(len(data) - sizes[i])
    c.close()
    assert srv.stop() == 0
    srv2 = l2(disk, pool="16MiB")
    c2 = client(shmkv_module, srv2)
    assert c2.stats()["l2_bytes"] == sum(padded(n) for n in sizes)
    views = c2.prepare_retrieve(keys)
    for i, v in enumerate(views):
        assert v is not None and len(v) == sizes[i] and sha(v) == sha(payload(i, sizes[i]))
    c2.commit_retrieve(keys)
    st = c2.stats()
    assert st["l2_loads"] == 4 and st["l2_load_bytes"] == sum(sizes) and st["l2_read_errors"] == 0, st
    c2.close()


def test_files_of_buffered_servers_load_into_an_o_direct_server(l2, shmkv_module, tmp_path):
    """Files written before padding existed (what --disk-direct off still writes): `<hex key>`,
    exactly the object, any length. An O_DIRECT server indexes and loads them unchanged, and its own
    new files sit beside them."""
    if not fs_takes_o_direct(tmp_path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    disk = tmp_path / "disk"
    srv = l2(disk, "--disk-write-through", "--disk-direct", "off", pool="16MiB")
    assert not uses_direct_io(srv)
    c = client(shmkv_module, srv)
    old_keys, old_sizes = [b"o1", b"o5000", b"oMiB"], [1, 5000, MiB]
    for i, k in enumerate(old_keys):
        c.put(k, payload(i, old_sizes[i]))
    settled(c)
    c.close()
    assert srv.stop() == 0
    assert sorted(f.split("/")[1] for f in files_under(disk)) == sorted(k.hex() for k in old_keys)
    before = {f: (disk / f).read_bytes() for f in files_under(disk)}

    srv2 = l2(disk, "--disk-write-through", pool="16MiB")  # --disk-direct auto
    assert uses_direct_io(srv2)
    assert "3 object(s) (1053577 bytes) indexed" in srv2.log(), srv2.log()
    c2 = client(shmkv_module, srv2)
    c2.put(b"n5000", payload(9, 5000))  # a new, padded file
    settled(c2)
    assert file_of(disk, b"n5000").name == b"n5000".hex() + ".5000"
    views = c2.prepare_retrieve(old_keys + [b"n5000"])
    for i, v in enumerate(views[:3]):
        assert v is not None and len(v) == old_sizes[i] and sha(v) == sha(payload(i, old_sizes[i]))
    assert views[3] is not None and sha(views[3]) == sha(payload(9, 5000))
    c2.commit_retrieve(old_keys + [b"n5000"])
    st = c2.stats()
    assert st["l2_read_errors"] == 0 and st["l2_loads"] == 3, st  # n5000 was still in L1
    c2.close()
    for f, data in before.items():  # the old files are served as they are, not rewritten
        assert (disk / f).read_bytes() == data


def test_o_direct_falls_back_to_buffered_io_where_the_file_system_refuses_it(l2, shmkv_module, server_bin,
                                                                            tmp_path, segment_name):
    """tmpfs (before Linux 6.6) and ramfs refuse O_DIRECT: --disk-direct auto logs it and runs
    buffered, with unpadded files; --disk-direct on refuses to start. On tmpfs that takes O_DIRECT
    (Linux 6.6 on) the server uses it."""
    import tempfile

    def check_dir(d, refuses):
        disk = pathlib.Path(d) / "disk"
        # ramfs reports no free space: the bound is given.
        srv = l2(disk, "--disk-write-through", "--disk-size", "64MiB", pool="8MiB")
        assert uses_direct_io(srv) == (not refuses), srv.log()
        if refuses:
            assert "refuses O_DIRECT" in srv.log() and "using buffered I/O" in srv.log(), srv.log()
        c = client(shmkv_module, srv)
        c.put(b"odd", payload(1, 5000))
        settled(c)
        assert file_of(disk, b"odd").name == (b"odd".hex() if refuses else b"odd".hex() + ".5000")
        c.close()
        assert srv.stop() == 0
        srv2 = l2(disk, "--disk-size", "64MiB", pool="8MiB")
        c2 = client(shmkv_module, srv2)
        got = c2.get(b"odd")
        assert got is not None and len(got) == 5000 and sha(got) == sha(payload(1, 5000))
        assert c2.stats()["l2_loads"] == 1
        c2.close()
        assert srv2.stop() == 0
        if refuses:
            r = subprocess.run([server_bin, "--pool-size", "8MiB", "--shm-name", segment_name + "d", "--socket",
                                str(tmp_path / "direct-on.sock"), "--disk-dir", str(disk), "--disk-direct", "on",
                                "--disk-size", "64MiB"],
                               capture_output=True, text=True, timeout=20)
            assert r.returncode != 0
            assert "refuses O_DIRECT" in r.stderr and "--disk-direct auto or off" in r.stderr, r.stderr

    shm = tempfile.mkdtemp(prefix="shmkv-l2-tmpfs-", dir="/dev/shm")
    try:
        check_dir(shm, refuses=not fs_takes_o_direct(shm))
    finally:
        subprocess.run(["rm", "-rf", shm], check=False)

    # ramfs never takes O_DIRECT: the refusal path runs on every kernel (needs mount rights).
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "ramfs", "-o", "mode=0700", "shmkv-test", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a ramfs to test a file system that refuses O_DIRECT: {r.stderr.strip()}")
    try:
        assert not fs_takes_o_direct(mnt)
        check_dir(mnt, refuses=True)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
