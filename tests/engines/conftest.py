"""Fixtures of the engine-adapter tests (run with the interpreters of scripts/engines-venv.sh).

They need the built module and server (SHMKV_BUILD_DIR, default build/) and start a private
shmkv-server per test on a Unix socket in tmp_path.
"""
import itertools
import os
import pathlib
import sys

import pytest

BUILD = pathlib.Path(os.environ.get("SHMKV_BUILD_DIR", pathlib.Path(__file__).parents[2] / "build")).resolve()
sys.path.insert(0, str(BUILD / "python"))
from shmkv.server import start_server  # noqa: E402

_counter = itertools.count()


class Server:
    def __init__(self, tmp_path, pool_size="256MiB"):
        name = f"lmcache_l1_pool_eng{os.getpid()}_{next(_counter)}"
        self.socket = str(tmp_path / f"{name}.sock")
        self.proc, _ = start_server(str(BUILD / "src" / "shmkv-server"), ["--pool-size", pool_size, "--shm-name", name,
                                                                          "--socket", self.socket, "--log-level", "warn"])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    assert s.stop() == 0
