#!/usr/bin/python3
"""The shmkv demo: a server, several simulated inference-engine workers, multi-turn chats.

Started by scripts/demo.sh (which installs and builds first). It

1. starts shmkv-server on a private socket with embedded defaults (only the pool size is given);
2. starts N worker processes, each an "engine" with a paged KV cache (per layer
   [2, num_blocks, block_size, kv_heads, head_size], bfloat16 by default) and a shmkv.KVConnector;
3. plays multi-turn conversations that share system prompts: for every request a worker looks up
   the prompt, retrieves the stored prefix into freshly allocated (scattered) blocks, checks every
   retrieved element against the values it must have, "computes" the rest, and stores the whole
   sequence; the next turn of the conversation goes to whichever worker is free;
4. shows a progress bar, prints a summary, writes a PNG chart, stops the server and checks that
   no segment is left behind.

With `--engine vllm` each worker plays its requests through the vLLM adapter instead
(shmkv.vllm.ShmkvConnector, docs/vllm.md): the scheduler-side calls (get_num_new_matched_tokens,
update_state_after_alloc, build_connector_meta), the metadata pickled as across vLLM's process
boundary, the worker-side calls (bind, start_load_kv, the per-layer hooks, wait_for_save,
get_finished, get_block_ids_with_load_errors, clear) and request_finished, with small stand-ins
for vLLM's config, Request and SchedulerOutput (vLLM itself is not needed).

Any wrong byte makes the demo fail (exit 1). Run `scripts/demo.sh --help` for the knobs.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pathlib
import pickle
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args(argv):
    p = argparse.ArgumentParser(description="shmkv end-to-end demo: simulated vLLM workers sharing a KV cache.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--build-dir", default=str(ROOT / "build"), help="where shmkv is built")
    p.add_argument("--output-dir", default=str(ROOT / "demo-output"), help="where the PNG chart goes")
    p.add_argument("--workers", type=int, default=2, help="worker processes (engine ranks of separate instances)")
    p.add_argument("--conversations", type=int, default=24, help="conversations to play")
    p.add_argument("--turns", type=int, default=4, help="turns per conversation")
    p.add_argument("--system-prompts", type=int, default=4, help="distinct system prompts the conversations share")
    p.add_argument("--system-tokens", type=int, default=1536, help="tokens per system prompt")
    p.add_argument("--user-tokens", type=int, default=384, help="mean tokens of a user message")
    p.add_argument("--reply-tokens", type=int, default=256, help="mean tokens of a model reply")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-size", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--pool-size", default="1GiB", help="shmkv pool size (smaller than the working set: eviction shows)")
    p.add_argument("--disk-dir", default=None,
                   help="give the server an L2 disk tier in this directory: evicted chunks come back from disk")
    p.add_argument("--nodes", type=int, default=1,
                   help="shmkv servers standing for GPU nodes, sharing chunks through a local 3-master Redis "
                        "Cluster (the L3 tier, started and stopped by the demo); workers are spread over the nodes, "
                        "so a turn played on another node than the last one finds its prefix in L3")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--engine", choices=["shmkv", "vllm"], default="shmkv",
                   help="the workers' API: shmkv.KVConnector, or the vLLM adapter's call sequence")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast run (used by the test suite); options given explicitly still apply")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    a = p.parse_args(argv)
    if a.quick:
        # The small run's values, except where the command line gave one (--quick --workers 4).
        given = {act.dest for act in p._actions for arg in argv for opt in act.option_strings
                 if arg == opt or arg.startswith(opt + "=")}
        quick = dict(workers=2, conversations=6, turns=3, system_prompts=2, system_tokens=256, user_tokens=96,
                     reply_tokens=64, layers=2, kv_heads=2, head_size=64, chunk_tokens=64, pool_size="2MiB")
        for dest, value in quick.items():
            if dest not in given:
                setattr(a, dest, value)
    for name in ("workers", "conversations", "turns", "system_prompts", "layers", "kv_heads", "head_size",
                 "block_size", "chunk_tokens", "nodes"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, not {getattr(a, name)}")
    if a.chunk_tokens % a.block_size:
        p.error("--chunk-tokens must be a multiple of --block-size")
    if a.workers < a.nodes:
        p.error(f"--nodes {a.nodes} needs at least as many workers (--workers {a.workers})")
    return a


# ---- the simulated engine (runs in worker processes) ------------------------------------------

class Engine:
    """A paged KV cache and the values a real model would have computed into it.

    The value of an element depends on its chunk's key and on its position inside the chunk, so
    a chunk scattered to the wrong blocks, heads, layers or offsets is caught on the next retrieve.
    """

    def __init__(self, args, torch):
        self.torch, self.args = torch, args
        dtype = getattr(torch, args.dtype)
        self.block, self.chunk = args.block_size, args.chunk_tokens
        self.bpc = self.chunk // self.block
        longest = args.system_tokens + args.turns * 2 * (args.user_tokens + args.reply_tokens) + self.chunk
        self.num_blocks = 2 * (longest // self.block + 1)
        shape = (2, self.num_blocks, self.block, args.kv_heads, args.head_size)
        self.kv = [torch.zeros(shape, dtype=dtype) for _ in range(args.layers)]
        # Small integers: exact in bfloat16 (8 significant bits) as long as they stay below 256.
        kv = torch.arange(2).view(2, 1, 1, 1, 1)
        pos = torch.arange(self.chunk).view(1, self.bpc, self.block, 1, 1)
        head = torch.arange(args.kv_heads).view(1, 1, 1, -1, 1)
        dim = torch.arange(args.head_size).view(1, 1, 1, 1, -1)
        self.pattern = ((kv * 61 + pos * 13 + head * 7 + dim) % 128).to(dtype)
        self.rng = random.Random(os.getpid())

    def allocate(self, tokens):
        """A block table for `tokens` tokens: scattered, like a long-running engine's free list."""
        need = -(-tokens // self.block)
        return self.rng.sample(range(self.num_blocks), need)

    def _expected(self, key, layer):
        return self.pattern + float((key[0] + 3 * layer) % 120)

    def compute(self, keys, block_ids, first_chunk):
        """'Prefill': writes the KV of every full chunk from first_chunk on into its blocks."""
        for c in range(first_chunk, len(keys)):
            idx = self.torch.tensor(block_ids[c * self.bpc:(c + 1) * self.bpc])
            for layer, t in enumerate(self.kv):
                t[:, idx] = self._expected(keys[c], layer)

    def verify(self, keys, block_ids, chunks):
        """Counts chunks among the first `chunks` whose blocks do not hold exactly their values."""
        bad = 0
        for c in range(chunks):
            idx = self.torch.tensor(block_ids[c * self.bpc:(c + 1) * self.bpc])
            if not all(self.torch.equal(t[:, idx], self._expected(keys[c], layer)) for layer, t in enumerate(self.kv)):
                bad += 1
        return bad

    def scrub(self, block_ids):
        """Poisons a request's blocks so stale data can never pass verification by accident."""
        idx = self.torch.tensor(block_ids)
        for t in self.kv:
            t[:, idx] = -1.0


def worker_main(rank, args, socket_path, tasks, results, stop):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    import torch  # noqa: PLC0415 (heavy; only workers need it)

    sys.path.insert(0, str(pathlib.Path(args.build_dir) / "python"))
    import shmkv  # noqa: PLC0415

    torch.set_num_threads(1)
    engine = Engine(args, torch)
    conn = shmkv.KVConnector(socket_path, model="demo-llama", dtype=args.dtype, layout="NHD",
                             chunk_tokens=args.chunk_tokens, instance_id=f"demo-worker-{rank}")
    nbytes = shmkv.chunk_nbytes(engine.kv, layout="NHD", chunk_tokens=args.chunk_tokens)
    adapter = VllmAdapter(args, socket_path, rank, engine) if args.engine == "vllm" else None
    try:
        while True:
            # `stop` (set on Ctrl-C or a failure) ends the worker after its current request, even
            # while requests are still queued.
            if stop.is_set():
                break
            try:
                task = tasks.get(timeout=0.2)
            except queue.Empty:
                continue
            if task is None:
                break
            conv, turn, tokens = task
            if adapter is not None:
                results.put(adapter.play(conv, turn, tokens, conn.chunk_keys(tokens), nbytes))
                continue
            t0 = time.perf_counter()
            hit = conn.lookup(tokens)
            t1 = time.perf_counter()
            blocks = engine.allocate(len(tokens))
            engine.scrub(blocks)
            t2 = time.perf_counter()
            loaded = conn.retrieve(tokens, engine.kv, blocks)
            t3 = time.perf_counter()
            keys = conn.chunk_keys(tokens)
            bad = engine.verify(keys, blocks, loaded // args.chunk_tokens)
            engine.compute(keys, blocks, loaded // args.chunk_tokens)
            t4 = time.perf_counter()
            stored = conn.store(tokens, engine.kv, blocks)
            t5 = time.perf_counter()
            results.put({
                "conv": conv, "turn": turn, "worker": rank, "prompt_tokens": len(tokens), "hit_tokens": hit,
                "loaded_tokens": loaded, "stored_chunks": stored.stored_chunks,
                "existing_chunks": stored.existing_chunks, "skipped_chunks": stored.skipped_chunks,
                "bytes_written": stored.bytes_written, "bytes_read": (loaded // args.chunk_tokens) * nbytes,
                "lookup_ms": (t1 - t0) * 1e3, "retrieve_ms": (t3 - t2) * 1e3, "store_ms": (t5 - t4) * 1e3,
                "bad_chunks": bad, "done_at": time.time(),
            })
    except BaseException as e:  # report instead of dying silently: the scheduler waits for results
        results.put({"error": f"worker {rank}: {type(e).__name__}: {e}"})
        raise
    finally:
        conn.close()
        if adapter is not None:
            adapter.close()


class VllmAdapter:
    """One engine's requests through shmkv.vllm.ShmkvConnector, in the order vLLM calls it: a
    SCHEDULER instance and a WORKER instance (in vLLM, separate processes), one prefill step per
    request. Stand-ins: vLLM's config (the fields the connector reads), Request, KVCacheBlocks,
    SchedulerOutput, ForwardContext and KVConnectorOutput, as SimpleNamespaces."""

    def __init__(self, args, socket_path, rank, engine):
        from shmkv.vllm import KVConnectorRole, ShmkvConnector  # noqa: PLC0415

        self.args, self.engine, self.rank = args, engine, rank
        extra = {"shmkv.socket": socket_path, "shmkv.chunk_tokens": args.chunk_tokens,
                 "shmkv.instance_id": f"demo-vllm-worker-{rank}"}
        config = SimpleNamespace(
            kv_transfer_config=SimpleNamespace(kv_connector_extra_config=extra),
            cache_config=SimpleNamespace(block_size=args.block_size, cache_dtype="auto"),
            model_config=SimpleNamespace(model="demo-llama", dtype=args.dtype, use_mla=False,
                                         get_num_kv_heads=lambda parallel: args.kv_heads,
                                         get_head_size=lambda: args.head_size),
            parallel_config=SimpleNamespace(tensor_parallel_size=1, pipeline_parallel_size=1))
        self.sched = ShmkvConnector(config, KVConnectorRole.SCHEDULER)
        self.worker = ShmkvConnector(config, KVConnectorRole.WORKER)
        self.layers = [f"model.layers.{i}.self_attn.attn" for i in range(args.layers)]
        self.worker.register_kv_caches(dict(zip(self.layers, engine.kv)))

    def play(self, conv, turn, tokens, keys, nbytes):
        c = self.args.chunk_tokens
        req_id = f"{conv}-{turn}"
        req = SimpleNamespace(request_id=req_id, prompt_token_ids=list(tokens), num_tokens=len(tokens),
                              mm_features=None, prompt_embeds=None, cache_salt=None, lora_request=None)
        before = dict(self.worker.stats)
        t0 = time.perf_counter()
        ext, _ = self.sched.get_num_new_matched_tokens(req, 0)  # scheduler: lookup
        t1 = time.perf_counter()
        blocks = self.engine.allocate(len(tokens))
        self.engine.scrub(blocks)
        t2 = time.perf_counter()
        self.sched.update_state_after_alloc(req, SimpleNamespace(get_block_ids=lambda: (list(blocks),)), ext)
        out = SimpleNamespace(
            scheduled_new_reqs=[SimpleNamespace(req_id=req_id, block_ids=(list(blocks),), num_computed_tokens=ext)],
            scheduled_cached_reqs=SimpleNamespace(req_ids=[], resumed_req_ids=set(), new_block_ids=[],
                                                  num_computed_tokens=[]),
            num_scheduled_tokens={req_id: len(tokens) - ext}, finished_req_ids=set())
        meta = pickle.loads(pickle.dumps(self.sched.build_connector_meta(out)))  # to the worker process
        w = self.worker
        w.bind_connector_metadata(meta)
        w.start_load_kv(SimpleNamespace(attn_metadata={name: None for name in self.layers}))
        t3 = time.perf_counter()
        loaded = (w.stats["loaded_chunks"] - before["loaded_chunks"]) * c
        bad = self.engine.verify(keys, blocks, loaded // c)
        self.engine.compute(keys, blocks, loaded // c)  # the forward, from the first chunk not loaded
        t4 = time.perf_counter()
        for name, t in zip(self.layers, self.engine.kv):
            w.wait_for_layer_load(name)
            w.save_kv_layer(name, t, None)
        w.wait_for_save()
        t5 = time.perf_counter()
        w.get_finished(set())
        errors = w.get_block_ids_with_load_errors()
        w.clear_connector_metadata()
        self.sched.update_connector_output(SimpleNamespace(invalid_block_ids=errors))
        self.sched.request_finished(req, list(blocks))
        stored = w.stats["stored_chunks"] - before["stored_chunks"]
        return {
            "conv": conv, "turn": turn, "worker": self.rank, "prompt_tokens": len(tokens), "hit_tokens": ext,
            "loaded_tokens": loaded, "stored_chunks": stored,
            "existing_chunks": w.stats["existing_chunks"] - before["existing_chunks"],
            "skipped_chunks": w.stats["skipped_chunks"] - before["skipped_chunks"],
            "bytes_written": stored * nbytes, "bytes_read": (loaded // c) * nbytes,
            "lookup_ms": (t1 - t0) * 1e3, "retrieve_ms": (t3 - t2) * 1e3, "store_ms": (t5 - t4) * 1e3,
            "bad_chunks": bad, "done_at": time.time(),
        }

    def close(self):
        self.worker.shutdown()
        self.sched.shutdown()


# ---- the scheduler (main process) -------------------------------------------------------------

class Conversations:
    """Token streams of multi-turn chats that share system prompts."""

    def __init__(self, args):
        self.args = args
        rng = random.Random(args.seed)
        self.system = [[rng.randrange(1, 128000) for _ in range(args.system_tokens)]
                       for _ in range(args.system_prompts)]
        self.history = [list(self.system[c % args.system_prompts]) for c in range(args.conversations)]
        self.rng = rng

    def _text(self, mean):
        n = max(1, int(self.rng.gauss(mean, mean / 4)))
        return [self.rng.randrange(1, 128000) for _ in range(n)]

    def next_request(self, conv):
        """The full sequence of the next turn: history + user message + the model's reply."""
        self.history[conv] += self._text(self.args.user_tokens) + self._text(self.args.reply_tokens)
        return list(self.history[conv])


def start_server(args, workdir, node=0, redis_url=None):
    binary = pathlib.Path(args.build_dir) / "src" / "shmkv-server"
    if not binary.exists():
        sys.exit(f"demo: {binary} is missing; run scripts/demo.sh (it builds first)")
    socket_path = str(pathlib.Path(workdir) / (f"shmkv-node{node}.sock" if redis_url else "shmkv.sock"))
    extra = []
    if args.disk_dir:  # one L2 directory per node (a directory is locked by its server)
        extra += ["--disk-dir", os.path.join(args.disk_dir, f"node{node}") if redis_url else args.disk_dir]
    if redis_url:
        extra += ["--redis", redis_url, "--redis-write", "through"]
    metrics_port = free_port()
    extra += ["--metrics-address", f"127.0.0.1:{metrics_port}"]
    # Its own session: a Ctrl-C reaches only the demo, which then stops the workers and the server
    # in order (a server stopped first would leave the workers' last calls failing).
    from shmkv.server import start_server as start  # noqa: PLC0415 (the build's package, on sys.path)

    try:
        proc, ready = start(str(binary), ["--pool-size", args.pool_size, "--socket", socket_path,
                                          "--log-level", "warn", *extra], start_new_session=True)
    except RuntimeError as e:
        sys.exit(f"demo: the server did not start: {e}")
    return proc, socket_path, ready.segment, f"{ready}\n  metrics (while it runs): http://127.0.0.1:{metrics_port}/metrics"


def free_port():
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress(done, total, started, hit_tokens, prompt_tokens, enabled):
    if not enabled:
        return
    width = 32
    filled = int(width * done / total)
    rate = hit_tokens / prompt_tokens if prompt_tokens else 0.0
    elapsed = time.time() - started
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} requests"
                     f"  prefix hits {rate:6.1%}  {elapsed:5.1f}s")
    sys.stderr.flush()


def human_bytes(n):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def percentile(values, q):
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def write_chart(path, records, samples, args, t0):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6))
    xs = [r["done_at"] - t0 for r in records]
    turns = [r["turn"] + 1 for r in records]
    dots = ax[0].scatter(xs, [r["hit_tokens"] / r["prompt_tokens"] for r in records], c=turns, cmap="viridis", s=14,
                         vmin=1, vmax=max(turns + [2]))
    ax[0].set(title="prefix hit rate per request (colour: turn)", xlabel="time (s)", ylabel="hit tokens / prompt",
              ylim=(-0.05, 1.05))
    bar = fig.colorbar(dots, ax=ax[0], pad=0.01)
    bar.set_label("turn of the conversation (1 = first)")
    bar.set_ticks(sorted(set(turns)))
    names = ["lookup_ms", "retrieve_ms", "store_ms"]
    ax[1].boxplot([[r[n] for r in records] for n in names], labels=["lookup", "retrieve", "store"], showfliers=True)
    ax[1].set(title="latency per request", ylabel="ms", yscale="log")
    if samples:
        ts = [s[0] - t0 for s in samples]
        ax[2].plot(ts, [s[1] / 2**20 for s in samples], label="pool used (MiB)")
        ax[2].set(title="pool occupancy" + (" (all nodes) and cross-node loads" if args.nodes > 1 else ""),
                  xlabel="time (s)", ylabel="MiB")
        ax2 = ax[2].twinx()
        ax2.plot(ts, [s[2] for s in samples], color="tab:red", label="evictions")
        if args.nodes > 1:
            ax2.plot(ts, [s[3] for s in samples], color="tab:green", label="cross-node chunk loads (L3)")
        ax2.set_ylabel("evictions, L3 loads (cumulative)" if args.nodes > 1 else "evictions (cumulative)")
        ax[2].legend(loc="upper left")
        ax2.legend(loc="lower right")
    nodes = f"{args.nodes} nodes (L3 Redis Cluster), " if args.nodes > 1 else ""
    fig.suptitle(f"shmkv demo: {nodes}{args.workers} workers, {len(records)} requests, {args.layers} layers x "
                 f"{args.kv_heads} KV heads x {args.head_size}, {args.dtype}, chunk {args.chunk_tokens}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    os.environ.setdefault("SHMKV_LOG_LEVEL", "warn")  # workers inherit it: no info lines over the bar
    sys.path.insert(0, str(pathlib.Path(args.build_dir) / "python"))
    import shmkv  # noqa: PLC0415

    out_dir = pathlib.Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.disk_dir:
        files, size = l2_files(args.disk_dir)
        if files:
            print(f"  note: {args.disk_dir} already holds {files} L2 file(s), {human_bytes(size)}, from an earlier run: "
                  f"the server serves them, so the hit rate is higher than a fresh run's (empty the directory, or "
                  f"give another --disk-dir, to start afresh)")
    workdir = tempfile.mkdtemp(prefix="shmkv-demo-")
    try:
        run(args, shmkv, out_dir, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the socket's directory: nothing of it is kept


def l2_files(disk_dir):
    """Number and bytes of the files an L2 directory holds (its lock file aside)."""
    files = size = 0
    for root, _, names in os.walk(disk_dir):
        for n in names:
            if n == ".shmkv.lock":
                continue
            try:
                size += os.lstat(os.path.join(root, n)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def start_redis_cluster(workdir):
    """A local 3-master Redis Cluster for --nodes (the test suite's harness: tests/python/redis_cluster.py)."""
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        sys.exit("demo: --nodes needs redis-server and redis-cli (scripts/install-deps.sh installs them)")
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    from redis_cluster import RedisCluster  # noqa: PLC0415

    try:
        return RedisCluster(pathlib.Path(workdir) / "redis", masters=3)
    except Exception as e:  # noqa: BLE001 - any failure to start is reported the same way
        sys.exit(f"demo: the local Redis Cluster did not start: {e}")


def run(args, shmkv, out_dir, workdir):
    cluster = start_redis_cluster(workdir) if args.nodes > 1 else None
    try:
        run_nodes(args, shmkv, out_dir, workdir, cluster)
    finally:
        if cluster is not None:
            cluster.stop()


def run_nodes(args, shmkv, out_dir, workdir, cluster):
    servers = []  # (proc, socket, segment, ready line), one per node
    try:
        for node in range(args.nodes):
            servers.append(start_server(args, workdir, node, cluster.url() if cluster else None))
    except BaseException:
        for proc, *_ in servers:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        raise
    if cluster:
        print(f"shmkv demo: {args.nodes} nodes sharing chunks through the Redis Cluster at {cluster.url()}")
    for _, _, _, ready in servers:
        print(f"shmkv demo: {ready}")
    chunk_mib = 2 * args.layers * args.chunk_tokens * args.kv_heads * args.head_size * \
        {"bfloat16": 2, "float16": 2, "float32": 4}[args.dtype] / 2**20
    if args.engine == "vllm":
        print("  workers use the vLLM adapter's call sequence (shmkv.vllm.ShmkvConnector)")
    print(f"  {args.workers} workers, {args.conversations} conversations x {args.turns} turns, "
          f"{args.system_prompts} shared system prompts of {args.system_tokens} tokens; "
          f"chunks of {args.chunk_tokens} tokens = {chunk_mib:g} MiB")

    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited sockets, mappings or threads
    tasks, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    # Worker r runs on node r % nodes.
    workers = [ctx.Process(target=worker_main, args=(r, args, servers[r % args.nodes][1], tasks, results, stop),
                           daemon=True) for r in range(args.workers)]

    convs = Conversations(args)
    total = args.conversations * args.turns
    records, samples, failure = [], [], None
    monitors = [shmkv.Client(sock, instance_id="demo-monitor") for _, sock, _, _ in servers]

    def node_stats():
        """Every node's stats, and their sums."""
        per_node = [m.stats() for m in monitors]
        return per_node, {k: sum(st.get(k, 0) for st in per_node) for k in per_node[0]}

    started = time.time()
    hit_sum = prompt_sum = 0
    last_sample = 0.0
    try:  # from the workers' start: a Ctrl-C at any point stops everything in order, once
        # Started with SIGINT ignored: a spawned interpreter keeps an inherited SIG_IGN instead of
        # installing its KeyboardInterrupt handler, so a Ctrl-C while a worker boots prints no
        # traceback from it (the demo itself handles Ctrl-C again right after).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for w in workers:
                w.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        for c in range(args.conversations):  # first turns: every conversation is ready
            tasks.put((c, 0, convs.next_request(c)))
        while len(records) < total:
            try:
                r = results.get(timeout=1.0)
            except queue.Empty:
                if not all(w.is_alive() for w in workers):
                    failure = "a worker process died"
                    break
                r = None
            if r is not None:
                if "error" in r:
                    failure = r["error"]
                    break
                records.append(r)
                hit_sum += r["hit_tokens"]
                prompt_sum += r["prompt_tokens"]
                if r["turn"] + 1 < args.turns:
                    tasks.put((r["conv"], r["turn"] + 1, convs.next_request(r["conv"])))
            now = time.time()
            if now - last_sample > 0.25 or r is None:
                _, st = node_stats()
                samples.append((now, st["used_bytes"], st["evictions"], st.get("l3_loads", 0)))
                last_sample = now
            progress(len(records), total, started, hit_sum, prompt_sum, not args.no_progress)
        if not args.no_progress:
            sys.stderr.write("\n")
        wall = time.time() - started
        per_node_stats, final_stats = node_stats()
        deadline = time.time() + 5
        while final_stats.get("l3_queue_bytes", 0) and time.time() < deadline:  # the last stores' L3 writes
            time.sleep(0.05)
            per_node_stats, final_stats = node_stats()
        samples.append((time.time(), final_stats["used_bytes"], final_stats["evictions"],
                        final_stats.get("l3_loads", 0)))
    except KeyboardInterrupt:
        failure = "interrupted (Ctrl-C); workers and server stopped"
        if not args.no_progress:
            sys.stderr.write("\n")
    finally:
        # The clean-up is bounded (joins with timeouts, then kills): a second Ctrl-C must not cut it
        # short and leave the workers or the server behind.
        previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for m in monitors:
            m.close()
        # Requests the workers never took must not keep this process waiting at exit, nor the
        # workers busy: each stops after the request it is playing.
        stop.set()
        tasks.cancel_join_thread()
        results.cancel_join_thread()
        for w in workers:
            if w.pid is None:
                continue  # never started
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
        for proc, *_ in servers:
            proc.send_signal(signal.SIGTERM)
        rcs = [proc.wait(timeout=30) for proc, *_ in servers]
        rc = next((c for c in rcs if c != 0), 0)
        signal.signal(signal.SIGINT, previous_sigint)
    segments = [seg for _, _, seg, _ in servers]
    left = [seg for seg in segments if seg and pathlib.Path("/dev/shm", seg).exists()]
    segment = ", ".join(segments)
    if failure:
        print(f"demo FAILED: {failure}; server exit code {rc}; segment {segment} "
              f"{'STILL PRESENT' if left else 'removed'}", file=sys.stderr)
        sys.exit(130 if failure.startswith("interrupted") else 1)

    lookups = [r["lookup_ms"] for r in records]
    stores = [r["store_ms"] for r in records]
    retrieves = [r["retrieve_ms"] for r in records]
    written = sum(r["bytes_written"] for r in records)
    read = sum(r["bytes_read"] for r in records)
    bad = sum(r["bad_chunks"] for r in records)
    io_seconds = (sum(stores) + sum(retrieves)) / 1e3
    reused = sum(r["loaded_tokens"] for r in records)
    print("\nshmkv demo summary")
    print(f"  requests            {len(records)} in {wall:.1f} s ({len(records) / wall:.1f}/s)")
    print(f"  prefix hit rate     {hit_sum / prompt_sum:.1%}  ({hit_sum:,} of {prompt_sum:,} prompt tokens)")
    print(f"  tokens reused       {reused:,} loaded from shmkv instead of recomputed")
    print(f"  bytes moved         {human_bytes(written)} stored, {human_bytes(read)} retrieved")
    print(f"  throughput          {(written + read) / 1e9 / io_seconds:.2f} GB/s through store+retrieve "
          f"(time inside the calls)")
    for name, vals in (("lookup", lookups), ("store", stores), ("retrieve", retrieves)):
        print(f"  {name:<9} latency  p50 {percentile(vals, 50):8.2f} ms   p99 {percentile(vals, 99):8.2f} ms")
    print(f"  server              {final_stats['objects']} objects, {human_bytes(final_stats['used_bytes'])} used "
          f"of {human_bytes(final_stats['pool_size'])}, {final_stats['evictions']} evictions")
    if "l2_objects" in final_stats:
        print(f"  L2 disk tier        {final_stats['l2_hits']} chunk hits from disk, {final_stats['l2_loads']} loads, "
              f"{final_stats['l2_writes']} writes; {final_stats['l2_objects']} files, "
              f"{human_bytes(final_stats['l2_bytes'])} in {args.disk_dir}")
    if cluster:
        print(f"  L3 (Redis Cluster)  {final_stats['l3_loads']} chunks loaded on one node that another node "
              f"prefilled ({final_stats['l3_loads'] * args.chunk_tokens:,} tokens, "
              f"{human_bytes(int(final_stats['l3_load_bytes']))}): cross-node hits; "
              f"{final_stats['l3_writes']} chunks written to Redis")
        for node, st in enumerate(per_node_stats):
            print(f"    node {node}            {st['l3_hits']} cross-node chunk hits, {st['l3_loads']} loads, "
                  f"{st['lookup_hits']} L1 chunk hits, {st['l3_writes']} chunks written to L3")
    print(f"  data check          {bad} wrong chunks of {reused // args.chunk_tokens} retrieved")
    chart = out_dir / "shmkv-demo.png"
    write_chart(chart, records, samples, args, started)
    print(f"  chart               {chart}")
    print(f"  shutdown            server exit code {rc}; segment {segment} "
          f"{'STILL PRESENT' if left else 'removed'}")
    if args.disk_dir:
        files, size = l2_files(args.disk_dir)
        print(f"  L2 files kept       {files} files, {human_bytes(size)} in {args.disk_dir} (a later run with this "
              f"--disk-dir serves them; remove the directory to reclaim the space)")
    if bad or rc != 0 or left:
        sys.exit("demo FAILED")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # after the server and the workers stopped (the chart, the summary)
        print("\ndemo: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
