"""scripts/install-deps.sh waits, bounded and saying so, while another process holds an apt/dpkg
lock (instead of failing at once with apt's exit 100). A real fcntl lock (as apt and dpkg take
them) on a stand-in lock file; the apt commands are printed, not run (SHMKV_INSTALL_DEPS_DRY_RUN)."""
import os
import pathlib
import subprocess
import sys
import time

SCRIPT = pathlib.Path(__file__).parents[2] / "scripts" / "install-deps.sh"

HOLDER = """
import fcntl, sys, time
f = open(sys.argv[1], "w")
fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold(path, seconds):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def run_script(lock, timeout_s):
    env = dict(os.environ, SHMKV_APT_LOCKS=str(lock), SHMKV_APT_LOCK_TIMEOUT=str(timeout_s),
               SHMKV_INSTALL_DEPS_DRY_RUN="1", SHMKV_SKIP_TORCH="1",
               SHMKV_EXTRA_PACKAGES="shmkv-test-package-that-is-not-installed")
    start = time.monotonic()
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    return r, time.monotonic() - start


def test_waits_for_a_held_lock_then_installs(tmp_path):
    lock = tmp_path / "lock-frontend"
    holder = hold(lock, 2.5)
    try:
        r, took = run_script(lock, 60)
    finally:
        holder.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    assert f"waiting for another package manager: {lock} is held by pid {holder.pid}" in r.stderr
    assert "the package locks are free after" in r.stderr
    assert took >= 1.5
    assert "would run: apt-get -o DPkg::Lock::Timeout=60 update" in r.stderr
    assert "shmkv-test-package-that-is-not-installed" in r.stderr


def test_gives_up_after_the_timeout_naming_the_holder(tmp_path):
    lock = tmp_path / "lock"
    holder = hold(lock, 60)
    try:
        r, took = run_script(lock, 2)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1
    assert f"{lock} is still held by pid {holder.pid} (python3) after 2 s" in r.stderr, r.stderr
    assert "would run" not in r.stderr  # apt was never started
    assert 2 <= took < 30


def test_a_free_lock_costs_no_wait(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("")
    r, took = run_script(lock, 60)
    assert r.returncode == 0, r.stderr
    assert "waiting" not in r.stderr
    assert took < 10
