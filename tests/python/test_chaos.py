"""Chaos: real workers SIGKILLed at random points of store/retrieve against a real server.

Every object a worker stores carries its own checksum: the first 32 bytes are the SHA-256 of the
rest, and the rest begins with the object's key. After the chaos the server must hold no
reservation and no pin, its used bytes must be exactly the (slot-rounded) bytes of the objects it
shows, and every object it shows must verify.

Workers are forked from one spawner process (a copy of this file run as a script), so a
replacement worker costs a fork and a registration, not an interpreter start: a few hundred kill
cycles run in well under a minute. SHMKV_CHAOS_CYCLES sets the number of cycles (default 500);
SHMKV_CHAOS_REPORT=path writes the figures (cycles, reclaim latency p50/p99, leaks) as JSON.

Run alone: SHMKV_BUILD_DIR=build /usr/bin/python3 -m pytest -q -s tests/python/test_chaos.py
"""
import hashlib
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time

HEADER = 32  # SHA-256 of the body
KEYSPACE = 256  # keys shared by every worker: they race for the same keys (busy, exists, remove)
MAX_SIZE = 256 << 10  # objects of 100 B .. 256 KiB: a 16 MiB pool evicts all the time
POINTS = ("prepared", "mid-write", "written", "committed", "aborted", "pinned", "mid-read", "read", "removed")


def key_of(i: int) -> bytes:
    return b"k%05d" % i


def make_object(key: bytes, size: int, rng: random.Random) -> bytes:
    body = key + rng.randbytes(size - HEADER - len(key))
    return hashlib.sha256(body).digest() + body


def object_error(key: bytes, data: bytes):
    """None when `data` is a complete object stored under `key`; else what is wrong with it."""
    body = data[HEADER:]
    if not body.startswith(key):
        return f"object {key!r} ({len(data)} B) does not start with its key: {bytes(body[:16])!r}"
    if hashlib.sha256(body).digest() != data[:HEADER]:
        return f"object {key!r} ({len(data)} B) fails its checksum"
    return None


# ---- the worker side (this file run as a script) -------------------------------------------------

def _say(line: str):
    os.write(1, (line + "\n").encode())  # one write: lines of concurrent workers never interleave


def _worker(shmkv, sock: str, seed: int, die_point: str, die_count: int, tolerant: bool):
    """Stores, retrieves and removes random keys forever. Dies by its own SIGKILL at the
    `die_count`-th pass through `die_point` ("-" never), or is killed from outside."""
    pid = os.getpid()
    rng = random.Random(seed)
    remaining = die_count
    ops = 0

    def point(name):
        nonlocal remaining
        # After 200 operations a worker whose point never came dies at the next one.
        if die_point != "-" and (name == die_point or ops > 200):
            remaining -= 1
            if remaining <= 0 or ops > 200:
                _say(f"dying {pid} {time.monotonic():.6f} {name}")
                os.kill(pid, signal.SIGKILL)

    def fail(msg):
        _say(f"error {pid} {msg}")
        os._exit(3)

    def connect():
        while True:
            try:
                return shmkv.Client(sock, timeout=10.0, model="chaos", instance_id=f"chaos-{pid}")
            except shmkv.Error:
                if not tolerant:
                    raise
                time.sleep(0.01)

    c = connect()
    _say(f"ready {pid}")
    while True:
        ops += 1
        keys = list(dict.fromkeys(key_of(rng.randrange(KEYSPACE)) for _ in range(rng.randint(1, 4))))
        r = rng.random()
        try:
            if r < 0.5:
                slots = c.prepare_store(keys, [rng.randint(100, MAX_SIZE) for _ in keys])
                point("prepared")
                mine = []
                for k, s in zip(keys, slots):
                    if s is None:
                        continue
                    data = make_object(k, len(s), rng)
                    view = memoryview(s)
                    view[HEADER:] = data[HEADER:]  # body first: a kill here leaves no valid header
                    point("mid-write")
                    view[:HEADER] = data[:HEADER]
                    mine.append(k)
                point("written")
                if mine:
                    if rng.random() < 0.1:
                        c.abort_store(mine)
                        point("aborted")
                    else:
                        (c.commit_store if rng.random() < 0.5 else c.post_commit_store)(mine)
                        point("committed")
            elif r < 0.92:
                pin = rng.random() < 0.3
                n = c.lookup(keys, pin=pin)
                want = keys[:n] if pin else keys  # a pinned lookup hands its pins to prepare_retrieve
                if not want:
                    continue
                views = c.prepare_retrieve(want)
                point("pinned")
                got = []
                for k, v in zip(want, views):
                    if v is None:
                        if pin:
                            fail(f"{k!r} was pinned by lookup but prepare_retrieve says missing")
                        continue
                    data = bytes(v)
                    point("mid-read")
                    if (err := object_error(k, data)) is not None:
                        fail(err)
                    got.append(k)
                point("read")
                if got:
                    (c.commit_retrieve if rng.random() < 0.5 else c.post_commit_retrieve)(got)
            else:
                c.remove(keys)
                point("removed")
        except shmkv.Error as e:
            # Only the server-restart test sees errors: the calls in flight when the server died.
            if not tolerant:
                fail(repr(e))
            time.sleep(0.01)


def _spawner(build_python: str, sock: str):
    """Forks one worker per `spawn SEED POINT COUNT TOLERANT` line on stdin."""
    sys.path.insert(0, build_python)
    import shmkv  # noqa: PLC0415

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the workers
    for line in sys.stdin:
        _, seed, die_point, die_count, tolerant = line.split()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _worker(shmkv, sock, int(seed), die_point, int(die_count), tolerant == "1")
            except BaseException as e:  # noqa: BLE001 - the child must never return into the spawner
                _say(f"error {os.getpid()} {e!r}")
                code = 3
            os._exit(code)
        _say(f"spawned {pid}")


if __name__ == "__main__":
    _spawner(sys.argv[1], sys.argv[2])
    sys.exit(0)


# ---- the test side -------------------------------------------------------------------------------

import pytest  # noqa: E402

from conftest import ServerProcess  # noqa: E402


class Workers:
    """The spawner and its forked workers (one process group), and the lines they print."""

    def __init__(self, build_dir, sock: str):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(build_dir / "python"), sock],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines = queue.Queue()
        self.pending = []  # lines read while waiting for another one
        self.live = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.split())

    def expect(self, kind: str, pid: int = None, timeout: float = 30.0):
        """Waits for the next `kind` line (of `pid`); fails at once on any worker's error line."""
        deadline = time.monotonic() + timeout
        while True:
            for i, words in enumerate(self.pending):
                if words[0] == "error":
                    pytest.fail(f"worker {words[1]} failed: {' '.join(words[2:])}")
                if words[0] == kind and (pid is None or int(words[1]) == pid):
                    return self.pending.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no '{kind}' line from the workers within {timeout} s")
            try:
                self.pending.append(self.lines.get(timeout=left))
            except queue.Empty:
                pass

    def check_no_errors(self):
        while not self.lines.empty():
            self.pending.append(self.lines.get())
        for words in self.pending:
            if words[0] == "error":
                pytest.fail(f"worker {words[1]} failed: {' '.join(words[2:])}")

    def spawn(self, seed: int, die_point: str = "-", die_count: int = 1, tolerant: bool = False) -> int:
        self.proc.stdin.write(f"spawn {seed} {die_point} {die_count} {int(tolerant)}\n")
        self.proc.stdin.flush()
        pid = int(self.expect("spawned")[1])
        self.expect("ready", pid)
        return pid

    def kill(self, pid: int):
        os.kill(pid, signal.SIGKILL)
        self.live.remove(pid)

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def wait_sessions(c, want: int, timeout: float = 10.0) -> float:
    """Polls stats until the server counts `want` sessions; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        s = c.stats()
        now = time.monotonic()
        if s["sessions"] == want:
            return now
        assert now < deadline, f"the server still counts {s['sessions']} sessions, expected {want}: {s}"
        time.sleep(0.0005)


def verify_pool(c, keys=None) -> dict:
    """With no worker left: no lease is held, used bytes are the visible objects' slots, and every
    visible object verifies. `keys`: every key ever stored (default: the chaos key space).
    Returns the final stats."""
    align = c.info()["alignment"]
    # Slots of expired reservations stay quarantined until their writer's process is gone, which
    # the server learns a moment after the exit.
    deadline = time.monotonic() + 5
    while c.stats().get("quarantined_slots", 0) != 0:
        assert time.monotonic() < deadline, f"quarantined slots outlive their writers: {c.stats()}"
        time.sleep(0.01)
    s = c.stats()
    assert s["reserved_objects"] == 0 and s["pinned_objects"] == 0, s
    keys = [key_of(i) for i in range(KEYSPACE)] if keys is None else keys
    present = [k for k in keys if c.lookup([k]) == 1]
    slot_bytes = 0
    for i in range(0, len(present), 32):
        batch = present[i:i + 32]
        views = c.prepare_retrieve(batch)
        for k, v in zip(batch, views):
            assert v is not None, f"{k!r} is visible to lookup but prepare_retrieve says missing"
            data = bytes(v)
            assert object_error(k, data) is None, object_error(k, data)
            slot_bytes += (len(data) + align - 1) // align * align
        c.commit_retrieve(batch)
    s = c.stats()
    assert s["objects"] == len(present), f"stats count {s['objects']} objects, lookup finds {len(present)}"
    assert s["used_bytes"] == slot_bytes, f"used_bytes {s['used_bytes']} != {slot_bytes} in committed slots"
    assert s["reserved_objects"] == 0 and s["pinned_objects"] == 0, s
    return s


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]  # R, S, T (stopped), ...


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


@pytest.fixture
def chaos_server(server_bin, tmp_path, segment_name):
    s = ServerProcess(server_bin, tmp_path, segment_name, "16MiB")
    yield s
    assert s.stop() == 0


def client(shmkv, sock):
    return shmkv.Client(sock, timeout=10.0, model="chaos", instance_id="observer")


def test_workers_killed_at_random_points_leave_no_leases_and_no_corruption(shmkv_module, chaos_server, build_dir):
    cycles = int(os.environ.get("SHMKV_CHAOS_CYCLES", "500"))
    n_background = 4
    rng = random.Random(20240609)
    c = client(shmkv_module, chaos_server.socket)
    fds_before = open_fds(chaos_server.proc.pid)
    w = Workers(build_dir, chaos_server.socket)
    reclaim, died_at = [], {}
    t_start = time.monotonic()
    try:
        for _ in range(n_background):
            w.live.append(w.spawn(rng.randrange(1 << 30)))
        wait_sessions(c, 1 + n_background)
        for cycle in range(cycles):
            if cycle % 2 == 0:
                # From outside, at a random moment of a busy worker's store/retrieve loop.
                victim = rng.choice(w.live)
                time.sleep(rng.uniform(0, 0.03))
                t0 = time.monotonic()
                w.kill(victim)
                reclaim.append(wait_sessions(c, 1 + len(w.live)) - t0)
                died_at["external"] = died_at.get("external", 0) + 1
                w.live.append(w.spawn(rng.randrange(1 << 30)))
            else:
                # From inside, at a chosen point: between prepare and commit, mid-write, holding pins...
                pid = w.spawn(rng.randrange(1 << 30), rng.choice(POINTS), rng.randint(1, 3))
                words = w.expect("dying", pid)
                died_at[words[3]] = died_at.get(words[3], 0) + 1
                reclaim.append(wait_sessions(c, 1 + n_background) - float(words[2]))
            w.check_no_errors()
        for pid in list(w.live):
            w.kill(pid)
        wait_sessions(c, 1)
        w.check_no_errors()
    finally:
        w.close()
    elapsed = time.monotonic() - t_start
    stats = verify_pool(c)
    fds_after, deadline = open_fds(chaos_server.proc.pid), time.monotonic() + 2
    while fds_after != fds_before and time.monotonic() < deadline:  # a closing socket may lag its session
        time.sleep(0.01)
        fds_after = open_fds(chaos_server.proc.pid)
    assert fds_after == fds_before, f"the server holds {fds_after} fds after the chaos, {fds_before} before"
    figures = {
        "cycles": cycles, "seconds": round(elapsed, 1), "kill_points": died_at,
        "reclaim_ms_p50": round(1e3 * statistics.median(reclaim), 3),
        "reclaim_ms_p99": round(1e3 * percentile(reclaim, 0.99), 3),
        "reclaim_ms_max": round(1e3 * max(reclaim), 3),
        "leaked_reservations": stats["reserved_objects"], "leaked_pins": stats["pinned_objects"],
        "leaked_fds": fds_after - fds_before, "objects": stats["objects"], "used_bytes": stats["used_bytes"],
        "stores": stats["stores"], "retrieves": stats["retrieves"], "evictions": stats["evictions"],
        "expired_leases": stats["expired_leases"],
    }
    print("chaos:", json.dumps(figures))
    if os.environ.get("SHMKV_CHAOS_REPORT"):
        with open(os.environ["SHMKV_CHAOS_REPORT"], "w") as f:
            json.dump(figures, f, indent=1)
    assert stats["stores"] > 0 and stats["retrieves"] > 0  # the workers did work
    assert max(reclaim) < 5.0, figures
    c.close()


STALLED_WRITER = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import shmkv
c = shmkv.Client(sys.argv[2], timeout=10.0, model="chaos", instance_id="stalled")
[slot] = c.prepare_store([b"stalled"], [6 << 20])
assert slot is not None, c.last_statuses
print("reserved", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)  # a worker that hangs between prepare_store and its copy
memoryview(slot)[:] = b"\\xee" * len(slot)  # ...then wakes up and writes its whole slot
try:
    c.commit_store([b"stalled"])
    print("committed", flush=True)
except shmkv.Error as e:
    print("refused", e, flush=True)
"""


def test_a_writer_stalled_past_the_reserve_ttl_never_changes_another_object(shmkv_module, server_bin, tmp_path,
                                                                            segment_name, build_dir):
    srv = ServerProcess(server_bin, tmp_path, segment_name, "8MiB", "--reserve-ttl", "0.3")
    writer = subprocess.Popen([sys.executable, "-c", STALLED_WRITER, str(build_dir / "python"), srv.socket],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "reserved"
        deadline = time.monotonic() + 5
        while process_state(writer.pid) != "T":
            assert time.monotonic() < deadline, "the writer did not stop"
            time.sleep(0.005)
        with client(shmkv_module, srv.socket) as c:
            while c.stats()["expired_leases"] < 1:  # the server gave up on the reservation
                assert time.monotonic() < deadline + 5, c.stats()
                time.sleep(0.02)
            # Another session stores as much as the pool takes: 8 x 1 MiB fills all 8 MiB if the
            # stalled writer's 6 MiB were handed out again.
            rng = random.Random(7)
            keys = [b"other-%d" % i for i in range(8)]
            slots = c.prepare_store(keys, [1 << 20] * 8)
            stored = {}
            for k, s in zip(keys, slots):
                if s is not None:
                    stored[k] = make_object(k, len(s), rng)
                    memoryview(s)[:] = stored[k]
            assert stored, f"nothing could be stored: {c.last_statuses}"
            c.commit_store(list(stored))
            writer.send_signal(signal.SIGCONT)
            out, err = writer.communicate(timeout=20)
            assert writer.returncode == 0, err
            assert out.startswith("refused"), f"the expired reservation was committed: {out}"
            views = c.prepare_retrieve(list(stored))
            damaged = [k.decode() for k, v in zip(stored, views) if object_error(k, bytes(v))]
            c.commit_retrieve(list(stored))
            assert not damaged, (f"{len(damaged)} of {len(stored)} committed objects were overwritten by the "
                                 f"writer whose reservation had expired: {damaged}")
            assert verify_pool(c, keys + [b"stalled"])["objects"] == len(stored)
    finally:
        if writer.poll() is None:
            writer.send_signal(signal.SIGCONT)
            writer.kill()
            writer.wait(timeout=10)
        assert srv.stop() == 0


def call_through_restart(fn, shmkv, timeout=10.0):
    """Runs fn() until it succeeds: the first calls after a server restart report the lost
    connection (and reconnect); until the new server listens, connecting fails."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except shmkv.Error:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_a_server_killed_mid_run_restarts_and_the_workers_reconnect(shmkv_module, server_bin, tmp_path,
                                                                    segment_name, build_dir):
    srv = ServerProcess(server_bin, tmp_path, segment_name, "16MiB")
    old_segment = f"/dev/shm/{srv.name}"
    c = client(shmkv_module, srv.socket)
    w = Workers(build_dir, srv.socket)
    n = 3
    try:
        for i in range(n):
            w.live.append(w.spawn(100 + i, tolerant=True))
        wait_sessions(c, 1 + n)
        time.sleep(0.5)
        old_gen = c.info()["generation"]
        srv.stop(signal.SIGKILL)  # mid-run: reservations, pins and posted commits in flight
        srv.name = f"{segment_name}_b"  # a new segment name; the old one is stale now
        t0 = time.monotonic()
        srv.start()
        assert not os.path.exists(old_segment), "the dead server's segment survived the restart"
        assert os.path.exists(f"/dev/shm/{srv.name}")
        call_through_restart(c.stats, shmkv_module)
        assert c.info()["generation"] != old_gen and c.info()["shm_name"] == srv.name
        reconnected = wait_sessions(c, 1 + n) - t0
        t1 = time.monotonic()
        while c.stats()["stores"] < 20 or c.stats()["retrieves"] < 20:  # the workers work again
            assert time.monotonic() - t1 < 10, c.stats()
            time.sleep(0.02)
        for pid in list(w.live):
            w.kill(pid)
        wait_sessions(c, 1)
        w.check_no_errors()
        verify_pool(c)
        print(f"server restart: all {n} workers reconnected {reconnected * 1e3:.1f} ms after the new server started")
    finally:
        w.close()
        c.close()
        assert srv.stop() == 0
