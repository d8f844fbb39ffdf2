"""`shmkv gc` against real segments owned by real processes."""
import os
import signal
import subprocess
from multiprocessing import resource_tracker, shared_memory

import pytest


def dev_shm(name: str) -> str:
    return os.path.join("/dev/shm", name)


def start_holder(holder_bin: str, name: str, size: int = 1 << 20) -> subprocess.Popen:
    proc = subprocess.Popen([holder_bin, name, str(size)], stdout=subprocess.PIPE, text=True)
    reported = proc.stdout.readline().strip()
    assert reported == name, f"holder reported {reported!r}"
    return proc


def gc(shmkv_bin: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([shmkv_bin, "gc", *args], capture_output=True, text=True, timeout=30)


def test_gc_lists_then_removes_the_segment_of_a_killed_owner(shmkv_bin, holder_bin, segment_name):
    proc = start_holder(holder_bin, segment_name, 3 << 20)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert os.path.exists(dev_shm(segment_name))

    dry = gc(shmkv_bin, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"stale\t{segment_name}\t{3 << 20}" in dry.stdout.splitlines()
    assert os.path.exists(dev_shm(segment_name)), "--dry-run removed a segment"

    real = gc(shmkv_bin)
    assert real.returncode == 0, real.stderr
    assert f"removed\t{segment_name}\t{3 << 20}" in real.stdout.splitlines()
    assert not os.path.exists(dev_shm(segment_name))


def test_gc_keeps_a_live_owners_segment_and_unprefixed_segments(shmkv_bin, holder_bin, segment_name):
    proc = start_holder(holder_bin, segment_name)
    foreign = shared_memory.SharedMemory(name=f"not_ours_{os.getpid()}", create=True, size=4096)
    try:
        out = gc(shmkv_bin)
        assert out.returncode == 0, out.stderr
        assert segment_name not in out.stdout
        assert foreign.name not in out.stdout
        assert os.path.exists(dev_shm(segment_name))
        assert os.path.exists(dev_shm(foreign.name))
    finally:
        foreign.close()
        foreign.unlink()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    # A clean stop unlinks the segment.
    assert not os.path.exists(dev_shm(segment_name))


def test_a_python_worker_attaches_by_the_reported_name_without_owning_it(holder_bin, segment_name):
    proc = start_holder(holder_bin, segment_name, 2 << 20)
    try:
        shm = shared_memory.SharedMemory(name=segment_name, create=False)
        # Python 3.11 tracks attached segments too and would unlink the server's segment at exit;
        # a worker must opt out (the bug LMCache hit in seed 000).
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
        assert shm.size >= 2 << 20
        shm.buf[:4] = b"abcd"
        shm.close()
        assert os.path.exists(dev_shm(segment_name))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_gc_rejects_unknown_options(shmkv_bin):
    out = gc(shmkv_bin, "--bogus")
    assert out.returncode != 0
    assert "--bogus" in out.stderr
