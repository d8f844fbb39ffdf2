"""The vLLM adapter's overhead over shmkv.KVConnector: store and load of a 4,096-token prompt.

Run with the vLLM environment (scripts/engines-venv.sh) and a built tree:

    SHMKV_BUILD_DIR=build .venv-engines/vllm/bin/python bench/vllm_adapter_bench.py [--rounds N]

One process: a shmkv-server (started here), vLLM 0.33's real Scheduler with the connector
(ShmkvConnector, role SCHEDULER, made by vLLM), and a worker-side connector (role WORKER) over a
KV cache of 8 layers, 8 KV heads, head size 128, bf16, 16-token blocks, 256-token chunks (16
chunks, 128 MiB per prompt). Per round, taking turns:

* KVConnector store: ``conn.store(tokens, kv, block_ids)``, and load: ``conn.lookup(tokens)`` (what
  an engine's scheduler asks) + ``conn.retrieve(tokens, kv, block_ids)``;
* adapter store: a request of the 4,096 tokens scheduled in one step by vLLM's Scheduler, its
  metadata pickled and unpickled (the process boundary), the worker's per-step calls (bind,
  start_load_kv, wait_for_layer_load / save_kv_layer per layer, wait_for_save, get_finished,
  get_block_ids_with_load_errors, clear) and vLLM's update_from_output; and adapter load: the same
  for the prompt plus 16 tokens on a fresh scheduler entry (16 chunks found and loaded).

Timed for the adapter: the time spent inside the scheduler connector's methods (wrapped), the
pickling, and the worker calls; vLLM's own scheduling is not counted. Two memory layouts:
"same layout" gives both the same per-layer (2, B, N, H, D) tensors (pure adapter overhead);
"vLLM 0.33 default" gives the adapter vLLM's LBNHC cache from allocate_kv_cache and KVConnector
contiguous NHD tensors (what each would meet in practice). Reports the best round of each and
the adapter's overhead (adapter / KVConnector - 1; goal <= 10%).
"""
import argparse
import functools
import json
import os
import pathlib
import pickle
import random
import sys
import tempfile
import time

BUILD = pathlib.Path(os.environ.get("SHMKV_BUILD_DIR", "build")).resolve()
sys.path.insert(0, str(BUILD / "python"))
import torch  # noqa: E402

import shmkv  # noqa: E402
from shmkv.server import start_server  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--layout", choices=["same", "default", "both"], default="both")
args = p.parse_args()

from vllm.config import (CacheConfig, DeviceConfig, KVTransferConfig, ModelConfig,  # noqa: E402
                         ParallelConfig, SchedulerConfig, VllmConfig)
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_planning import get_kv_cache_config_from_groups  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheGroupSpec  # noqa: E402
from vllm.v1.kv_cache_layout import KVCacheLayout  # noqa: E402
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402
from vllm.v1.worker.utils import allocate_kv_cache  # noqa: E402

LAYERS, HEADS, HEAD, BS, CHUNK, TOKENS = 8, 8, 128, 16, 256, 4096
NUM_BLOCKS = (TOKENS + 2 * CHUNK) // BS
NAMES = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]
model_dir = tempfile.mkdtemp(prefix="shmkv-bench-model-")
with open(f"{model_dir}/config.json", "w") as f:
    json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HEADS * HEAD * 2,
               "intermediate_size": 4096, "num_attention_heads": 2 * HEADS, "num_key_value_heads": HEADS,
               "num_hidden_layers": LAYERS, "vocab_size": 32000, "max_position_embeddings": 8192,
               "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16", "head_dim": HEAD}, f)
init_none_hash(sha256)

tmp = tempfile.mkdtemp(prefix="shmkv-bench-")
socket = f"{tmp}/s.sock"
server, _ = start_server(str(BUILD / "src" / "shmkv-server"),
                         ["--pool-size", "1GiB", "--shm-name", f"shmkv_adapter_bench_{os.getpid()}", "--socket", socket,
                          "--log-level", "warn"])


def vllm_config(layout, salt):
    mc = ModelConfig(model=model_dir, skip_tokenizer_init=True, dtype="bfloat16", max_model_len=8192)
    sc = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=8192, max_model_len=8192, enable_chunked_prefill=True,
                         is_encoder_decoder=False)
    cc = CacheConfig(block_size=BS, cache_dtype="auto", enable_prefix_caching=False)
    cc.kv_cache_layout = layout
    kt = KVTransferConfig(kv_connector="ShmkvConnector", kv_connector_module_path="shmkv.vllm", kv_role="kv_both",
                          kv_load_failure_policy="recompute",
                          kv_connector_extra_config={"shmkv.socket": socket, "shmkv.chunk_tokens": CHUNK,
                                                     "shmkv.salt": salt, "shmkv.threads": 1})
    return VllmConfig(model_config=mc, scheduler_config=sc, cache_config=cc, kv_transfer_config=kt,
                      device_config=DeviceConfig("cpu"), parallel_config=ParallelConfig())


class Timer:
    def __init__(self):
        self.seconds = 0.0

    def wrap(self, obj, name):
        fn = getattr(obj, name)

        @functools.wraps(fn)
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t

        setattr(obj, name, timed)


class AdapterEngine:
    """vLLM's Scheduler with the connector, and the worker-side connector in this process."""

    def __init__(self, layout, salt, kv=None):
        self.vc = vllm_config(layout, salt)
        spec = FullAttentionSpec(block_size=BS, num_kv_heads=HEADS, head_size=HEAD, dtype=torch.bfloat16)
        self.kcc = get_kv_cache_config_from_groups(self.vc, [KVCacheGroupSpec(list(NAMES), spec)],
                                                   NUM_BLOCKS * LAYERS * spec.page_size_bytes)
        self.vc.cache_config.num_gpu_blocks = self.kcc.num_blocks
        self.sched = Scheduler(vllm_config=self.vc, kv_cache_config=self.kcc,
                               structured_output_manager=StructuredOutputManager(self.vc), block_size=BS)
        self.kv = kv if kv is not None else allocate_kv_cache(self.kcc, torch.device("cpu"), KVCacheLayout[layout])
        self.worker = KVConnectorFactory.create_connector(self.vc, KVConnectorRole.WORKER, self.kcc)
        self.worker.register_kv_caches(self.kv)
        self.timer = Timer()
        conn = self.sched.connector
        for name in ("get_num_new_matched_tokens", "update_state_after_alloc", "build_connector_meta",
                     "update_connector_output", "request_finished"):
            self.timer.wrap(conn, name)
        self.hasher = get_request_block_hasher(BS, sha256)
        self.n = 0

    def request(self, tokens):
        """Schedules `tokens` as a new request and runs its (only) step; returns the adapter's
        seconds (connector calls, pickling, worker calls) and the metadata."""
        self.n += 1
        req = Request(f"r{self.n}", list(tokens), SamplingParams(max_tokens=1, ignore_eos=True), None,
                      block_hasher=self.hasher)
        self.sched.add_request(req)
        self.timer.seconds = 0.0
        out = self.sched.schedule()
        t = time.perf_counter()
        meta = pickle.loads(pickle.dumps(out.kv_connector_metadata))
        w = self.worker
        w.bind_connector_metadata(meta)
        w.start_load_kv(None)
        for name in NAMES:
            w.wait_for_layer_load(name)
            w.save_kv_layer(name, self.kv[name], None)
        w.wait_for_save()
        w.get_finished(out.finished_req_ids)
        errors = w.get_block_ids_with_load_errors()
        w.clear_connector_metadata()
        worker_s = time.perf_counter() - t
        assert not errors, errors
        req_ids = list(out.num_scheduled_tokens)
        mro = ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                sampled_token_ids=[[7] for _ in req_ids],
                                kv_connector_output=KVConnectorOutput(invalid_block_ids=set()))
        self.sched.update_from_output(out, mro)
        assert not self.sched.has_unfinished_requests()
        self.scheduler_s = self.timer.seconds
        return self.timer.seconds + worker_s, meta


def run(layout_name):
    same = layout_name == "same"
    rng = random.Random(3)
    # Per-layer (2, B, N, H, D) tensors: the adapter's input in "same", KVConnector's in both.
    nhd = [torch.randn(2, NUM_BLOCKS, BS, HEADS, HEAD).to(torch.bfloat16) for _ in range(LAYERS)]
    adapter = AdapterEngine("LBNHC", "adapter", kv=dict(zip(NAMES, nhd)) if same else None)
    if not same:
        for t in adapter.kv.values():
            t.copy_(torch.randn(t.shape).to(torch.bfloat16))
    conn = shmkv.KVConnector(socket, model=model_dir, dtype="bfloat16", layout="NHD", salt="connector",
                             chunk_tokens=CHUNK, threads=1)
    admin = shmkv.Client(socket, model=model_dir, world_size=1, rank=0, dtype="bfloat16", layout="NHD",
                         salt="adapter")
    block_ids = list(range(NUM_BLOCKS))
    rng.shuffle(block_ids)
    times = {k: [] for k in ("connector store", "connector load", "adapter store", "adapter load",
                             "scheduler store", "scheduler load")}
    for r in range(args.rounds):
        tokens = [rng.randrange(1, 32000) for _ in range(TOKENS)]
        conn.client.clear()
        admin.clear()
        t = time.perf_counter()
        res = conn.store(tokens, nhd, block_ids)
        times["connector store"].append(time.perf_counter() - t)
        assert res.stored_chunks == TOKENS // CHUNK, res
        s, meta = adapter.request(tokens)
        assert len(meta.stores[0].keys) == TOKENS // CHUNK
        times["adapter store"].append(s)
        times["scheduler store"].append(adapter.scheduler_s)
        t = time.perf_counter()
        hit = conn.lookup(tokens)
        loaded = conn.retrieve(tokens, nhd, block_ids)
        times["connector load"].append(time.perf_counter() - t)
        assert hit == loaded == TOKENS
        s, meta = adapter.request(tokens + [rng.randrange(1, 32000) for _ in range(BS)])
        assert len(meta.loads[0].keys) == TOKENS // CHUNK and not meta.stores
        assert adapter.worker.stats["load_failed_chunks"] == 0
        times["adapter load"].append(s)
        times["scheduler load"].append(adapter.scheduler_s)
    best = {k: min(v) for k, v in times.items()}
    mib = LAYERS * 2 * TOKENS * HEADS * HEAD * 2 / 2**20
    title = ("same layout: both on per-layer (2, B, N, H, D)" if same else
             "vLLM 0.33 default: adapter on LBNHC, KVConnector on contiguous NHD")
    print(f"{title}; {TOKENS} tokens, {mib:.0f} MiB; best of {args.rounds} rounds")
    for op in ("store", "load"):
        c, a = best[f"connector {op}"], best[f"adapter {op}"]
        print(f"  {op:5s}  KVConnector {c * 1e3:7.1f} ms   adapter {a * 1e3:7.1f} ms   overhead {100 * (a / c - 1):+5.1f}%"
              f"   (of which the scheduler-side connector calls {best[f'scheduler {op}'] * 1e3:.2f} ms)")
    conn.close()
    admin.close()
    adapter.worker.shutdown()
    adapter.sched.connector.shutdown()


try:
    for layout in (["same", "default"] if args.layout == "both" else [args.layout]):
        run(layout)
finally:
    server.terminate()
    server.wait(timeout=10)
