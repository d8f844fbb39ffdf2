"""Whom a worker trusts: its own user's (or root's) server, and a pool no other user can access."""
import os
import socket

import pytest


def test_a_world_accessible_segment_is_refused_and_accepted_once_private(shmkv_module, server):
    path = f"/dev/shm/{server.name}"
    os.chmod(path, 0o606)
    try:
        with pytest.raises(shmkv_module.Error) as exc:
            shmkv_module.Client(server.socket, timeout=5.0)
        msg = str(exc.value)
        assert server.name in msg and "mode 0606" in msg and f"uid {os.geteuid()}" in msg
    finally:
        os.chmod(path, 0o600)
    with shmkv_module.Client(server.socket, timeout=5.0) as c:  # the happy path
        assert c.info()["shm_name"] == server.name
        assert c.put(b"k", b"v")


@pytest.mark.skipif(os.geteuid() != 0, reason="a listener of another uid needs root to set up")
def test_a_socket_bound_by_another_user_is_refused_before_anything_is_sent(shmkv_module, tmp_path):
    path = str(tmp_path / "squatted.sock")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the squatter: user nobody, listening where the server would be
        code = 1
        try:
            os.close(r)
            s = socket.socket(socket.AF_UNIX)
            s.bind(path)  # as root, in the private tmp_path; the kernel records the uid at listen()
            os.setgid(65534)
            os.setuid(65534)
            s.listen(4)
            os.write(w, b"r")
            conn, _ = s.accept()
            conn.settimeout(10)
            code = 0 if conn.recv(1) == b"" else 6  # 0: the client hung up without sending
        finally:
            os._exit(code)
    os.close(w)
    assert os.read(r, 1) == b"r"
    os.close(r)
    with pytest.raises(shmkv_module.Error) as exc:
        shmkv_module.Client(path, timeout=5.0)
    msg = str(exc.value)
    assert path in msg and "runs as uid 65534" in msg and "this process as uid 0" in msg
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the client sent the squatter something"
