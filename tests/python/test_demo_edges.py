"""The demo's rough edges a new user hit: bad counts, --quick over explicit options, temporary
directories left behind, a reused --disk-dir, Ctrl-C. Real runs of scripts/demo.py --quick."""
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "scripts" / "demo.py")


def demo(build_dir, tmp_path, *extra, timeout=300):
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(["/usr/bin/python3", DEMO, "--quick", "--no-progress", "--build-dir", str(build_dir),
                           "--output-dir", str(tmp_path), *extra], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.mark.parametrize("flag", ["--workers", "--conversations", "--turns"])
def test_zero_counts_are_usage_errors_not_hangs(build_dir, tmp_path, flag):
    out = demo(build_dir, tmp_path, flag, "0", timeout=30)
    assert out.returncode == 2
    assert f"{flag} must be at least 1, not 0" in out.stderr


def test_quick_keeps_explicit_options_cleans_up_and_says_when_l2_holds_an_earlier_run(build_dir, tmp_path):
    pytest.importorskip("torch")
    disk = tmp_path / "l2"
    out = demo(build_dir, tmp_path, "--workers", "1", "--pool-size=4MiB", "--disk-dir", str(disk))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pool_size=4194304" in out.stdout  # not --quick's 2MiB
    assert re.search(r"^\s+1 workers,", out.stdout, re.M), out.stdout
    assert "already holds" not in out.stdout
    kept = re.search(r"L2 files kept\s+(\d+) files, .* in " + re.escape(str(disk)), out.stdout)
    assert kept and int(kept.group(1)) > 0, out.stdout
    assert list((tmp_path / "tmp").iterdir()) == []  # no empty shmkv-demo-* left behind

    again = demo(build_dir, tmp_path, "--workers", "1", "--disk-dir", str(disk))
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(rf"note: {re.escape(str(disk))} already holds {kept.group(1)} L2 file\(s\)", again.stdout), \
        again.stdout


def test_ctrl_c_stops_everything_once_without_tracebacks(build_dir, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    # Its own process group, which the test signals as a terminal's Ctrl-C does.
    proc = subprocess.Popen(["/usr/bin/python3", DEMO, "--quick", "--no-progress", "--conversations", "4000",
                             "--build-dir", str(build_dir), "--output-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    line = proc.stdout.readline()
    assert line.startswith("shmkv demo: shmkv-server ready:"), line
    time.sleep(3.0)  # the workers play requests, with thousands queued: the moment that hung
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the demo did not stop after one Ctrl-C")
    assert proc.returncode == 130, out + err
    # Each worker stops after the request it is playing, not after the thousands still queued.
    assert time.monotonic() - t0 < 15
    assert "Traceback" not in err, err
    assert "interrupted (Ctrl-C); workers and server stopped" in err
    segment = re.search(r"segment=(\S+)", line).group(1)
    assert f"segment {segment} removed" in err
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_ctrl_c_while_the_workers_boot_prints_no_traceback(build_dir, tmp_path, delay):
    pytest.importorskip("torch")
    proc = subprocess.Popen(["/usr/bin/python3", DEMO, "--quick", "--no-progress", "--build-dir", str(build_dir),
                             "--output-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    assert line.startswith("shmkv demo: shmkv-server ready:"), line
    time.sleep(delay)  # the workers are being spawned or are importing torch
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the demo did not stop after one Ctrl-C")
    assert "Traceback" not in err, err
    # Interrupted (130), or finished before the signal came (0): never a crash.
    assert proc.returncode in (0, 130), out + err
