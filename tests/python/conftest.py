"""Shared fixtures: where the built binaries are, and unique segment names."""
import itertools
import os
import pathlib

import pytest

_counter = itertools.count()
BUILD_DIR = pathlib.Path(os.environ.get("SHMKV_BUILD_DIR", pathlib.Path(__file__).parents[2] / "build"))


def start_server(binary, args, **popen_kwargs):
    """shmkv.server.start_server from the build tree: the one way the tests start a server process."""
    import sys

    if str(BUILD_DIR / "python") not in sys.path:
        sys.path.insert(0, str(BUILD_DIR / "python"))
    from shmkv.server import start_server as start

    return start(binary, args, **popen_kwargs)


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an orphan may wait for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="session")
def build_dir() -> pathlib.Path:
    path = BUILD_DIR
    if not (path / "src" / "shmkv").exists():
        pytest.fail(f"shmkv is not built in {path}; set SHMKV_BUILD_DIR")
    return path


@pytest.fixture(scope="session")
def shmkv_bin(build_dir) -> str:
    return str(build_dir / "src" / "shmkv")


@pytest.fixture(scope="session")
def holder_bin(build_dir) -> str:
    return str(build_dir / "tests" / "segment_holder")


@pytest.fixture
def segment_name() -> str:
    return f"lmcache_l1_pool_py{os.getpid()}_{next(_counter)}"


class ServerProcess:
    """A real shmkv-server on a private socket and segment, stopped with SIGTERM at teardown."""

    log_level = "warn"

    def __init__(self, binary: str, tmp_path: pathlib.Path, name: str, pool_size: str, *extra: str):
        self.binary, self.socket, self.name = binary, str(tmp_path / f"{name}.sock"), name
        self.pool_size, self.extra = pool_size, extra
        self.proc = None
        self.start()

    def start(self):
        self.proc, self.ready = start_server(
            self.binary, ["--pool-size", self.pool_size, "--shm-name", self.name, "--socket", self.socket,
                          "--log-level", self.log_level, *self.extra], **self.popen_kwargs())
        return self

    def popen_kwargs(self) -> dict:
        return {}

    def stop(self, sig=None):
        import signal

        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
            self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture(scope="session")
def server_bin(build_dir) -> str:
    # SHMKV_SERVER_BIN lets the suite drive another build of the server (e.g. the ASan one).
    return os.environ.get("SHMKV_SERVER_BIN", str(build_dir / "src" / "shmkv-server"))


@pytest.fixture
def shmkv_module(build_dir):
    import sys

    sys.path.insert(0, str(build_dir / "python"))
    import shmkv  # noqa: PLC0415

    return shmkv


@pytest.fixture
def server(server_bin, tmp_path, segment_name):
    s = ServerProcess(server_bin, tmp_path, segment_name, "64MiB")
    yield s
    # A clean exit also means no sanitizer report when SHMKV_SERVER_BIN is an ASan build.
    assert s.stop() == 0
