#!/usr/bin/env python3
"""Instructions the server executes for one fixed workload, counted by callgrind: a comparison of
two builds that a loaded machine cannot blur (timings on a shared 2-core VM vary by 20% from run to
run; instruction counts by < 0.1%).

    /usr/bin/python3 bench/server_instructions.py BUILD_DIR [BUILD_DIR ...]

Each build's shmkv-server runs under valgrind --tool=callgrind while this script, through that
build's Python module, sends: 2,000 one-key lookups, 1,000 one-key store pairs (prepare+commit),
1,000 one-key retrieve pairs, and 20 rounds of a 256-key store, commit and remove. It prints the
total instructions of each server (start-up included, the same for every build) and the ratio to
the first build. `--with-args "--metrics-address 127.0.0.1:0"` also runs each build with those server
options, so their cost shows against the same build without them.
"""
import argparse
import os
import pathlib
import signal
import subprocess
import sys
import tempfile

WORKLOAD = r"""
import sys
sys.path.insert(0, sys.argv[1])
import shmkv
c = shmkv.Client(sys.argv[2], timeout=120.0, model="m")
for i in range(2000):
    c.lookup([b"x%d" % (i % 7)])
for i in range(1000):
    k = [b"s%d" % i]
    c.prepare_store(k, [4096]); c.commit_store(k)
for i in range(1000):
    k = [b"s%d" % i]
    c.prepare_retrieve(k); c.commit_retrieve(k)
batch = [b"b%d" % i for i in range(256)]
for _ in range(20):
    c.prepare_store(batch, [4096] * 256); c.commit_store(batch); c.remove(batch)
c.close()
"""


def count(build: pathlib.Path, work: pathlib.Path, extra=()) -> int:
    out = work / f"callgrind.{os.getpid()}.{build.name}.out"
    sock = work / "s.sock"
    server = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                               str(build / "src" / "shmkv-server"), "--pool-size", "64MiB", "--no-prefault",
                               "--socket", str(sock), "--log-level", "warn", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    if "ready" not in line:
        server.kill()
        sys.exit(f"server_instructions: {build} did not start: {line!r}")
    subprocess.run(["/usr/bin/python3", "-c", WORKLOAD, str(build / "python"), str(sock)], check=True,
                   env={**os.environ, "SHMKV_LOG_LEVEL": "warn"})
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)
    for l in out.read_text().splitlines():
        if l.startswith("summary:") or l.startswith("totals:"):
            return int(l.split()[1])
    sys.exit(f"server_instructions: no totals in {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", type=pathlib.Path)
    ap.add_argument("--with-args", default=None,
                    help="extra server options: each build runs once without them and once with them")
    args = ap.parse_args()
    variants = [("", ())] + ([(" " + args.with_args, tuple(args.with_args.split()))] if args.with_args else [])
    with tempfile.TemporaryDirectory(prefix="shmkv-ir-") as work:
        counts = [(f"{b}{label}", count(b.resolve(), pathlib.Path(work), extra))
                  for b in args.builds for label, extra in variants]
    base = counts[0][1]
    for b, n in counts:
        print(f"{b:40s} {n:>14,} instructions  {n / base:.4f}x")


if __name__ == "__main__":
    main()
