"""Strided paged-KV kernels against a plain memcpy of the same bytes (docs/performance.md).

A 4,096-token prompt (16 chunks of 256 tokens), 8 layers, 8 KV heads, head size 128, fp16 (8 MiB
per chunk, 128 MiB per transfer) in vLLM 0.33's default per-layer view (LBNHC: [B, H, N, 2D]
strided views of one buffer), blocks of 16 tokens in shuffled order. Reports the best of N runs
of gather (cache -> chunks) and scatter (chunks -> cache) as a ratio of memcpy's throughput on
the same bytes (goal >= 0.8x), and the contiguous-NHD kernels for comparison.

Usage: SHMKV_BUILD_DIR=build /usr/bin/python3 bench/strided_kv_bench.py [--runs N] [--threads T]
"""
import argparse
import os
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(os.environ.get("SHMKV_BUILD_DIR", "build")).resolve() / "python"))
import torch  # noqa: E402

import shmkv  # noqa: E402
from shmkv._transfer import logical_view  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--runs", type=int, default=5)
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
L, H, D, N, CHUNK, TOKENS = 8, 8, 128, 16, 256, 4096
B = TOKENS // N + 32
buf = torch.randn(L, B, N, H, 2 * D).half()  # LBNHC: [L, B, N, H, C]
layers = [buf[l].permute(0, 2, 1, 3) for l in range(L)]  # vLLM's logical [B, H, N, C] per layer
views = [logical_view(t, block_size=N, num_kv_heads=H, head_size=D) for t in layers]
nhd = [torch.randn(2, B, N, H, D).half() for _ in range(L)]
blocks = list(range(B))
random.Random(1).shuffle(blocks)
chunks = list(range(TOKENS // CHUNK))
nbytes = shmkv.chunk_nbytes_strided(views, chunk_tokens=CHUNK)
out = [torch.empty(nbytes, dtype=torch.uint8) for _ in chunks]
src = torch.empty(nbytes * len(chunks), dtype=torch.uint8)
dst = torch.empty_like(src)
total = nbytes * len(chunks)


def best(fn):
    ts = []
    for _ in range(a.runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


torch.set_num_threads(1)
memcpy = best(lambda: dst.copy_(src))
g = best(lambda: shmkv._native.gather_strided(views, blocks, chunks, out, chunk_tokens=CHUNK, threads=a.threads))
s = best(lambda: shmkv._native.scatter_strided(out, views, blocks, 0, chunk_tokens=CHUNK, threads=a.threads))
gn = best(lambda: shmkv.gather(nhd, blocks, chunks, out, layout="NHD", chunk_tokens=CHUNK, threads=a.threads))
gib = total / 2**30
print(f"bytes per transfer: {total / 2**20:.0f} MiB; threads {a.threads}; best of {a.runs}")
print(f"memcpy                 {gib / memcpy:6.2f} GiB/s")
print(f"gather strided LBNHC   {gib / g:6.2f} GiB/s  {memcpy / g:.2f}x memcpy")
print(f"scatter strided LBNHC  {gib / s:6.2f} GiB/s  {memcpy / s:.2f}x memcpy")
print(f"gather contiguous NHD  {gib / gn:6.2f} GiB/s  {memcpy / gn:.2f}x memcpy")
