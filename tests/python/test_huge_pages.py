"""Huge pages for the pool (--huge-pages, --shm-dir; docs/huge-pages.md) on real mounts.

The tests mount a tmpfs with huge=always (and a hugetlbfs, raising vm.nr_hugepages for the time of
the test) in a temp dir; where mounting is not allowed (not root, no CAP_SYS_ADMIN, a container
without the file system) they skip, saying why.
"""
import os
import pathlib
import re
import signal
import subprocess

import pytest

from conftest import start_server

POOL = 64 << 20
MIB = 1 << 20


def _mount(fstype: str, target: pathlib.Path, options: str) -> None:
    target.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", fstype, "-o", options, "none", str(target)], capture_output=True, text=True,
                       timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a {fstype} ({options}) at {target}: {r.stderr.strip() or r.returncode}")


def _umount(target: pathlib.Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


@pytest.fixture
def huge_tmpfs(tmp_path):
    """A tmpfs mounted huge=always, mode 0700."""
    mnt = tmp_path / "huge"
    _mount("tmpfs", mnt, "huge=always,size=256M,mode=0700")
    yield mnt
    _umount(mnt)


@pytest.fixture
def plain_tmpfs(tmp_path):
    """A tmpfs without huge pages (huge=never), mode 0700."""
    mnt = tmp_path / "plain"
    _mount("tmpfs", mnt, "huge=never,size=256M,mode=0700")
    yield mnt
    _umount(mnt)


def _shmem_thp() -> str:
    text = pathlib.Path("/sys/kernel/mm/transparent_hugepage/shmem_enabled").read_text()
    return text[text.index("[") + 1:text.index("]")]


def _nr_hugepages_path() -> pathlib.Path:
    return pathlib.Path("/proc/sys/vm/nr_hugepages")


@pytest.fixture
def hugetlbfs(tmp_path):
    """A hugetlbfs (default 2 MiB pages) with `pages(n)` to make n pages free for the test."""
    nr = _nr_hugepages_path()
    if not nr.exists():
        pytest.skip("the kernel has no hugetlb pages (/proc/sys/vm/nr_hugepages missing)")
    before = int(nr.read_text())
    mnt = tmp_path / "hugetlb"
    _mount("hugetlbfs", mnt, "mode=0700")

    def pages(n: int) -> None:
        meminfo = dict(line.split(":", 1) for line in pathlib.Path("/proc/meminfo").read_text().splitlines())
        free = int(meminfo["HugePages_Free"].split()[0]) - int(meminfo["HugePages_Rsvd"].split()[0])
        target = int(nr.read_text()) + max(0, n - free)
        try:
            nr.write_text(str(target))
        except OSError as e:
            pytest.skip(f"cannot raise nr_hugepages to {target}: {e}")
        got = int(nr.read_text())
        if got < target:
            pytest.skip(f"nr_hugepages stays at {got} (asked {target}): not enough contiguous memory")

    yield mnt, pages
    _umount(mnt)
    try:
        nr.write_text(str(before))
    except OSError:
        pass


def _server(server_bin, tmp_path, name, *extra, pool=f"{POOL}"):
    return start_server(server_bin, ["--pool-size", pool, "--shm-name", name, "--socket", str(tmp_path / f"{name}.sock"),
                                     "--log-level", "info", *extra], stderr=subprocess.PIPE)


def _stop(proc) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    return proc.stderr.read()


def _smaps_entry(pid, path: str) -> dict:
    """The smaps fields (kB) of `pid`'s mapping of `path`."""
    entry, inside = {}, False
    for line in pathlib.Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):  # a mapping's header (anonymous ones have no path)
            if inside:
                break
            inside = len(head) >= 6 and head[5] == path
            continue
        if inside and line.endswith(" kB"):
            key, value = line.split(":", 1)
            entry[key] = int(value.split()[0])
    return entry


def _round_trip(sock: str, sizes) -> dict:
    """Stores objects of `sizes` through a Python client and reads them back byte-identical."""
    import numpy as np

    import shmkv

    rng = np.random.default_rng(len(sizes))
    payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    keys = [f"huge-{i}".encode() for i in range(len(sizes))]
    with shmkv.Client(sock, timeout=10.0, model="huge-pages") as c:
        slots = c.prepare_store(keys, list(sizes))
        assert all(s is not None for s in slots)
        for s, p in zip(slots, payloads):
            s[:] = p
        c.commit_store(keys)
        assert c.lookup(keys) == len(keys)
        views = c.prepare_retrieve(keys)
        for v, p in zip(views, payloads):
            assert bytes(v) == p
        c.commit_retrieve(keys)
        info = c.info()
        info["client_smaps"] = _smaps_entry(os.getpid(), info["shm_path"])
        return info


def test_pool_on_a_huge_tmpfs_gets_huge_pages_and_serves_a_python_client(server_bin, tmp_path, huge_tmpfs,
                                                                         segment_name):
    proc, ready = _server(server_bin, tmp_path, segment_name, "--shm-dir", str(huge_tmpfs), "--huge-pages", "on")
    try:
        path = str(huge_tmpfs / segment_name)
        assert ready.segment == segment_name  # the name keeps its prefix in the directory
        assert ready.huge_page_size == 2 * MIB and ready.huge_pages
        assert os.path.exists(path)
        # In /dev/shm the name is only held (a locked 1-byte file), so a client that ignores
        # shm_path fails there instead of mapping another pool of that name.
        assert os.stat(f"/dev/shm/{segment_name}").st_size == 1
        assert os.stat(path).st_mode & 0o777 == 0o600
        # The kernel agrees: the server's whole mapping is PMD-mapped shmem.
        server_map = _smaps_entry(proc.pid, path)
        assert server_map["ShmemPmdMapped"] * 1024 == POOL, server_map
        info = _round_trip(ready.socket, [MIB, 8 * MIB, 3 * MIB + 17])
        assert info["shm_path"] == path and info["shm_name"] == segment_name
        # The client attached by that path and copies through huge pages too.
        assert info["client_smaps"].get("ShmemPmdMapped", 0) >= 8 * 1024, info["client_smaps"]
    finally:
        err = _stop(proc)
    assert "in 2048 KiB huge pages" in err, err
    assert not os.path.exists(path), "a clean stop unlinks the segment in its directory"
    assert not os.path.exists(f"/dev/shm/{segment_name}"), "and the name it held in /dev/shm"


def test_auto_on_a_mount_without_huge_pages_falls_back_with_a_log_line(server_bin, tmp_path, plain_tmpfs,
                                                                      segment_name):
    if _shmem_thp() in ("force", "always"):
        pytest.skip(f"shmem_enabled is [{_shmem_thp()}]: every tmpfs gets huge pages on this host")
    proc, ready = _server(server_bin, tmp_path, segment_name, "--shm-dir", str(plain_tmpfs))  # auto: the default
    try:
        assert ready.huge_page_size == 0 and not ready.huge_pages
        info = _round_trip(ready.socket, [MIB])
        assert info["shm_path"] == str(plain_tmpfs / segment_name)
    finally:
        err = _stop(proc)
    assert "no huge pages, using 4 KiB pages" in err, err
    assert f"{plain_tmpfs} is a tmpfs mount with huge=never" in err, err


def test_huge_pages_on_without_them_fails_naming_the_mount_and_nr_hugepages(server_bin, tmp_path, plain_tmpfs,
                                                                           segment_name):
    if _shmem_thp() in ("force", "always"):
        pytest.skip(f"shmem_enabled is [{_shmem_thp()}]: every tmpfs gets huge pages on this host")
    r = subprocess.run([server_bin, "--pool-size", f"{POOL}", "--shm-name", segment_name, "--socket",
                        str(tmp_path / "on.sock"), "--shm-dir", str(plain_tmpfs), "--huge-pages", "on"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "ready" not in r.stdout
    assert "--huge-pages on" in r.stderr and str(plain_tmpfs) in r.stderr and "huge=never" in r.stderr, r.stderr
    assert "nr_hugepages to at least" in r.stderr, r.stderr
    assert not os.path.exists(plain_tmpfs / segment_name), "a failed start leaves no segment"


def test_shm_dir_that_is_not_memory_or_open_to_others_is_refused(server_bin, tmp_path, segment_name):
    disk = tmp_path / "ondisk"
    disk.mkdir(mode=0o700)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    for d, why in ((open_dir, "lets other users remove or rename files"), ("/proc", "not in memory")):
        r = subprocess.run([server_bin, "--pool-size", "4MiB", "--shm-name", segment_name, "--socket",
                            str(tmp_path / "x.sock"), "--shm-dir", str(d)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and why in r.stderr, (d, r.stderr)
    r = subprocess.run([server_bin, "--pool-size", "4MiB", "--shm-name", segment_name, "--socket",
                        str(tmp_path / "x.sock"), "--shm-dir", str(disk), "--disk-dir", str(tmp_path / "l2")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--disk-dir cannot be combined with --shm-dir" in r.stderr, r.stderr


def test_hugetlbfs_pool_and_what_too_few_pages_do(server_bin, tmp_path, hugetlbfs, segment_name):
    mnt, pages = hugetlbfs
    need = POOL // (2 * MIB)
    # Too few free pages: `on` fails naming the mount and the nr_hugepages needed; `auto` falls back.
    nr_before = int(_nr_hugepages_path().read_text())
    meminfo = pathlib.Path("/proc/meminfo").read_text()
    free = int(meminfo.split("HugePages_Free:")[1].split()[0]) - int(meminfo.split("HugePages_Rsvd:")[1].split()[0])
    if free < need:
        r = subprocess.run([server_bin, "--pool-size", f"{POOL}", "--shm-name", segment_name, "--socket",
                            str(tmp_path / "tlb.sock"), "--shm-dir", str(mnt), "--huge-pages", "on"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stderr
        assert f"{mnt} is a hugetlbfs mount" in r.stderr and f"raise nr_hugepages to at least {nr_before + need - free}" \
            in r.stderr, r.stderr
        proc, ready = _server(server_bin, tmp_path, segment_name, "--shm-dir", str(mnt))
        try:
            assert ready.huge_page_size == 0
            info = _round_trip(ready.socket, [MIB])
            assert info["shm_path"] == f"/dev/shm/{segment_name}"  # the fallback place
        finally:
            err = _stop(proc)
        assert "creating it in the default place with 4 KiB pages" in err, err

    pages(need)
    proc, ready = _server(server_bin, tmp_path, segment_name, "--shm-dir", str(mnt), "--huge-pages", "on")
    try:
        path = str(mnt / segment_name)
        assert ready.huge_page_size == 2 * MIB
        assert _smaps_entry(proc.pid, path)["KernelPageSize"] == 2048
        info = _round_trip(ready.socket, [MIB, 5 * MIB + 3])
        assert info["shm_path"] == path
        assert info["client_smaps"]["KernelPageSize"] == 2048
    finally:
        _stop(proc)
    assert not os.path.exists(path)


def test_gc_removes_a_killed_servers_segment_from_its_shm_dir(server_bin, shmkv_bin, tmp_path, huge_tmpfs,
                                                              plain_tmpfs, segment_name):
    paths = []
    for i, d in enumerate((huge_tmpfs, plain_tmpfs)):
        name = f"{segment_name}_{i}"
        proc, _ = _server(server_bin, tmp_path, name, "--shm-dir", str(d), "--huge-pages", "auto", pool="8MiB")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        paths.append(str(d / name))
        assert os.path.exists(paths[-1])

    # The huge tmpfs is found among the mounts; the plain one only when named.
    dry = subprocess.run([shmkv_bin, "gc", "--dry-run"], capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert f"stale\t{paths[0]}\t{8 * MIB}" in dry.stdout.splitlines(), dry.stdout
    assert paths[1] not in dry.stdout
    named = subprocess.run([shmkv_bin, "gc", "--dry-run", "--shm-dir", str(plain_tmpfs)], capture_output=True,
                           text=True, timeout=30)
    assert f"stale\t{paths[1]}\t{8 * MIB}" in named.stdout.splitlines(), named.stdout
    assert all(os.path.exists(p) for p in paths), "--dry-run removed a segment"

    real = subprocess.run([shmkv_bin, "gc", "--shm-dir", str(plain_tmpfs)], capture_output=True, text=True, timeout=30)
    assert real.returncode == 0, real.stderr
    for p in paths:
        assert f"removed\t{p}\t{8 * MIB}" in real.stdout.splitlines(), real.stdout
        assert not os.path.exists(p)
        # and the name each held in /dev/shm (a 1-byte file, stale once its server died; the
        # first one's went at the second server's start, which removes stale segments)
        assert not os.path.exists(f"/dev/shm/{os.path.basename(p)}")
    assert f"removed\t{os.path.basename(paths[1])}\t1" in real.stdout.splitlines(), real.stdout


def test_a_server_removes_stale_segments_of_its_shm_dir_at_start(server_bin, tmp_path, plain_tmpfs, segment_name):
    proc, _ = _server(server_bin, tmp_path, segment_name + "_dead", "--shm-dir", str(plain_tmpfs), pool="4MiB")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stale = plain_tmpfs / (segment_name + "_dead")
    assert stale.exists()
    proc, _ = _server(server_bin, tmp_path, segment_name, "--shm-dir", str(plain_tmpfs), pool="4MiB")
    try:
        assert not stale.exists()
    finally:
        err = _stop(proc)
    assert f"removed stale segment '{stale.name}' in {plain_tmpfs}" in err, err
