"""shmkv.sglang.ShmkvStorage against SGLang 0.5.23's real classes and a real shmkv-server.

Run with the interpreter of .venv-engines/sglang (scripts/engines-venv.sh); skipped without SGLang.
Real SGLang parts: HiCacheStorage (the base class), HiCacheStorageConfig, StorageBackendFactory
(the `dynamic` loader, which builds the backend as cls(storage_config, kwargs)), the host KV pools
MHATokenToKVPoolHost and MLATokenToKVPoolHost (built on the CPU from MHABufferInfo / MLABufferInfo
over CPU tensors, pin_memory off), their alloc / get_data_page / get_dummy_flat_data_page /
set_from_flat_data_page, StorageMetrics, and get_hash_str (the page hashes). Stand-in: the cache
controller's call sequence (attach: create_backend then register_mem_pool_host; prefetch:
batch_exists then batch_get_v1 per batch; backup: batch_set_v1), written from
docs/sglang.md, since the controller needs a running scheduler and a GPU device pool.
"""
import random
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sglang.srt.mem_cache.hicache_storage")

from sglang.srt.mem_cache.device_pool_info import KVBufferLayout, KVBuffers, MHABufferInfo, MLABufferInfo  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig  # noqa: E402
from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost  # noqa: E402
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402
from sglang.srt.mem_cache.utils import get_hash_str  # noqa: E402
from sglang.srt.observability.metrics_collector import StorageMetrics  # noqa: E402

from conftest import Server  # noqa: E402
from shmkv.sglang import ShmkvStorage, _key_bytes  # noqa: E402

L, H, D, P = 4, 2, 64, 16  # MHA: layers, KV heads per rank, head_dim, page_size
MLA_RANK, MLA_ROPE = 48, 16  # MLA: kv_lora_rank, qk_rope_head_dim (kv_cache_dim 64)
HOST_TOKENS = 96 * P
MHA_LAYOUTS = ["layer_first", "page_first", "page_first_direct", "page_head"]
MLA_LAYOUTS = ["layer_first", "page_first", "page_first_direct"]


def mha_pool(layout, dtype=torch.float16, seed=None):
    dev = tuple(torch.zeros(64 + P, H, D, dtype=dtype) for _ in range(L))
    ptrs = torch.tensor([t.data_ptr() for t in dev], dtype=torch.uint64)
    info = MHABufferInfo(buffers=KVBuffers(k=dev, v=dev, k_data_ptrs=ptrs, v_data_ptrs=ptrs, layout=KVBufferLayout.NHD),
                         page_size=P, head_num=H, head_dim=D, v_head_dim=D, dtype=dtype, device=torch.device("cpu"))
    pool = MHATokenToKVPoolHost(info, 2.0, 0, P, layout, pin_memory=False, device="cpu", device_capacity_tokens=64,
                                start_layer=0, end_layer=L, host_token_capacity=HOST_TOKENS)
    fill(pool, seed)
    return pool


def mla_pool(layout, seed=None):
    dev = tuple(torch.zeros(64 + P, 1, MLA_RANK + MLA_ROPE, dtype=torch.bfloat16) for _ in range(L))
    ptrs = torch.tensor([t.data_ptr() for t in dev], dtype=torch.uint64)
    info = MLABufferInfo(buffers=dev, data_ptrs=ptrs, layer_indices=tuple(range(L)), device_layer_num=L, page_size=P,
                         kv_lora_rank=MLA_RANK, qk_rope_head_dim=MLA_ROPE, kv_cache_dim=MLA_RANK + MLA_ROPE,
                         dtype=torch.bfloat16, device=torch.device("cpu"))
    pool = MLATokenToKVPoolHost(info, 2.0, 0, P, layout, pin_memory=False, device="cpu", device_capacity_tokens=64,
                                start_layer=0, end_layer=L, target_layer_num=L, host_token_capacity=HOST_TOKENS)
    fill(pool, seed)
    return pool


def fill(pool, seed):
    """Random values (seed given) or a poison pattern (seed None: a page never loaded stays so)."""
    if seed is None:
        pool.kv_buffer.fill_(-7.0)
    else:
        g = torch.Generator().manual_seed(seed)
        pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape, generator=g).to(pool.kv_buffer.dtype))


def canonical(pool, index):
    """The page starting at host index `index` as [2, L, P, H, D] (MLA: [L, P, 1, dim]), read from
    the host buffer by its layout's shape (docs/sglang.md), independently of the adapter."""
    b, layout = pool.kv_buffer, pool.layout
    if isinstance(pool, MLATokenToKVPoolHost):
        if layout == "layer_first":
            return b[:, index:index + P]
        if layout == "page_first":
            return b[index:index + P].transpose(0, 1)
        return b[index // P]
    if layout == "layer_first":
        return b[:, :, index:index + P]
    if layout == "page_first":
        return b[:, index:index + P].permute(0, 2, 1, 3, 4)
    if layout == "page_first_direct":
        return b[:, index // P]
    return b[:, index // P].permute(0, 3, 2, 1, 4)  # page_head (2, H, P, L, D)


def storage_config(*, tp_rank=0, tp_size=1, mla=False, model="org/model-a", extra=None, layout="page_first"):
    extra_config = {"backend_name": "shmkv", "module_path": "shmkv.sglang", "class_name": "ShmkvStorage",
                    "interface_v1": 1, **(extra or {})}
    return HiCacheStorageConfig(tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1, attn_cp_rank=0,
                                attn_cp_size=1, is_mla_model=mla, enable_storage_metrics=True,
                                is_page_first_layout=layout.startswith("page_first"), model_name=model,
                                extra_config=extra_config)


def attach(server, pool, **cfg):
    """What the cache controller's attach_storage_backend does: the real factory, then register."""
    cfg.setdefault("extra", {})["shmkv.socket"] = server.socket
    config = storage_config(mla=isinstance(pool, MLATokenToKVPoolHost), layout=pool.layout, **cfg)
    backend = StorageBackendFactory.create_backend("dynamic", config, pool)
    backend.register_mem_pool_host(pool)
    return backend


def page_hashes(seed, pages):
    tokens = [random.Random(seed).randrange(150000) for _ in range(pages * P)]
    return get_hash_str(tokens, None, page_size=P)


def alloc(pool, pages):
    idx = pool.alloc(pages * P)
    assert idx is not None and len(idx) == pages * P
    return idx


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    assert s.stop() == 0


def test_the_dynamic_factory_builds_the_backend_on_sglangs_base_class(server):
    pool = mha_pool("page_first", seed=1)
    backend = attach(server, pool)
    assert isinstance(backend, ShmkvStorage) and isinstance(backend, HiCacheStorage)
    assert backend.mem_pool_host is pool
    assert backend.page_nbytes == 2 * L * P * H * D * 2
    assert backend.batch_exists(page_hashes(1, 3)) == 0
    backend.close()


@pytest.mark.parametrize("kind,layout", [("mha", l) for l in MHA_LAYOUTS] + [("mla", l) for l in MLA_LAYOUTS])
def test_four_threads_store_and_load_fresh_host_pages_identically(server, kind, layout):
    make = mha_pool if kind == "mha" else mla_pool
    src_pool, dst_pool = make(layout, seed=2), make(layout, seed=None)
    writer, reader = attach(server, src_pool), attach(server, dst_pool)
    threads, pages_each, rounds = 4, 6, 3
    jobs = []  # (hashes, source host indices, destination host indices) per thread and round
    for t in range(threads):
        for r in range(rounds):
            jobs.append((page_hashes(100 * t + r, pages_each), alloc(src_pool, pages_each), alloc(dst_pool, pages_each)))
    errors, barrier = [], threading.Barrier(threads)

    def work(t):
        try:
            barrier.wait()
            for hashes, src, dst in jobs[t * rounds:(t + 1) * rounds]:
                assert writer.batch_set_v1(hashes, src) == [True] * pages_each
                assert reader.batch_exists(hashes) == pages_each
                assert reader.batch_get_v1(hashes, dst) == [True] * pages_each
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join(timeout=120)
    assert not errors, errors
    for hashes, src, dst in jobs:
        for i in range(pages_each):
            assert torch.equal(canonical(dst_pool, int(dst[i * P])), canonical(src_pool, int(src[i * P]))), layout
    # Pages nobody loaded into stay as they were.
    untouched = alloc(dst_pool, 1)
    assert bool((canonical(dst_pool, int(untouched[0])) == -7.0).all())
    # The object is the page in shmkv's canonical chunk layout, whatever the host layout.
    hashes, src, _ = jobs[0]
    raw = writer.client.get(_key_bytes(hashes[0]))
    assert raw == canonical(src_pool, int(src[0])).contiguous().view(torch.uint8).numpy().tobytes()
    stats = writer.get_stats()
    assert isinstance(stats, StorageMetrics) and sum(stats.backup_pgs) == threads * rounds * pages_each
    assert sum(reader.get_stats().prefetch_pgs) == threads * rounds * pages_each
    assert writer.get_stats().backup_pgs == []  # the lists restart after each call


def test_pages_stored_from_one_layout_load_into_another(server):
    hashes = page_hashes(3, 5)
    src_pool = mha_pool("page_first", seed=3)
    src = alloc(src_pool, 5)
    assert attach(server, src_pool).batch_set_v1(hashes, src) == [True] * 5
    for layout in ["layer_first", "page_first_direct", "page_head"]:
        pool = mha_pool(layout)
        dst = alloc(pool, 5)
        assert attach(server, pool).batch_get_v1(hashes, dst) == [True] * 5
        for i in range(5):
            assert torch.equal(canonical(pool, int(dst[i * P])), canonical(src_pool, int(src[i * P]))), layout


def test_exists_and_get_count_the_leading_run_only(server):
    pool = mha_pool("layer_first", seed=4)
    backend = attach(server, pool)
    hashes = page_hashes(4, 4)
    src = alloc(pool, 4)
    pages = src.reshape(4, P)
    assert backend.batch_set_v1([hashes[0], hashes[1], hashes[3]], torch.cat([pages[0], pages[1], pages[3]])) == \
        [True] * 3
    assert backend.batch_exists(hashes) == 2
    assert backend.exists(hashes[3]) and not backend.exists(hashes[2])
    fresh = mha_pool("layer_first")
    dst = alloc(fresh, 4)
    assert attach(server, fresh).batch_get_v1(hashes, dst) == [True, True, False, False]
    assert torch.equal(canonical(fresh, int(dst[P])), canonical(pool, int(src[P])))
    assert bool((canonical(fresh, int(dst[3 * P])) == -7.0).all())  # after the gap: not written
    # Storing the same pages again is a success that copies nothing.
    assert backend.batch_set_v1(hashes[:2], src[:2 * P]) == [True, True]
    assert backend.counters["existing_pages"] == 2


def test_two_tp_ranks_keep_their_own_pages_under_the_same_keys(server):
    hashes = page_hashes(5, 3)
    pools = [mha_pool("page_first", seed=50 + r) for r in range(2)]
    ranks = [attach(server, pools[r], tp_rank=r, tp_size=2) for r in range(2)]
    src = [alloc(p, 3) for p in pools]
    assert ranks[0].batch_set_v1(hashes, src[0]) == [True] * 3
    assert ranks[1].batch_exists(hashes) == 0  # rank 1's heads are not rank 0's
    assert ranks[1].batch_set_v1(hashes, src[1]) == [True] * 3
    for r in range(2):
        fresh = mha_pool("page_first")
        dst = alloc(fresh, 3)
        assert attach(server, fresh, tp_rank=r, tp_size=2).batch_get_v1(hashes, dst) == [True] * 3
        for i in range(3):
            assert torch.equal(canonical(fresh, int(dst[i * P])), canonical(pools[r], int(src[r][i * P])))


def test_mla_is_written_once_by_rank_0_and_read_by_every_rank(server):
    hashes = page_hashes(6, 3)
    pools = [mla_pool("page_first", seed=60 + r) for r in range(2)]
    ranks = [attach(server, pools[r], tp_rank=r, tp_size=2) for r in range(2)]
    src = [alloc(p, 3) for p in pools]
    assert ranks[1].batch_set_v1(hashes, src[1]) == [True] * 3  # not the writer: nothing stored
    assert ranks[1].batch_exists(hashes) == 0
    assert ranks[0].batch_set_v1(hashes, src[0]) == [True] * 3
    for r in range(2):
        fresh = mla_pool("layer_first")
        dst = alloc(fresh, 3)
        reader = attach(server, fresh, tp_rank=r, tp_size=2)
        assert reader.batch_exists(hashes) == 3
        assert reader.batch_get_v1(hashes, dst) == [True] * 3
        for i in range(3):
            assert torch.equal(canonical(fresh, int(dst[i * P])), canonical(pools[0], int(src[0][i * P])))


def test_another_models_pages_are_never_seen(server):
    hashes = page_hashes(7, 3)
    pool = mha_pool("page_first", seed=7)
    assert attach(server, pool).batch_set_v1(hashes, alloc(pool, 3)) == [True] * 3
    other_pool = mha_pool("page_first")
    other = attach(server, other_pool, model="org/model-b")
    assert other.batch_exists(hashes) == 0 and not other.exists(hashes[0])
    dst = alloc(other_pool, 3)
    assert other.batch_get_v1(hashes, dst) == [False] * 3
    assert bool((canonical(other_pool, int(dst[0])) == -7.0).all())
    fp32 = mha_pool("page_first", dtype=torch.float32)  # another KV dtype is another namespace too
    assert attach(server, fp32).batch_exists(hashes) == 0


@pytest.mark.parametrize("layout", ["page_first", "layer_first", "page_head"])
def test_generic_path_round_trips_flat_pages_and_shares_objects_with_v1(server, layout):
    pool = mha_pool(layout, seed=8)
    backend = attach(server, pool)
    hashes = page_hashes(8, 3)
    src = alloc(pool, 3)
    # Backup through the generic path: flat pages in the pool's own element order.
    assert backend.batch_set(hashes[:2], [pool.get_data_page(int(src[i * P])) for i in range(2)])
    assert backend.set(hashes[2], pool.get_data_page(int(src[2 * P])))
    fresh = mha_pool(layout)
    reader = attach(server, fresh)
    got = reader.batch_get(hashes + page_hashes(9, 1), [fresh.get_dummy_flat_data_page() for _ in range(4)])
    assert got[3] is None and all(g is not None for g in got[:3])
    dst = alloc(fresh, 3)
    for i in range(3):
        fresh.set_from_flat_data_page(int(dst[i * P]), got[i])  # what the controller does with them
        assert torch.equal(canonical(fresh, int(dst[i * P])), canonical(pool, int(src[i * P])))
    # The same objects through the zero-copy path, and a single get.
    v1 = alloc(fresh, 3)
    assert reader.batch_get_v1(hashes, v1) == [True] * 3
    assert torch.equal(canonical(fresh, int(v1[0])), canonical(pool, int(src[0])))
    one = reader.get(hashes[1], fresh.get_dummy_flat_data_page())
    assert torch.equal(one, pool.get_data_page(int(src[P])))
    assert reader.get(page_hashes(10, 1)[0], fresh.get_dummy_flat_data_page()) is None


def test_a_full_pool_stores_a_leading_run(tmp_path):
    server = Server(tmp_path, pool_size="1MiB")  # 1 MiB holds fewer than 32 pages of 32 KiB
    try:
        pool = mha_pool("page_first", seed=11)
        backend = attach(server, pool)
        hashes = page_hashes(11, 40)
        ok = backend.batch_set_v1(hashes, alloc(pool, 40))
        stored = ok.index(False)
        assert 0 < stored < 40 and ok == [True] * stored + [False] * (40 - stored)
        assert backend.batch_exists(hashes) == stored
    finally:
        assert server.stop() == 0


def test_clear_removes_this_ranks_pages_only(server):
    hashes = page_hashes(12, 2)
    pools = [mha_pool("page_first", seed=12 + r) for r in range(2)]
    ranks = [attach(server, pools[r], tp_rank=r, tp_size=2) for r in range(2)]
    for r in range(2):
        assert ranks[r].batch_set_v1(hashes, alloc(pools[r], 2)) == [True, True]
    ranks[0].clear()
    assert ranks[0].batch_exists(hashes) == 0 and ranks[1].batch_exists(hashes) == 2


def test_bad_input_is_rejected_with_a_clear_error(server):
    pool = mha_pool("page_first", seed=13)
    backend = attach(server, pool)
    hashes = page_hashes(13, 2)
    with pytest.raises(ValueError, match="30 host indices for 2 keys of 16-token pages; expected 32"):
        backend.batch_set_v1(hashes, alloc(pool, 2)[:30])
    idx = alloc(pool, 2)
    with pytest.raises(ValueError, match="host_indices are not whole pages"):
        backend.batch_get_v1(hashes, idx + 1)
    with pytest.raises(ValueError, match=r"unknown shmkv extra-config keys \['shmkv.sockt'\]"):
        ShmkvStorage(storage_config(extra={"shmkv.sockt": "/x"}), {})
    with pytest.raises(RuntimeError, match="register_mem_pool_host has not been called"):
        ShmkvStorage(storage_config(extra={"shmkv.socket": server.socket}), {}).batch_exists(hashes)
    with pytest.raises(ValueError, match="is_mla_model=True but the host pool is MHATokenToKVPoolHost"):
        ShmkvStorage(storage_config(mla=True, extra={"shmkv.socket": server.socket}), {}).register_mem_pool_host(pool)
    with pytest.raises(ValueError, match="a flat page of 5 elements"):
        backend.set(hashes[0], torch.zeros(5, dtype=torch.float16))


def test_a_server_that_is_gone_is_a_miss_not_an_error(tmp_path):
    server = Server(tmp_path)
    pool = mha_pool("page_first", seed=14)
    backend = attach(server, pool)
    hashes = page_hashes(14, 2)
    assert server.stop() == 0
    assert backend.batch_get_v1(hashes, alloc(pool, 2)) == [False, False]
    assert backend.batch_set_v1(hashes, alloc(pool, 2)) == [False, False]
