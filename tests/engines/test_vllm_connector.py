"""shmkv.vllm.ShmkvConnector driven by vLLM 0.33's real Scheduler, KV-cache planning and allocation.

The scheduler runs in this process (vLLM's real ``Scheduler``, ``Request``, ``SchedulerOutput``,
``KVCacheBlocks``, ``KVConnectorOutput``); each worker rank is a separate process holding a real
KV cache from vLLM's ``allocate_kv_cache`` in one of its ``KVCacheLayout`` orders, with the
connector built by vLLM's own factory path (``kv_connector_module_path``). Metadata crosses the
process boundary pickled, as in vLLM's multiprocess executor.

Stand-in (no GPU here, nothing runs a model): ``_forward`` below plays the model runner's forward
(it writes each scheduled token's K and V from a formula into the request's blocks through vLLM's
logical ``[B, H, N, C]`` per-layer view, C = K then V), and ``_Ctx`` plays the ForwardContext (the
connector only reads ``attn_metadata``). The per-step call order is the one of vLLM's
``KVConnectorModelRunnerMixin`` (docs/vllm.md).
"""
import multiprocessing as mp
import pickle
import traceback

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (scripts/engines-venv.sh)")
torch = pytest.importorskip("torch")

from vllm.config import (CacheConfig, DeviceConfig, KVTransferConfig, ModelConfig,  # noqa: E402
                         ParallelConfig, SchedulerConfig, VllmConfig)
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_planning import get_kv_cache_config_from_groups  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheGroupSpec, MLAAttentionSpec  # noqa: E402
from vllm.v1.kv_cache_layout import KVCacheLayout  # noqa: E402
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402
from vllm.v1.worker.utils import allocate_kv_cache  # noqa: E402

BS = 16  # vLLM block size
CHUNK = 32  # shmkv chunk tokens
LAYERS = 2
HEADS = 2  # KV heads per rank
HEAD = 16
NUM_BLOCKS = 96
MODEL_DIR_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": LAYERS, "vocab_size": 1000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16", "head_dim": HEAD}
# An MLA model (vLLM's DeepSeek-V2 path: model_config.use_mla is True, the KV cache spec is
# MLAAttentionSpec with one "head" of kv_lora_rank + qk_rope_head_dim = MLA_DIM elements).
MLA_DIM = 48
MLA_MODEL_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 64,
    "intermediate_size": 128, "moe_intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
    "num_hidden_layers": LAYERS, "vocab_size": 1000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
    "torch_dtype": "bfloat16", "kv_lora_rank": 32, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32,
    "v_head_dim": 32, "q_lora_rank": None, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "first_k_dense_replace": LAYERS}
LAYER_NAMES = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]


def _model_dir(mla=False, _cache={}):
    if mla not in _cache:
        import json
        import tempfile

        d = tempfile.mkdtemp(prefix="shmkv-vllm-model-")
        with open(f"{d}/config.json", "w") as f:
            json.dump(MLA_MODEL_CONFIG if mla else MODEL_DIR_CONFIG, f)
        _cache[mla] = d
    return _cache[mla]


def make_config(socket, *, layout="LBNHC", batched_tokens=256, extra=None, mla=False, prefix_caching=True):
    mc = ModelConfig(model=_model_dir(mla), skip_tokenizer_init=True, dtype="bfloat16", max_model_len=2048)
    assert mc.use_mla == mla
    sc = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=batched_tokens, max_model_len=2048,
                         enable_chunked_prefill=True, is_encoder_decoder=False)
    cc = CacheConfig(block_size=BS, cache_dtype="auto", enable_prefix_caching=prefix_caching)
    cc.kv_cache_layout = layout  # what the engine core resolves once (VLLM_KV_CACHE_LAYOUT etc.)
    kt = KVTransferConfig(kv_connector="ShmkvConnector", kv_connector_module_path="shmkv.vllm", kv_role="kv_both",
                          kv_load_failure_policy="recompute",
                          kv_connector_extra_config={"shmkv.socket": socket, "shmkv.chunk_tokens": CHUNK,
                                                     **(extra or {})})
    return VllmConfig(model_config=mc, scheduler_config=sc, cache_config=cc, kv_transfer_config=kt,
                      device_config=DeviceConfig("cpu"), parallel_config=ParallelConfig())


def make_kv_cache_config(vc, mla=False, num_blocks=NUM_BLOCKS):
    if mla:  # what vLLM's MLA attention layers publish
        spec = MLAAttentionSpec(block_size=BS, num_kv_heads=1, head_size=MLA_DIM, dtype=torch.bfloat16)
    else:
        spec = FullAttentionSpec(block_size=BS, num_kv_heads=HEADS, head_size=HEAD, dtype=torch.bfloat16)
    groups = [KVCacheGroupSpec(list(LAYER_NAMES), spec)]
    return get_kv_cache_config_from_groups(vc, groups, num_blocks * LAYERS * spec.page_size_bytes)


def kv_value(tokens, positions, layer, rank, mla=False):
    """The stand-in model's KV for tokens at positions: [len, HEADS, 2*HEAD] (MLA: [len, 1, MLA_DIM],
    the same on every rank), integers exact in bf16."""
    tok = torch.tensor([tokens[p] for p in positions], dtype=torch.int64)[:, None, None]
    pos = torch.tensor(positions, dtype=torch.int64)[:, None, None]
    if mla:
        h, c = torch.zeros(1, 1, 1, dtype=torch.int64), torch.arange(MLA_DIM)[None, None, :]
    else:
        h = torch.arange(HEADS)[None, :, None] + rank * HEADS
        c = torch.arange(2 * HEAD)[None, None, :]
    return ((tok * 31 + pos * 7 + layer * 13 + h * 3 + c) % 256).to(torch.bfloat16)


# ---- worker process ------------------------------------------------------------------------------

class _Ctx:
    """Stand-in for vLLM's ForwardContext: the connector reads attn_metadata only."""

    def __init__(self, attn_metadata):
        self.attn_metadata = attn_metadata
        self.no_compile_layers = {}


def _forward(kv, batch, rank, mla):
    for req_id, tokens, block_ids, start, n in batch:
        pos = list(range(start, start + n))
        blocks = torch.tensor([block_ids[p // BS] for p in pos])
        offs = torch.tensor([p % BS for p in pos])
        for li, name in enumerate(LAYER_NAMES):
            kv[name][blocks, :, offs] = kv_value(tokens, pos, li, rank, mla)


def _mismatches(kv, tokens, block_ids, upto, rank, mla):
    """Positions < upto whose KV differs from the formula, for every layer."""
    if upto == 0:
        return []
    pos = list(range(upto))
    blocks = torch.tensor([block_ids[p // BS] for p in pos])
    offs = torch.tensor([p % BS for p in pos])
    bad = set()
    for li, name in enumerate(LAYER_NAMES):
        got = kv[name][blocks, :, offs]
        diff = (got != kv_value(tokens, pos, li, rank, mla)).flatten(1).any(1)
        bad.update(int(i) for i in torch.nonzero(diff).flatten())
    return sorted(bad)


def _worker_main(conn, socket, layout_name, rank, tp_size, mla, num_blocks):
    try:
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

        vc = make_config(socket, layout=layout_name, extra={"shmkv.tp_rank": rank, "shmkv.tp_size": tp_size}, mla=mla)
        kcc = make_kv_cache_config(vc, mla, num_blocks)
        layout = KVCacheLayout[layout_name]
        kv = allocate_kv_cache(kcc, torch.device("cpu"), layout)
        conn_ = KVConnectorFactory.create_connector(vc, KVConnectorRole.WORKER, kcc)
        conn_.register_kv_caches(kv)
        conn.send(("ok", [list(kv[LAYER_NAMES[0]].shape), list(kv[LAYER_NAMES[0]].stride())]))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                conn_.shutdown()
                conn.send(("ok", None))
                return
            if msg[0] == "step":
                _, meta_bytes, batch, finished, empty = msg
                meta = pickle.loads(meta_bytes)
                conn_.bind_connector_metadata(meta)
                conn_.start_load_kv(_Ctx(None if empty else {n: object() for n in LAYER_NAMES}))
                # What the loads (and vLLM's own prefix cache) must have put in place before the
                # forward: every position before each request's first scheduled token.
                before = {r: _mismatches(kv, t, b, s, rank, mla) for r, t, b, s, _ in batch}
                if not empty:
                    for name in LAYER_NAMES:
                        conn_.wait_for_layer_load(name)
                    _forward(kv, batch, rank, mla)
                    for name in LAYER_NAMES:
                        conn_.save_kv_layer(name, kv[name], None)
                    conn_.wait_for_save()
                sending, recving = conn_.get_finished(finished)
                errors = conn_.get_block_ids_with_load_errors()
                conn_.clear_connector_metadata()
                conn.send(("ok", (before, errors, sending, recving, dict(conn_.stats))))
            elif msg[0] == "read":  # raw bytes of some blocks of every layer
                _, block_ids = msg
                conn.send(("ok", [kv[n][torch.tensor(block_ids)].clone() for n in LAYER_NAMES]))
    except BaseException:  # report, so the test fails with the worker's traceback
        conn.send(("error", traceback.format_exc()))


class Worker:
    def __init__(self, socket, layout="LBNHC", rank=0, tp_size=1, mla=False, num_blocks=NUM_BLOCKS):
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, socket, layout, rank, tp_size, mla, num_blocks),
                                daemon=True)
        self.proc.start()
        self.shape, self.stride = self._recv()

    def _recv(self):
        if not self.conn.poll(120):
            raise TimeoutError("worker did not answer")
        status, value = self.conn.recv()
        if status != "ok":
            raise AssertionError("worker failed:\n" + value)
        return value

    def call(self, *msg):
        self.conn.send(msg)
        return self._recv()

    def stop(self):
        try:
            self.call("stop")
        finally:
            self.proc.join(10)


# ---- one engine: a real Scheduler and its worker processes ---------------------------------------

class Engine:
    def __init__(self, socket, layout="LBNHC", tp_size=1, batched_tokens=256, mla=False, num_blocks=NUM_BLOCKS,
                 prefix_caching=True):
        self.vc = make_config(socket, layout=layout, batched_tokens=batched_tokens, extra={"shmkv.tp_size": tp_size},
                              mla=mla, prefix_caching=prefix_caching)
        self.kcc = make_kv_cache_config(self.vc, mla, num_blocks)
        self.vc.cache_config.num_gpu_blocks = self.kcc.num_blocks  # what the engine core sets after profiling
        self.sched = Scheduler(vllm_config=self.vc, kv_cache_config=self.kcc,
                               structured_output_manager=StructuredOutputManager(self.vc), block_size=BS)
        self.workers = [Worker(socket, layout, rank, tp_size, mla, num_blocks) for rank in range(tp_size)]
        self.hasher = get_request_block_hasher(BS, sha256)
        self.finished_ids: set[str] = set()
        self.last = None

    @property
    def connector(self):
        return self.sched.connector

    def add(self, req_id, tokens, max_tokens=2):
        req = Request(req_id, list(tokens), SamplingParams(max_tokens=max_tokens, ignore_eos=True), None,
                      block_hasher=self.hasher)
        self.sched.add_request(req)
        return req

    def schedule(self):
        return self.sched.schedule()

    def run(self, out, *, before_workers=None):
        """Runs the workers' side of one scheduled step and feeds vLLM the result."""
        batch = []
        for req_id, n in out.num_scheduled_tokens.items():
            req = self.sched.requests[req_id]
            start = req.num_computed_tokens - n  # the scheduler already advanced it
            batch.append((req_id, list(req.all_token_ids), list(self.sched.kv_cache_manager.get_block_ids(req_id)[0]),
                          start, n))
        if before_workers:
            before_workers()
        meta = pickle.dumps(out.kv_connector_metadata)
        results = [w.call("step", meta, batch, set(out.finished_req_ids), not batch) for w in self.workers]
        errors = set().union(*(r[1] for r in results))
        sampled, req_ids = [], []
        for req_id, n in out.num_scheduled_tokens.items():
            req = self.sched.requests[req_id]
            req_ids.append(req_id)
            done_prefill = req.num_computed_tokens >= req.num_tokens
            sampled.append([7] if done_prefill and not errors else [])
        mro = ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                sampled_token_ids=sampled,
                                kv_connector_output=KVConnectorOutput(invalid_block_ids=errors))
        self.sched.update_from_output(out, mro)
        self.last = results
        return results

    def step(self):
        out = self.schedule()
        return out, self.run(out)

    def drain(self, limit=50):
        for _ in range(limit):
            if not self.sched.has_unfinished_requests():
                return
            self.step()
        raise AssertionError("requests did not finish")

    def stop(self):
        for w in self.workers:
            w.stop()
        self.connector.shutdown()


@pytest.fixture(scope="module", autouse=True)
def _hash_init():
    init_none_hash(sha256)


@pytest.fixture
def engines(server):
    made = []

    def make(**kw):
        e = Engine(server.socket, **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()


def prompt(seed, n):
    return [(seed * 7919 + i * 104729) % 997 + 1 for i in range(n)]


def stored_chunks(socket, tokens, tp_size=1, rank=0, mla=False):
    import shmkv

    layout = "MLA" if mla else "NHD"
    root = shmkv.chain_root(_model_dir(mla), tp_size, "bfloat16", layout, "")
    keys = shmkv.chunk_digests(root, tokens, CHUNK)
    with shmkv.Client(socket, model=_model_dir(mla), world_size=tp_size, rank=rank, dtype="bfloat16",
                      layout=layout) as c:
        return c.lookup(keys), keys


# ---- scenarios -----------------------------------------------------------------------------------

def test_the_connector_loads_through_vllms_factory_as_an_external_module(engines):
    e = engines()
    from shmkv.vllm import ShmkvConnector

    assert type(e.connector) is ShmkvConnector
    assert e.connector.role == KVConnectorRole.SCHEDULER
    assert e.workers[0].shape == [NUM_BLOCKS, HEADS, BS, 2 * HEAD]  # vLLM's logical [B, H, N, C] view


@pytest.mark.parametrize("layout", [l.name for l in KVCacheLayout])
def test_a_second_engine_loads_a_shared_system_prompt_into_other_blocks_byte_identical(engines, server, layout):
    system = prompt(1, 4 * CHUNK)  # 128 tokens = 4 chunks
    a = engines()
    a.add("a1", system + prompt(2, 20))
    a.drain()
    assert stored_chunks(server.socket, system)[0] == 4

    b = engines(layout=layout)
    b.add("filler", prompt(9, 3 * BS))  # B's block ids differ from A's
    b.step()
    b.add("b1", system + prompt(3, 40))
    out = b.schedule()
    new = [r for r in out.scheduled_new_reqs if r.req_id == "b1"][0]
    assert new.num_computed_tokens == 4 * CHUNK  # the whole system prompt came from shmkv
    before, errors, *_ = b.run(out)[0]
    assert errors == set()
    assert before["b1"] == []  # every position before the first computed token is A's KV
    stats = b.last[0][4]
    assert stats["loaded_chunks"] == 4
    b.drain()


def test_chunked_prefill_stores_each_chunk_in_the_step_that_completes_it(engines, server):
    tokens = prompt(4, 5 * CHUNK + 10)  # 170 tokens, 5 full chunks
    e = engines(batched_tokens=48)  # 48 tokens a step: chunk boundaries fall inside steps
    e.add("r", tokens)
    computed, seen = 0, []
    while computed < len(tokens):
        out, _ = e.step()
        computed += out.num_scheduled_tokens.get("r", 0)
        have, _ = stored_chunks(server.socket, tokens)
        seen.append((computed, have))
        assert have == min(computed, len(tokens)) // CHUNK, seen  # never before, never after
    assert seen[-1][1] == 5  # the partial tail is never stored
    e.drain()


def test_a_full_prompt_hit_leaves_at_least_one_token_to_compute(engines, server):
    tokens = prompt(5, 4 * CHUNK)  # exactly 4 chunks
    a = engines()
    a.add("a", tokens)
    a.drain()
    assert stored_chunks(server.socket, tokens)[0] == 4
    b = engines()
    b.add("b", tokens)
    out = b.schedule()
    assert out.scheduled_new_reqs[0].num_computed_tokens == 3 * CHUNK  # the 4th chunk is recomputed
    assert out.num_scheduled_tokens["b"] == CHUNK
    # get_num_new_matched_tokens has no side effects: asking again gives the same answer
    req = b.sched.requests["b"]
    assert b.connector.get_num_new_matched_tokens(req, 0) == b.connector.get_num_new_matched_tokens(req, 0)
    before, errors, *_ = b.run(out)[0]
    assert before["b"] == [] and errors == set()
    b.drain()


def test_a_chunk_evicted_between_lookup_and_load_is_reported_and_recomputed(engines, server):
    import shmkv

    tokens = prompt(6, 4 * CHUNK + 5)
    a = engines()
    a.add("a", tokens)
    a.drain()
    _, keys = stored_chunks(server.socket, tokens)
    b = engines()
    b.add("b", tokens)
    out = b.schedule()
    assert out.scheduled_new_reqs[0].num_computed_tokens == 4 * CHUNK
    block_ids = list(b.sched.kv_cache_manager.get_block_ids("b")[0])

    def evict():  # after the scheduler's lookup, before the worker's load
        with shmkv.Client(server.socket, model=_model_dir(), world_size=1, rank=0, dtype="bfloat16",
                          layout="NHD") as c:
            c.remove([keys[2]])

    results = b.run(out, before_workers=evict)
    _, errors, *_ = results[0]
    bpc = CHUNK // BS
    assert errors == set(block_ids[2 * bpc:4 * bpc])  # chunk 2 and everything after it
    raw = b.workers[0].call("read", block_ids[2 * bpc:4 * bpc])
    assert all(bool((t == 0).all()) for t in raw), "blocks that failed to load were written"
    req = b.sched.requests["b"]
    assert req.num_computed_tokens == 2 * CHUNK  # vLLM truncated to the first bad block
    b.drain()  # recomputes the rest and finishes
    assert stored_chunks(server.socket, tokens)[0] == 4  # chunk 2 stored again once recomputed


def test_an_empty_step_and_an_abort_are_harmless(engines, server):
    e = engines(batched_tokens=48)
    e.add("r", prompt(7, 3 * CHUNK))
    e.step()  # 48 of 96 tokens: chunk 0 stored
    assert "r" in e.connector._requests
    e.sched.finish_requests("r", RequestStatus.FINISHED_ABORTED)  # aborted mid-prefill
    assert "r" not in e.connector._requests  # request_finished dropped its state
    out = e.schedule()  # nothing scheduled: the workers run the no-forward sequence
    assert out.total_num_scheduled_tokens == 0
    results = e.run(out)
    assert results[0][1] == set()


def test_tensor_parallel_ranks_have_their_own_namespaces(engines, server):
    import shmkv

    tokens = prompt(8, 3 * CHUNK + 3)
    a = engines(tp_size=2)
    a.add("a", tokens)
    a.drain()
    assert stored_chunks(server.socket, tokens, tp_size=2, rank=0)[0] == 3
    have1, keys = stored_chunks(server.socket, tokens, tp_size=2, rank=1)
    assert have1 == 3
    # Each rank loads its own KV (the formula differs per rank), byte-identical.
    b = engines(tp_size=2, layout="BHLNC")
    b.add("b", tokens)
    out = b.schedule()
    results = b.run(out)
    assert [r[0]["b"] for r in results] == [[], []]
    assert set().union(*(r[1] for r in results)) == set()
    # A chunk only rank 1 lost: rank 1 reports it, vLLM recomputes for both.
    with shmkv.Client(server.socket, model=_model_dir(), world_size=2, rank=1, dtype="bfloat16",
                      layout="NHD") as c:
        c.remove([keys[1]])
    c2 = engines(tp_size=2)
    c2.add("c", tokens)
    out = c2.schedule()
    results = c2.run(out)
    assert results[0][1] == set() and results[1][1] != set()
    c2.drain()


def test_unknown_extra_keys_are_refused_by_name(server):
    from shmkv.vllm import ShmkvConnector

    vc = make_config(server.socket, extra={"shmkv.sockt": "x"})
    with pytest.raises(ValueError, match=r"unknown shmkv extra-config keys \['shmkv.sockt'\]"):
        ShmkvConnector(vc, KVConnectorRole.SCHEDULER, make_kv_cache_config(vc))
    vc = make_config(server.socket, extra={"shmkv.chunk_tokens": 24})
    with pytest.raises(ValueError, match="shmkv.chunk_tokens 24 must be a positive multiple of vLLM's block size 16"):
        ShmkvConnector(vc, KVConnectorRole.SCHEDULER, make_kv_cache_config(vc))


def test_a_preempted_request_resumes_from_its_stored_chunks(engines, server):
    # 16 blocks (one is vLLM's null block): A (129 tokens, 9 blocks) and B (80 tokens, 5 blocks) fit
    # at first; their decodes then run out of blocks and vLLM preempts B, freeing its blocks. Without
    # vLLM's own prefix cache nothing of B survives locally: on resume the scheduler finds B's two
    # stored prompt chunks in shmkv and loads them into B's new blocks.
    e = engines(num_blocks=16, prefix_caching=False)
    a_tokens, b_tokens = prompt(10, 4 * CHUNK + 1), prompt(11, 2 * CHUNK + 16)
    e.add("A", a_tokens, max_tokens=24)
    e.add("B", b_tokens, max_tokens=40)
    e.step()
    assert stored_chunks(server.socket, b_tokens)[0] == 2
    preempted = resumed = None
    for _ in range(80):
        out = e.schedule()
        if "B" in out.preempted_req_ids:
            preempted = e.sched.requests["B"].num_preemptions
        # vLLM 0.33 sends a resumed request as a new one to its v2 model runner (the full block
        # list in NewRequestData), and in resumed_req_ids with its full block list otherwise.
        as_new = [r for r in out.scheduled_new_reqs if r.req_id == "B"]
        cached = out.scheduled_cached_reqs
        if preempted and (as_new or "B" in cached.resumed_req_ids):
            new_blocks = list(as_new[0].block_ids[0] if as_new else
                              cached.new_block_ids[cached.req_ids.index("B")][0])
            resumed = (out, new_blocks, e.sched.requests["B"].num_computed_tokens - out.num_scheduled_tokens["B"])
            before, errors, *_ = e.run(out)[0]
            break
        e.run(out)
    assert preempted == 1, "B was not preempted"
    assert resumed is not None, "B did not resume"
    out, new_blocks, start = resumed
    loads = [ld for ld in out.kv_connector_metadata.loads if ld.req_id == "B"]
    assert len(loads) == 1 and len(loads[0].keys) == 2 and start == 2 * CHUNK
    assert loads[0].block_ids == new_blocks[:2 * CHUNK // BS]  # into B's new blocks
    assert errors == set() and before["B"] == []  # the loaded prefix is B's KV, position for position
    assert e.last[0][4]["loaded_chunks"] == 2
    e.drain(limit=120)


def test_mla_through_vllms_mla_spec_is_stored_once_and_loaded_by_every_rank(engines, server):
    tokens = prompt(12, 3 * CHUNK + 7)
    a = engines(tp_size=2, mla=True)
    assert a.workers[0].shape == [NUM_BLOCKS, 1, BS, MLA_DIM]  # vLLM's [B, H, N, C] view of an MLA page
    a.add("a", tokens)
    a.drain()
    stats = [r[4] for r in a.last]
    assert stats[0]["stored_chunks"] == 3 and stats[1]["stored_chunks"] == 0  # rank 0 writes the one copy
    assert stored_chunks(server.socket, tokens, tp_size=2, rank=0, mla=True)[0] == 3
    assert stored_chunks(server.socket, tokens, tp_size=2, rank=1, mla=True)[0] == 0
    b = engines(tp_size=2, mla=True, layout="BHLNC")
    b.add("filler", prompt(13, 2 * BS))
    b.step()
    b.add("b", tokens)
    out = b.schedule()
    assert [r for r in out.scheduled_new_reqs if r.req_id == "b"][0].num_computed_tokens == 3 * CHUNK
    results = b.run(out)
    assert [r[0]["b"] for r in results] == [[], []]  # both ranks hold rank 0's latent, element for element
    assert [r[1] for r in results] == [set(), set()]
    assert [r[4]["loaded_chunks"] for r in results] == [3, 3]
    b.drain()
