"""What a new user meets first, for every binary: --version, --help, and a misspelt option."""
import subprocess

import pytest

# Each binary with arguments that are otherwise complete, so the misspelt option is the error.
BINARIES = {"shmkv-server": ("src/shmkv-server", ["--pool-size", "1MiB"]), "shmkv": ("src/shmkv", ["gc"]),
            "shmkv-file-worker": ("src/file_worker/shmkv-file-worker", ["--root", "/tmp"])}


@pytest.mark.parametrize("name", sorted(BINARIES))
def test_version_help_and_a_misspelt_option(build_dir, name):
    path, complete = BINARIES[name]
    binary = str(build_dir / path)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
    assert version.returncode == 0 and version.stdout.startswith(f"{name} 0."), version
    help_ = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=20)
    assert help_.returncode == 0 and "--help" in help_.stdout
    bad = subprocess.run([binary, *complete, "--verison"], capture_output=True, text=True, timeout=20)
    assert bad.returncode == 2 and "--verison" in bad.stderr, bad


# A misspelt required option must be named, not reported as the required one missing; a wrong
# value is a usage error (2) naming its option, as an unknown option is.
MISSPELT_REQUIRED = {"shmkv-server": ["--pool-sise", "1GiB"], "shmkv-file-worker": ["--root-dir", "/tmp"]}
BAD_VALUE = {"shmkv-server": (["--pool-size", "12parsecs"], "--pool-size"),
             "shmkv-file-worker": (["--root", "/tmp", "--queue-depth", "0"], "--queue-depth")}


@pytest.mark.parametrize("name", sorted(MISSPELT_REQUIRED))
def test_a_misspelt_required_option_is_named(build_dir, name):
    binary = str(build_dir / BINARIES[name][0])
    r = subprocess.run([binary, *MISSPELT_REQUIRED[name]], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, r
    assert MISSPELT_REQUIRED[name][0] in r.stderr and "is required" not in r.stderr, r.stderr


@pytest.mark.parametrize("name", sorted(BAD_VALUE))
def test_a_bad_value_exits_2_naming_the_option(build_dir, name):
    binary = str(build_dir / BINARIES[name][0])
    args, option = BAD_VALUE[name]
    r = subprocess.run([binary, *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and option in r.stderr, r
