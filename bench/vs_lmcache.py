#!/usr/bin/python3
"""shmkv side by side with LMCache 0.5.6's multiprocess server (its shared-memory transport).

Measured so far: start time (launch until the control endpoint accepts a connection and the pool
segment exists) and server memory (private RssAnon and the pool's RssShmem, from /proc) of each
server with the same pool size. NOT measured yet (issue 14 part 0 asks for them): store and
retrieve GB/s for 1 and 8 MiB chunks and a 4,096-token prompt, lookup p50/p99, 8 concurrent
workers, and how long a SIGKILLed worker's reservations take to be reclaimed: those need LMCache's
engine-driven client (EngineDrivenContextShm over its ZMQ request client) driven at the demo's
chunk geometry, which this script does not do yet.

Needs LMCache in a venv of its own: scripts/setup-lmcache-venv.sh (about 7 GiB, 8 minutes).

  /usr/bin/python3 bench/vs_lmcache.py [--lmcache-venv build-lmcache-venv] [--pool-gib 1] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def memory(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def wait_port(port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LMCache server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"LMCache server did not listen on {port} in time")


def start_lmcache(python: str, pool_gib: int, port: int, name: str, log) -> tuple[float, dict, subprocess.Popen]:
    t0 = time.monotonic()
    proc = subprocess.Popen([python, "-m", "lmcache.v1.multiprocess.server", "--l1-size-gb", str(pool_gib),
                             "--no-l1-use-lazy", "--eviction-policy", "LRU", "--shm-name", name,
                             "--supported-transfer-mode", "engine_driven", "--port", str(port),
                             "--disable-observability"], stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, proc, t0 + 300)
    seg = pathlib.Path("/dev/shm") / f"lmcache_l1_pool_{name}"
    while not seg.exists():
        if time.monotonic() > t0 + 300 or proc.poll() is not None:
            raise RuntimeError(f"LMCache server never created {seg}")
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    time.sleep(1.0)  # let it finish what it does right after binding
    return elapsed, memory(proc.pid), proc


def start_shmkv(server: str, pool_gib: int, sock: str) -> tuple[float, dict, subprocess.Popen]:
    t0 = time.monotonic()
    proc = subprocess.Popen([server, "--pool-size", f"{pool_gib}GiB", "--socket", sock, "--log-level", "warn"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("shmkv-server ready"):
        raise RuntimeError(f"shmkv-server did not start: {line!r}")
    elapsed = time.monotonic() - t0
    time.sleep(1.0)
    return elapsed, memory(proc.pid), proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lmcache-venv", default=str(ROOT / "build-lmcache-venv"))
    p.add_argument("--server", default=str(pathlib.Path(os.environ.get("SHMKV_BUILD_DIR", ROOT / "build"))
                                         / "src" / "shmkv-server"))
    p.add_argument("--pool-gib", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--port", type=int, default=5597)
    a = p.parse_args()
    python = pathlib.Path(a.lmcache_venv) / "bin" / "python"
    if not python.exists():
        print(f"vs_lmcache: no LMCache venv at {a.lmcache_venv}: run scripts/setup-lmcache-venv.sh", file=sys.stderr)
        return 2
    rows = {"shmkv": [], "lmcache": []}
    with tempfile.TemporaryDirectory(prefix="vs-lmcache-") as tmp:
        for r in range(a.rounds):
            t, mem, proc = start_shmkv(a.server, a.pool_gib, f"{tmp}/shmkv.sock")
            stop(proc)
            rows["shmkv"].append((t, mem))
            with open(f"{tmp}/lmcache-{r}.log", "w") as log:
                t, mem, proc = start_lmcache(str(python), a.pool_gib, a.port, f"vs{os.getpid()}_{r}", log)
                stop(proc)
            rows["lmcache"].append((t, mem))
    print(f"pool {a.pool_gib} GiB, {a.rounds} rounds, medians")
    print("| server | start (s) | private memory RssAnon (MiB) | pool mapped RssShmem (MiB) |")
    print("|---|---|---|---|")
    for name, vals in rows.items():
        t = statistics.median(v[0] for v in vals)
        anon = statistics.median(v[1].get("RssAnon", 0) for v in vals) / 2**20
        shm = statistics.median(v[1].get("RssShmem", 0) for v in vals) / 2**20
        print(f"| {name} | {t:.3f} | {anon:.1f} | {shm:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
