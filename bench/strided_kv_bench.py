"""Strided paged-KV kernels against a plain memcpy of the same bytes (docs/performance.md).

A 4,096-token prompt (16 chunks of 256 tokens), 8 layers, 8 KV heads, head size 128, fp16 (8 MiB
per chunk, 128 MiB per transfer) in vLLM 0.33's default per-layer view (LBNHC: [B, H, N, 2D]
strided views of one buffer), blocks of 16 tokens in shuffled order. Reports the best of N runs
of gather (cache -> chunks) and scatter (chunks -> cache) as a ratio of memcpy's throughput on
the same bytes (glibc's memcpy through ctypes; goal >= 0.8x), the same for SGLang's page_first host pool (2, tokens, L, H, D)
with 64-token pages, and the contiguous-NHD kernel for comparison. The copies take turns within
each round (memcpy, then each kernel), so that load from other processes on the machine falls on
all of them alike; each figure is the best round.

Usage: SHMKV_BUILD_DIR=build /usr/bin/python3 bench/strided_kv_bench.py [--runs N] [--threads T]
"""
import argparse
import ctypes
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
P = 64  # SGLang page_first: (2, size, L, H, D); per layer the logical view [2, pages, P, H, D]
pages = TOKENS // P + 8
sg = torch.randn(2, pages * P, L, H, D).half()
sg_views = [sg[:, :, l].unflatten(1, (pages, P)) for l in range(L)]
sg_pages = list(range(pages))
random.Random(2).shuffle(sg_pages)
chunks = list(range(TOKENS // CHUNK))
nbytes = shmkv.chunk_nbytes_strided(views, chunk_tokens=CHUNK)
out = [torch.empty(nbytes, dtype=torch.uint8) for _ in chunks]
src = torch.empty(nbytes * len(chunks), dtype=torch.uint8)
dst = torch.empty_like(src)
total = nbytes * len(chunks)


T = a.threads
libc = ctypes.CDLL(None)
libc.memcpy.restype = ctypes.c_void_p
libc.memcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
copies = {
    "memcpy": lambda: libc.memcpy(dst.data_ptr(), src.data_ptr(), total),  # glibc's, the baseline
    "torch copy_": lambda: dst.copy_(src),
    "gather strided LBNHC": lambda: shmkv.gather_strided(views, blocks, chunks, out, chunk_tokens=CHUNK, threads=T),
    "scatter strided LBNHC": lambda: shmkv.scatter_strided(out, views, blocks, 0, chunk_tokens=CHUNK, threads=T),
    "gather SGLang page_first": lambda: shmkv.gather_strided(sg_views, sg_pages, chunks, out, chunk_tokens=CHUNK,
                                                             threads=T),
    "scatter SGLang page_first": lambda: shmkv.scatter_strided(out, sg_views, sg_pages, 0, chunk_tokens=CHUNK,
                                                               threads=T),
    "gather contiguous NHD": lambda: shmkv.gather(nhd, blocks, chunks, out, layout="NHD", chunk_tokens=CHUNK, threads=T),
}
torch.set_num_threads(1)
times = {name: [] for name in copies}
for _ in range(a.runs):
    for name, fn in copies.items():
        t = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t)
best = {name: min(ts) for name, ts in times.items()}
gib = total / 2**30
print(f"bytes per transfer: {total / 2**20:.0f} MiB; threads {T}; best of {a.runs} rounds")
for name, t in best.items():
    print(f"{name:26s} {gib / t:6.2f} GiB/s  {best['memcpy'] / t:.2f}x memcpy")
