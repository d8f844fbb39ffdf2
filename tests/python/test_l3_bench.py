"""bench/l3_bench.py --quick (issue 11's L3 benchmark) runs end to end on a real Redis Cluster and
two real shmkv-servers: exit 0 (every store written to Redis, every chunk retrieved through the
other node from Redis with the right bytes, every lookup case counted from the tier it names),
both ratios printed, and nothing it started left running. Skipped when Redis is not installed."""
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import process_alive

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_l3_bench_quick(build_dir, tmp_path):
    missing = [t for t in ("redis-server", "redis-cli", "redis-benchmark") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/install-deps.sh installs redis-server and "
                    f"redis-tools)")
    out = tmp_path / "l3.json"
    env = dict(os.environ, SHMKV_BUILD_DIR=str(build_dir))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "l3_bench.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=240, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-6000:]}"

    # The table: one row for the quick run's size, with both ratios shmkv/redis-benchmark.
    assert "shmkv/redis-benchmark" in r.stdout, r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("| 2MiB |")]
    assert len(rows) == 1, r.stdout
    assert len(re.findall(r"\| \d+\.\d\dx (ok|below) ", rows[0])) == 2, rows[0]

    report = json.loads(out.read_text())
    assert report["ok"] is True
    t = report["throughput"]["2MiB"]
    assert t["ratio_store_vs_set"] > 0 and t["ratio_retrieve_vs_get"] > 0
    (rnd,) = t["rounds"]
    assert rnd["store"]["written"] + rnd["store"]["skipped_exists"] == report["chunks"]
    assert rnd["retrieve"]["l3_loads"] == rnd["retrieve"]["verified"] == report["chunks"]
    cases = report["lookup_latency"]
    assert {"L1 only", "L2 only", "L3 only, new to B (asks Redis)"} <= set(cases), cases
    for name, c in cases.items():
        assert 0 < c["p50_ms"] <= c["p99_ms"], (name, c)
    assert cases["L3 only, new to B (asks Redis)"]["hits_per_lookup"]["l3_hits"] == 32

    # Everything it started is gone: the shmkv-servers and every Redis node (its port is free).
    assert report["server_pids"] and report["redis_ports"]
    assert not [p for p in report["server_pids"] if process_alive(p)]
    for port in report["redis_ports"]:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"a redis-server still answers on port {port}"
