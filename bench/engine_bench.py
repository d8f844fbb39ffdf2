#!/usr/bin/python3
"""End-to-end store and retrieve of one prompt through shmkv-server with shmkv.KVConnector.

Geometry of the demo (8 layers, 8 KV heads, head size 128, bfloat16, block 16, chunk 256: 8 MiB
per chunk); a 4096-token prompt is 16 chunks = 128 MiB. Baseline in the same process: one memcpy of
the same bytes (numpy copyto between two warm 128 MiB buffers). Reports medians of --reps runs.

    /usr/bin/python3 bench/engine_bench.py [--build-dir build] [--tokens 4096] [--reps 15]
"""
import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build-dir", default=str(ROOT / "build"))
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="kernel threads (0: automatic)")
    a = p.parse_args()
    sys.path.insert(0, str(pathlib.Path(a.build_dir) / "python"))
    import numpy as np
    import torch
    import shmkv

    layers, heads, head, block, chunk = 8, 8, 128, 16, 256
    nblocks = a.tokens // block
    kv = [torch.randn(2, nblocks, block, heads, head, dtype=torch.bfloat16) for _ in range(layers)]
    dst = [torch.zeros_like(t) for t in kv]
    blocks = list(np.random.default_rng(0).permutation(nblocks))
    nbytes = a.tokens // chunk * shmkv.chunk_nbytes(kv, chunk_tokens=chunk)

    sock = tempfile.mkdtemp() + "/bench.sock"
    srv = subprocess.Popen([f"{a.build_dir}/src/shmkv-server", "--pool-size", "1GiB", "--socket", sock,
                            "--log-level", "warn"], stdout=subprocess.PIPE, text=True)
    assert srv.stdout.readline().startswith("shmkv-server ready")
    try:
        conn = shmkv.KVConnector(sock, model="bench", dtype="bfloat16", chunk_tokens=chunk, threads=a.threads)
        src_buf, dst_buf = np.ones(nbytes, np.uint8), np.zeros(nbytes, np.uint8)
        store_s, retrieve_s, memcpy_s = [], [], []
        for rep in range(a.reps + 1):
            tokens = list(range(rep * a.tokens, (rep + 1) * a.tokens))  # fresh keys each time
            t0 = time.perf_counter()
            r = conn.store(tokens, kv, blocks)
            t1 = time.perf_counter()
            n = conn.retrieve(tokens, dst, blocks)
            t2 = time.perf_counter()
            np.copyto(dst_buf, src_buf)
            t3 = time.perf_counter()
            assert r.stored_chunks == a.tokens // chunk and n == a.tokens
            conn.client.remove(conn.chunk_keys(tokens))
            if rep:  # the first round warms page tables and the kernel pool
                store_s.append(t1 - t0), retrieve_s.append(t2 - t1), memcpy_s.append(t3 - t2)
        assert all(torch.equal(x, y) for x, y in zip(kv, dst))
        conn.close()
    finally:
        srv.terminate()
        srv.wait()
    ms = lambda v: statistics.median(v) * 1e3  # noqa: E731
    gbs = lambda v: nbytes / statistics.median(v) / 1e9  # noqa: E731
    print(f"prompt {a.tokens} tokens = {a.tokens // chunk} chunks = {nbytes / 2**20:.0f} MiB, threads={a.threads or 'auto'},"
          f" medians of {a.reps}")
    print(f"  memcpy baseline   {ms(memcpy_s):7.2f} ms  {gbs(memcpy_s):6.2f} GB/s")
    print(f"  store  (gather)   {ms(store_s):7.2f} ms  {gbs(store_s):6.2f} GB/s  = {gbs(store_s) / gbs(memcpy_s):.2f}x memcpy")
    print(f"  retrieve (scatter){ms(retrieve_s):7.2f} ms  {gbs(retrieve_s):6.2f} GB/s  = "
          f"{gbs(retrieve_s) / gbs(memcpy_s):.2f}x memcpy")


if __name__ == "__main__":
    main()
