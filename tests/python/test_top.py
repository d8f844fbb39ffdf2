"""`shmkv top` against a real server: plain lines when piped, a redrawn screen on a terminal."""
import json
import os
import pty
import select
import subprocess
import threading
import time

import numpy as np


def client(shmkv, server):
    return shmkv.Client(server.socket, timeout=5.0, model="llama", dtype="bfloat16", layout="NHD")


def top_once(shmkv_bin, server):
    return subprocess.run([shmkv_bin, "top", "--socket", server.socket, "--iterations", "1"], capture_output=True,
                          text=True, timeout=20)


def test_top_prints_once_for_scripts(shmkv_bin, shmkv_module, server):
    with client(shmkv_module, server) as c:
        c.put(b"a", b"x" * 4096)
        out = top_once(shmkv_bin, server)
    alone = top_once(shmkv_bin, server)  # the client is gone
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout
    assert lines[0].split()[:5] == ["time", "lookup/s", "store/s", "retr/s", "hit%"]
    assert "\x1b[" not in out.stdout  # not a terminal: no escape sequences
    fields = lines[1].split()
    assert fields[1:4] == ["-", "-", "-"]  # one sample: no rates yet
    # sessions: the client above, counted while it was connected (top's own query is one too).
    assert int(fields[-1]) == int(alone.stdout.splitlines()[1].split()[-1]) + 1


def test_top_rates_come_from_successive_stats(shmkv_bin, shmkv_module, server):
    proc = subprocess.Popen([shmkv_bin, "top", "--socket", server.socket, "--iterations", "3", "--interval", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def traffic():
        with client(shmkv_module, server) as c:
            i = 0
            while not stop.is_set():
                key = b"k%d" % i
                c.put(key, b"y" * 4096)
                c.lookup([key, b"missing"])
                i += 1
                time.sleep(0.005)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        stop.set()
        t.join()
    assert proc.returncode == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    assert len(rows) == 3
    lookups_per_s = [float(r[1]) for r in rows[1:]]
    stores_per_s = [float(r[2]) for r in rows[1:]]
    assert all(x > 5 for x in lookups_per_s), out
    assert all(x > 5 for x in stores_per_s), out
    # Half of the keys looked up exist (each lookup asks for a stored key and a missing one). The
    # hit rate needs the server to report the keys it was asked for (lookup_keys); without them
    # top shows "-" rather than a figure it cannot compute.
    stats = json.loads(subprocess.run([shmkv_bin, "stats", "--socket", server.socket, "--json"], capture_output=True,
                                      text=True, timeout=10, check=True).stdout)
    hit = [r[4] for r in rows[1:]]
    if "lookup_keys" in stats:
        assert all(40 <= float(h.rstrip("%")) <= 60 for h in hit), out
    else:
        assert hit == ["-", "-"], out


def test_top_redraws_in_place_on_a_terminal(shmkv_bin, server):
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(shmkv_bin, [shmkv_bin, "top", "--socket", server.socket, "--iterations", "2", "--interval", "0.2"])
    data = b""
    deadline = time.time() + 20
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 1)
        if not r:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    text = data.decode()
    assert text.count("\x1b[H\x1b[2J") == 2, text  # each sample redraws the screen from the top
    assert "shmkv top" in text and server.socket in text
    assert "L1" in text and "64.0 MiB" in text  # the pool's capacity


def test_top_names_the_problem_when_no_server_runs(shmkv_bin, tmp_path):
    out = subprocess.run([shmkv_bin, "top", "--socket", str(tmp_path / "none.sock"), "--iterations", "1"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    assert out.stderr.startswith("shmkv top: ") and "none.sock" in out.stderr
    bad = subprocess.run([shmkv_bin, "top", "--interval", "0"], capture_output=True, text=True, timeout=20)
    assert bad.returncode == 2  # a usage error
