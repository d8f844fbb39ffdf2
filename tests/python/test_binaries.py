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
