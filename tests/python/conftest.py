"""Shared fixtures: where the built binaries are, and unique segment names."""
import itertools
import os
import pathlib

import pytest

_counter = itertools.count()


@pytest.fixture(scope="session")
def build_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("SHMKV_BUILD_DIR", pathlib.Path(__file__).parents[2] / "build"))
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
