"""What the reliability and security probes found in the server, each reproduced against a real
server process: leases that expire under a stalled client, memory a few header bytes could claim,
input that must be refused clearly, and who may connect."""
import os
import pathlib
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import ServerProcess, start_server
from test_server import frame, msgpack_map, raw_call

MiB = 1 << 20


def proc_status(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure in bytes (VmRSS, VmHWM, VmPeak...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def short_ttl_server(server_bin, tmp_path, segment_name):
    s = ServerProcess(server_bin, tmp_path, segment_name, "4MiB", "--reserve-ttl", "0.2", "--pin-ttl", "0.2",
                      "--no-prefault")
    yield s
    assert s.stop() == 0


# ---- expired leases (a stalled writer must never corrupt another session's object) ----

def test_a_stalled_writer_never_overwrites_another_sessions_committed_object(shmkv_module, short_ttl_server):
    srv = short_ttl_server
    with shmkv_module.Client(srv.socket, model="m") as stalled, shmkv_module.Client(srv.socket, model="m") as other:
        view = stalled.prepare_store([b"slow"], [MiB])[0]
        assert view is not None
        time.sleep(0.5)  # the writer stalls past --reserve-ttl: its reservation expires
        assert wait_until(lambda: other.stats()["quarantined_slots"] == 1)
        # Another session fills the whole pool: the stalled writer's slot must not be handed out.
        keys = [b"victim-%d" % i for i in range(4)]
        slots = other.prepare_store(keys, [MiB] * 4)
        assert other.last_statuses.count("ok") == 3 and other.last_statuses.count("full") == 1
        written = [k for k, s in zip(keys, slots) if s is not None]
        for k, s in zip(keys, slots):
            if s is not None:
                s[:] = (k * (MiB // len(k) + 1))[:MiB]
        other.commit_store(written)
        # The stalled writer wakes up and writes its whole slot.
        view[:] = b"\xaa" * MiB
        for k in written:
            assert other.get(k) == (k * (MiB // len(k) + 1))[:MiB], f"{k!r} was overwritten"
        # Its commit says the reservation expired, commits nothing, and frees the quarantine.
        with pytest.raises(shmkv_module.Error, match=r"Expired: .*key #0 expired"):
            stalled.commit_store([b"slow"])
        assert other.lookup([b"slow"]) == 0
        st = other.stats()
        assert st["quarantined_slots"] == 0 and st["quarantined_bytes"] == 0
        assert st["used_bytes"] == 3 * MiB


def test_a_reader_whose_pin_expired_is_told_by_commit_retrieve(shmkv_module, short_ttl_server):
    srv = short_ttl_server
    with shmkv_module.Client(srv.socket, model="m") as c:
        c.put(b"a", b"x" * 100)
        c.put(b"b", b"y" * 100)
        c.prepare_retrieve([b"a"])
        time.sleep(0.5)  # the pin expires while the reader "reads"
        c.prepare_retrieve([b"b"])
        with pytest.raises(shmkv_module.Error, match=r"Expired: .*pin of key #0 expired .*must not be used"):
            c.commit_retrieve([b"a", b"b"])
        assert c.stats()["pinned_objects"] == 0  # b's pin was released all the same


def test_a_closed_session_keeps_its_quarantine_until_its_process_exits(shmkv_module, short_ttl_server, build_dir):
    srv = short_ttl_server
    # A worker reserves, stalls past the TTL, closes its connection and lives on (it could still
    # be writing from another thread); the slot is freed only when the process is gone.
    code = f"""
import sys, time
sys.path.insert(0, {str(build_dir / 'python')!r})
import shmkv
c = shmkv.Client({srv.socket!r}, model="m")
c.prepare_store([b"k"], [1 << 20])
time.sleep(0.5)
c.close()
print("closed", flush=True)
sys.stdin.readline()
"""
    worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "closed"
        with shmkv_module.Client(srv.socket, model="m") as observer:
            time.sleep(0.1)
            st = observer.stats()
            assert st["quarantined_slots"] == 1 and st["sessions"] == 1, st
            worker.stdin.write("\n")
            worker.stdin.flush()
            worker.wait(timeout=10)
            assert wait_until(lambda: observer.stats()["quarantined_slots"] == 0)
            assert observer.stats()["used_bytes"] == 0
    finally:
        worker.kill()


# ---- memory a peer can make the server hold ----

def test_length_prefixes_alone_do_not_make_the_server_allocate(shmkv_module, server_bin, tmp_path, segment_name):
    srv = ServerProcess(server_bin, tmp_path, segment_name, "1MiB", "--no-prefault")
    try:
        base = proc_status(srv.proc.pid, "VmRSS")
        conns = []
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX)
            s.connect(srv.socket)
            s.sendall(frame(msgpack_map(id=1, op="register", instance_id="x", namespace={"model": "m"})))
            s.recv(4096)
            s.sendall(struct.pack("<I", 64 * MiB - 1) + b"\x80")  # announces 64 MiB, sends one byte
            conns.append(s)
        time.sleep(0.3)
        grown = proc_status(srv.proc.pid, "VmRSS") - base
        assert grown < 32 * MiB, f"the server grew by {grown} bytes for 20 bare headers"
        with shmkv_module.Client(srv.socket, model="m") as c:  # and it still serves
            c.put(b"k", b"v")
        for s in conns:
            s.close()
    finally:
        assert srv.stop() == 0


def test_an_unregistered_connection_may_send_only_small_frames(server):
    reply = raw_call(server.socket, struct.pack("<I", 1 * MiB) + b"\x80" * 64, expect_close=True)
    assert b"frame length 1048576 is outside 1..65536 (the limit before 'register')" in reply, reply


def test_the_total_of_buffered_requests_is_bounded(shmkv_module, server_bin, tmp_path, segment_name):
    srv = ServerProcess(server_bin, tmp_path, segment_name, "1MiB", "--no-prefault", "--max-frame", str(4 * MiB),
                        "--max-buffered", "6MiB")
    try:
        conns = []
        for i in range(3):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(srv.socket)
            s.sendall(frame(msgpack_map(id=1, op="register", instance_id=f"c{i}", namespace={"model": "m"})))
            s.recv(4096)
            conns.append(s)
        # Each connection sends 3 MiB of a 4 MiB frame; together they would buffer 9 MiB.
        closed = 0
        for s in conns:
            try:
                s.sendall(struct.pack("<I", 4 * MiB) + b"\x80" * (3 * MiB))
            except (BrokenPipeError, ConnectionResetError):
                pass
        time.sleep(0.3)
        for s in conns:
            try:
                data = s.recv(4096)
            except (socket.timeout, ConnectionResetError):
                continue
            if b"request buffers are full" in data:
                closed += 1
        assert closed >= 1
        assert srv.proc.poll() is None
        with shmkv_module.Client(srv.socket, model="m") as c:  # a fresh client is served
            c.put(b"k", b"v")
            assert c.get(b"k") == b"v"
        for s in conns:
            s.close()
    finally:
        assert srv.stop() == 0


# Counts an allocator can satisfy (2^26 elements, 1.5 GiB of msgpack objects each) grow the
# server's memory when the unpacker reserves them up front; 2^32 - 1 would just fail to allocate.
@pytest.mark.parametrize("body", [
    # 14 bytes: a map whose "keys" is an array declaring 2^26 elements.
    b"\x81\xa4keys\xdd\x04\x00\x00\x00" + b"\x00" * 4,
    # 3 KB of nested array headers, each declaring 2^26 elements.
    b"\xdd\x04\x00\x00\x00" * 600,
    # a map declaring 2^26 fields.
    b"\xdf\x04\x00\x00\x00\xa2id\x01",
], ids=["array-in-14-bytes", "nested-3KB", "map"])
def test_container_counts_are_bounded_before_allocation(server, body):
    peak = proc_status(server.proc.pid, "VmPeak")
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(server.socket)
    s.sendall(frame(body))
    reply = s.recv(4096)
    s.close()
    assert b"\xa2ok\xc2" in reply and b"exceeds a protocol limit" in reply, reply
    grown = proc_status(server.proc.pid, "VmPeak") - peak
    assert grown < 256 * MiB, f"VmPeak grew by {grown} bytes"
    assert server.proc.poll() is None


def test_namespace_fields_are_bounded_and_the_salt_is_never_logged(shmkv_module, server_bin, tmp_path, segment_name):
    srv, _ = start_server(server_bin, ["--pool-size", "1MiB", "--no-prefault", "--shm-name", segment_name,
                                       "--socket", str(tmp_path / "s.sock"), "--log-level", "info"],
                          stderr=subprocess.PIPE)
    try:
        sock = str(tmp_path / "s.sock")
        with pytest.raises(shmkv_module.Error, match=r"namespace.salt is 300 bytes; at most 256"):
            shmkv_module.Client(sock, model="m", salt="s" * 300)
        with pytest.raises(shmkv_module.Error, match=r"namespace.model is 1000 bytes; at most 256"):
            shmkv_module.Client(sock, model="m" * 1000)
        with shmkv_module.Client(sock, model="m", salt="TENANT-SECRET-SALT") as c:
            c.put(b"k", b"v")
    finally:
        srv.terminate()
        _, err = srv.communicate(timeout=10)
    assert "registered" in err
    assert "TENANT-SECRET-SALT" not in err, err
    assert "salt=18 bytes" in err


def test_many_namespaces_leave_nothing_behind(shmkv_module, server_bin, tmp_path, segment_name):
    srv = ServerProcess(server_bin, tmp_path, segment_name, "1MiB", "--no-prefault")
    try:
        with shmkv_module.Client(srv.socket, model="warm") as c:
            c.put(b"k", b"v")
        base = proc_status(srv.proc.pid, "VmRSS")
        for i in range(40):  # 1 MiB salts: refused, and nothing of them kept
            with pytest.raises(shmkv_module.Error):
                shmkv_module.Client(srv.socket, model="m", salt=f"{i}" + "x" * MiB)
        for i in range(300):
            with shmkv_module.Client(srv.socket, model="m", salt=f"tenant-{i}-" + "x" * 200):
                pass
        grown = proc_status(srv.proc.pid, "VmRSS") - base
        assert grown < 4 * MiB, grown
        with shmkv_module.Client(srv.socket, model="warm") as c:  # the same namespace finds its object
            assert c.get(b"k") == b"v"
    finally:
        assert srv.stop() == 0


# ---- input that must be refused, with clear errors ----

@pytest.mark.parametrize("bad_id", ["text", -1, True, [1], None])
def test_a_request_id_of_the_wrong_type_is_a_protocol_error_and_runs_nothing(shmkv_module, server, bad_id):
    with shmkv_module.Client(server.socket, model="m") as c:
        c.put(b"keep", b"v")
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(server.socket)

    def call(body):
        s.sendall(frame(body))
        n = struct.unpack("<I", s.recv(4))[0]
        out = b""
        while len(out) < n:
            out += s.recv(n - len(out))
        return out

    assert b"\xa2ok\xc3" in call(msgpack_map(id=1, op="register", instance_id="raw", namespace={"model": "m"}))
    body = msgpack_map(op="clear") if bad_id is None else msgpack_map(id=bad_id, op="clear")
    reply = call(body)
    assert b"\xa2ok\xc2" in reply and b"Protocol" in reply and b"'id'" in reply, reply
    s.close()
    with shmkv_module.Client(server.socket, model="m") as c:
        assert c.get(b"keep") == b"v"  # the clear did not run


def test_a_float_id_is_rejected(server):
    body = b"\x82\xa2id\xcb" + struct.pack(">d", 1.5) + b"\xa2op\xa6health"
    reply = raw_call(server.socket, frame(body))
    assert b"\xa2ok\xc2" in reply and b"'id' must be a non-negative integer" in reply, reply


def test_an_unknown_operation_is_not_echoed_raw(server):
    op = b"\xff\xfe\x00evil"
    body = b"\x82\xa2id\x07\xa2op\xc4" + bytes([len(op)]) + op
    reply = raw_call(server.socket, frame(body))
    assert b"unknown operation" in reply and op not in reply, reply
    assert b"\\xff\\xfe\\x00evil" in reply, reply


def test_bytes_after_the_request_are_an_error(server):
    reply = raw_call(server.socket, frame(msgpack_map(id=3, op="health") + b"\x01\x02"))
    assert b"\xa2ok\xc2" in reply and b"2 bytes follow the request" in reply, reply


def test_an_error_names_its_operation_once(shmkv_module, server):
    with shmkv_module.Client(server.socket, model="m") as c:
        with pytest.raises(shmkv_module.Error) as e:
            c.commit_store([b"never"])
        assert str(e.value).count("commit_store") == 1, str(e.value)


def test_registering_twice_on_one_connection_is_refused(server):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(server.socket)
    reg = frame(msgpack_map(id=1, op="register", instance_id="raw", namespace={"model": "m"}))
    s.sendall(reg)
    assert b"\xa2ok\xc3" in s.recv(4096)
    s.sendall(reg)
    assert b"registered already" in s.recv(4096)
    s.close()


# ---- who may connect, and where the socket lives ----

def test_the_default_socket_directory_refuses_a_directory_others_can_write(server_bin, tmp_path, segment_name):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    os.chmod(runtime, 0o777)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    r = subprocess.run([server_bin, "--pool-size", "1MiB", "--no-prefault", "--shm-name", segment_name], env=env,
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1
    assert f"socket directory '{runtime}'" in r.stderr and "mode 777" in r.stderr, r.stderr
    os.chmod(runtime, 0o700)
    srv = subprocess.Popen([server_bin, "--pool-size", "1MiB", "--no-prefault", "--shm-name", segment_name],
                           env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        assert f"socket={runtime}/shmkv.sock" in line, line
    finally:
        srv.terminate()
        assert srv.wait(timeout=10) == 0


def test_the_default_socket_without_xdg_lives_in_a_private_directory(server_bin, segment_name):
    private = f"/tmp/shmkv-{os.geteuid()}"
    if os.path.exists(f"{private}/shmkv.sock"):
        pytest.skip(f"a server may be using {private}/shmkv.sock")
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    srv = subprocess.Popen([server_bin, "--pool-size", "1MiB", "--no-prefault", "--shm-name", segment_name],
                           env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        assert f"socket={private}/shmkv.sock" in line, line
        st = os.lstat(private)
        assert st.st_uid == os.geteuid() and (st.st_mode & 0o777) == 0o700
    finally:
        srv.terminate()
        assert srv.wait(timeout=10) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user")
def test_a_member_of_the_group_through_a_supplementary_group_may_connect_with_mode_660(
        server_bin, tmp_path, segment_name, build_dir):
    import tempfile
    reachable = tempfile.mkdtemp(dir="/tmp")  # pytest's tmp_path sits below a 0700 directory
    os.chmod(reachable, 0o755)
    srv = ServerProcess(server_bin, pathlib.Path(reachable), segment_name, "1MiB", "--no-prefault",
                        "--socket-mode", "660")
    try:
        os.chown(srv.socket, 0, os.getegid())
        code = f"""
import socket, struct
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect({srv.socket!r})
s.sendall({frame(msgpack_map(id=1, op='health'))!r})
print(s.recv(4096))
"""

        def as_nobody_with_group(group):
            def demote():
                os.setgroups([group])
                os.setgid(65534)
                os.setuid(65534)
            return subprocess.run([sys.executable, "-c", code], preexec_fn=demote, capture_output=True, text=True,
                                  timeout=20)

        member = as_nobody_with_group(os.getegid())
        assert "serving" in member.stdout, member.stdout + member.stderr
        stranger = as_nobody_with_group(12345)
        assert "serving" not in stranger.stdout
    finally:
        assert srv.stop() == 0
        os.rmdir(reachable)
