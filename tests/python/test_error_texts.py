"""Error texts name their operation exactly once (issue: `prepare_store: prepare_store: ...`), for
direct calls, posted commits, timeouts and lost connections, against a real server."""
import os
import re
import signal

import pytest

OPS = ("register", "lookup", "prepare_store", "commit_store", "abort_store", "prepare_retrieve", "commit_retrieve",
       "remove", "clear", "stats", "health", "put", "get", "connect")


def client(shmkv, server, **kw):
    kw.setdefault("timeout", 5.0)
    return shmkv.Client(server.socket, model="llama", dtype="bfloat16", layout="NHD", **kw)


def assert_named_once(text, op):
    assert re.search(rf"\b{op}\b", text), f"{op!r} is not named: {text!r}"
    for name in OPS:
        n = len(re.findall(rf"(?<![\w.]){name}: ", text))
        assert n <= 1, f"{name!r} repeated in {text!r}"
    # The code word (InvalidArgument, Timeout, ...) once, at most.
    first = text.split(":", 1)[0]
    assert text.count(first + ":") == 1, text


def error_of(shmkv, f):
    with pytest.raises(shmkv.Error) as e:
        f()
    return str(e.value)


def test_direct_and_posted_errors_name_the_operation_once(shmkv_module, server):
    s = shmkv_module
    with client(s, server) as c:
        cases = [
            ("prepare_store", lambda: c.prepare_store([b"a", b"b"], [1])),
            ("prepare_store", lambda: c.prepare_store([b"a"], [0])),
            ("prepare_store", lambda: c.prepare_store([b"x" * 65], [1])),
            ("commit_store", lambda: c.commit_store([b"never-prepared"])),
            ("commit_retrieve", lambda: c.commit_retrieve([b"never-retrieved"])),
            ("lookup", lambda: c.lookup([b""])),
            ("prepare_retrieve", lambda: c.prepare_retrieve([b"x" * 65])),
        ]
        for op, f in cases:
            assert_named_once(error_of(s, f), op)
        c.post_commit_store([b"never-prepared-either"])
        assert_named_once(error_of(s, c.sync), "commit_store")


def test_timeouts_and_lost_connections_name_the_operation_once(shmkv_module, server):
    s = shmkv_module
    with client(s, server, timeout=0.3) as c:
        c.lookup([b"warm"])
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            text = error_of(s, lambda: c.lookup([b"a"]))
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert "timed out after 300 ms" in text
        assert_named_once(text, "lookup")
        server.stop()
        text = error_of(s, lambda: c.prepare_store([b"a"], [4096]))
        assert_named_once(text, "prepare_store")
        server.start()  # the fixture's teardown stops it again
