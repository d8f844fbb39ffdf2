"""shmkv.KVConnector against a real server: the engine-facing store / lookup / retrieve."""
import time

import numpy as np
import pytest

from conftest import ServerProcess

LAYERS, HEADS, HEAD, BLOCK, CHUNK = 4, 4, 32, 16, 64
BPC = CHUNK // BLOCK
NUM_BLOCKS = 64
CHUNK_BYTES = 2 * LAYERS * CHUNK * HEADS * HEAD * 4  # float32: 256 KiB


def cache(value=None, seed=0):
    shape = (2, NUM_BLOCKS, BLOCK, HEADS, HEAD)
    if value is not None:
        return [np.full(shape, value, np.float32) for _ in range(LAYERS)]
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(LAYERS)]


def connector(shmkv, server, **kw):
    return shmkv.KVConnector(server.socket, model="test-llama", dtype="float32", layout="NHD", chunk_tokens=CHUNK,
                             **kw)


def tokens(n, seed=0):
    return list(np.random.default_rng(seed).integers(0, 50000, size=n))


def assert_blocks_equal(dst, dst_blocks, src, src_blocks):
    for d, s in zip(dst, src):
        np.testing.assert_array_equal(d[:, dst_blocks], s[:, src_blocks])


def test_store_then_retrieve_into_other_blocks(shmkv_module, server):
    src = cache(seed=1)
    toks = tokens(4 * CHUNK + 10)  # 4 full chunks and a partial one (never stored)
    src_blocks = list(range(0, 5 * BPC))
    with connector(shmkv_module, server) as c:
        assert c.lookup(toks) == 0
        r = c.store(toks, src, src_blocks)
        assert (r.stored_chunks, r.existing_chunks, r.skipped_chunks) == (4, 0, 0)
        assert r.bytes_written == 4 * CHUNK_BYTES
        assert c.lookup(toks) == 4 * CHUNK
        dst = cache(value=-1.0)
        dst_blocks = list(range(NUM_BLOCKS - 1, NUM_BLOCKS - 1 - 5 * BPC, -1))
        assert c.retrieve(toks, dst, dst_blocks) == 4 * CHUNK
        assert_blocks_equal(dst, dst_blocks[:4 * BPC], src, src_blocks[:4 * BPC])
        # the partial chunk's block was not written
        assert (dst[0][:, dst_blocks[4 * BPC:]] == -1.0).all()
        st = c.stats()
        assert st["pinned_objects"] == 0 and st["reserved_objects"] == 0  # every slot released


def test_another_worker_process_reuses_a_stored_prefix(shmkv_module, server):
    src = cache(seed=2)
    toks = tokens(3 * CHUNK, seed=5)
    with connector(shmkv_module, server, instance_id="rank-a") as a, \
            connector(shmkv_module, server, instance_id="rank-b") as b:
        a.store(toks, src, list(range(3 * BPC)))
        dst = cache(value=0.0)
        assert b.retrieve(toks, dst, list(range(10, 10 + 3 * BPC))) == 3 * CHUNK
        assert_blocks_equal(dst, list(range(10, 10 + 3 * BPC)), src, list(range(3 * BPC)))


def test_store_of_a_prompt_whose_first_chunks_exist_stores_only_the_rest(shmkv_module, server):
    src = cache(seed=3)
    toks = tokens(5 * CHUNK, seed=9)
    with connector(shmkv_module, server) as c:
        c.store(toks[:2 * CHUNK], src, list(range(2 * BPC)))
        used = c.stats()["used_bytes"]
        r = c.store(toks, src, list(range(5 * BPC)))
        assert (r.stored_chunks, r.existing_chunks, r.bytes_written) == (3, 2, 3 * CHUNK_BYTES)
        assert c.stats()["used_bytes"] - used == 3 * CHUNK_BYTES
        assert c.lookup(toks) == 5 * CHUNK


def test_a_diverging_prompt_shares_only_the_common_chunks(shmkv_module, server):
    src = cache(seed=4)
    a = tokens(3 * CHUNK, seed=11)
    b = a[:CHUNK + 5] + tokens(2 * CHUNK - 5, seed=12)  # diverges inside chunk 1
    with connector(shmkv_module, server) as c:
        c.store(a, src, list(range(3 * BPC)))
        assert c.lookup(b) == CHUNK


def test_retrieve_after_the_tail_was_evicted_loads_exactly_the_surviving_prefix(shmkv_module, server_bin, tmp_path,
                                                                                 segment_name):
    srv = ServerProcess(server_bin, tmp_path, segment_name, "8MiB")
    try:
        src = cache(seed=6)
        toks = tokens(6 * CHUNK, seed=13)
        with connector(shmkv_module, srv) as c:
            c.store(toks, src, list(range(6 * BPC)))
            assert c.lookup(toks) == 6 * CHUNK
            # 8 MiB hold 32 objects of 256 KiB: 28 newer ones push 2 of the chain's 6 out, tail first.
            # (No lookups in between: a lookup counts as a use and would protect the chain.)
            for filler in range(28):
                assert c.client.put(b"filler-%d" % filler, bytes(CHUNK_BYTES))
            survived = c.lookup(toks) // CHUNK
            assert 0 < survived < 6, f"eviction must take the tail first, {survived} chunks survived"
            dst = cache(value=-1.0)
            blocks = list(range(30, 30 + 6 * BPC))
            assert c.retrieve(toks, dst, blocks) == survived * CHUNK
            assert_blocks_equal(dst, blocks[:survived * BPC], src, list(range(survived * BPC)))
            assert (dst[1][:, blocks[survived * BPC:]] == -1.0).all()
    finally:
        assert srv.stop() == 0


def test_retrieve_stops_at_a_missing_chunk_and_releases_the_pins_after_it(shmkv_module, server):
    src = cache(seed=7)
    toks = tokens(4 * CHUNK, seed=14)
    with connector(shmkv_module, server) as c:
        c.store(toks, src, list(range(4 * BPC)))
        c.client.remove([c.chunk_keys(toks)[1]])
        dst = cache(value=-1.0)
        assert c.retrieve(toks, dst, list(range(4 * BPC))) == CHUNK
        assert c.stats()["pinned_objects"] == 0


def test_skip_first_n_tokens_keeps_the_engines_own_blocks(shmkv_module, server):
    src = cache(seed=8)
    toks = tokens(3 * CHUNK, seed=15)
    with connector(shmkv_module, server) as c:
        c.store(toks, src, list(range(3 * BPC)))
        dst = cache(value=5.0)
        skip = CHUNK + BLOCK  # chunk 0 is not even fetched; chunk 1 from its second block on
        assert c.retrieve(toks, dst, list(range(3 * BPC)), skip_first_n_tokens=skip) == 3 * CHUNK - skip
        assert (dst[0][:, :BPC + 1] == 5.0).all()
        assert_blocks_equal(dst, list(range(BPC + 1, 3 * BPC)), src, list(range(BPC + 1, 3 * BPC)))
        with pytest.raises(ValueError, match="skip"):
            c.retrieve(toks, dst, list(range(3 * BPC)), skip_first_n_tokens=CHUNK + 3)
        assert c.stats()["pinned_objects"] == 0  # released even though the scatter failed


def test_errors_release_every_reservation(shmkv_module, server):
    with connector(shmkv_module, server) as c:
        toks = tokens(2 * CHUNK, seed=16)
        bad = [np.zeros((2, NUM_BLOCKS, BLOCK, HEADS, HEAD), np.float16) for _ in range(LAYERS)]
        with pytest.raises(ValueError, match="dtype float16 does not match the expected dtype float32"):
            c.store(toks, bad, list(range(2 * BPC)))
        with pytest.raises(ValueError):
            c.store(toks, cache(seed=1), list(range(BPC)))  # too few blocks for two chunks
        st = c.stats()
        assert st["reserved_objects"] == 0 and st["objects"] == 0
        assert c.lookup(toks) == 0


def test_namespaces_keep_models_and_ranks_apart(shmkv_module, server):
    src = cache(seed=9)
    toks = tokens(2 * CHUNK, seed=17)
    with connector(shmkv_module, server) as a:
        a.store(toks, src, list(range(2 * BPC)))
        with shmkv_module.KVConnector(server.socket, model="other-model", dtype="float32", chunk_tokens=CHUNK) as b:
            assert b.lookup(toks) == 0
        with connector(shmkv_module, server, world_size=2, rank=1) as r1:
            assert r1.lookup(toks) == 0
        with pytest.raises(ValueError, match="rank 2"):
            connector(shmkv_module, server, world_size=2, rank=2)


def test_log_level_of_an_embedding_process_comes_from_the_environment(build_dir, server):
    import os
    import subprocess
    import sys

    code = (f"import sys; sys.path.insert(0, {str(build_dir / 'python')!r}); import shmkv; "
            f"c = shmkv.Client({server.socket!r}); c.close()")

    def stderr_with(level):
        env = dict(os.environ, SHMKV_LOG_LEVEL=level)
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=60).stderr

    assert "[debug]" in stderr_with("debug")  # the CUDA pinning decision is logged at debug, once
    assert "[debug]" not in stderr_with("info")
    assert "[info]" not in stderr_with("warn")


def test_the_first_lookup_after_a_server_restart_succeeds(shmkv_module, server):
    import signal

    src = cache(seed=10)
    toks = tokens(2 * CHUNK, seed=18)
    with connector(shmkv_module, server) as c:
        c.store(toks, src, list(range(2 * BPC)))
        assert c.lookup(toks) == 2 * CHUNK
        server.stop(signal.SIGKILL)
        server.start()  # same socket and segment name
        assert c.lookup(toks) == 0  # no error: lookup is retried once on the new server
        assert c.stats()["objects"] == 0
        r = c.store(toks, src, list(range(2 * BPC)))
        assert r.stored_chunks == 2
        dst = cache(value=-1.0)
        assert c.retrieve(toks, dst, list(range(2 * BPC))) == 2 * CHUNK
        assert_blocks_equal(dst, list(range(2 * BPC)), src, list(range(2 * BPC)))


# ---- expired leases: a stalled step outlives the server's --reserve-ttl / --pin-ttl -----------

TTL = 0.2
STALL = 0.6  # past the TTL and the server's expiry sweep


@pytest.fixture
def short_ttl_server(server_bin, tmp_path, segment_name):
    srv = ServerProcess(server_bin, tmp_path, segment_name, "64MiB", "--reserve-ttl", str(TTL), "--pin-ttl", str(TTL))
    yield srv
    assert srv.stop() == 0


class LateLease:
    """Delegates to a real Client, but takes the lease (pin or reservation) of the key at `index`
    first and stalls past the TTL before taking the others: that one lease expires during the
    connector's call, the others do not."""

    def __init__(self, client, index):
        self._c, self._i = client, index
        self.last_statuses = []

    def __getattr__(self, name):
        return getattr(self._c, name)

    def _split(self, call, keys, *extra):
        i = self._i
        first = call([keys[i]], *[[e[i]] for e in extra])
        first_st = self._c.last_statuses
        time.sleep(STALL)
        rest = call(keys[:i] + keys[i + 1:], *[e[:i] + e[i + 1:] for e in extra])
        rest_st = self._c.last_statuses
        self.last_statuses = rest_st[:i] + first_st + rest_st[i:]
        return rest[:i] + first + rest[i:]

    def prepare_retrieve(self, keys, *, with_statuses=False):
        views = self._split(self._c.prepare_retrieve, keys)
        return (views, self.last_statuses) if with_statuses else views

    def prepare_store(self, keys, sizes, *, with_statuses=False):
        views = self._split(self._c.prepare_store, keys, sizes)
        return (views, self.last_statuses) if with_statuses else views


def test_client_commits_of_expired_leases_raise_expired_error_with_indices(shmkv_module, short_ttl_server):
    with shmkv_module.Client(short_ttl_server.socket, timeout=5.0) as c:
        c.prepare_store([b"b"], [4096])
        time.sleep(STALL)
        c.prepare_store([b"a", b"c"], [4096, 4096])
        with pytest.raises(shmkv_module.ExpiredError) as exc:
            c.commit_store([b"a", b"b", b"c"])
        assert isinstance(exc.value, shmkv_module.Error) and exc.value.indices == [1]
        assert "Expired" in str(exc.value)
        assert c.lookup([b"a"]) == 0  # nothing committed
        c.commit_store([b"a", b"c"])  # still reserved

        c.prepare_retrieve([b"c"])
        time.sleep(STALL)
        c.prepare_retrieve([b"a"])
        c.post_commit_retrieve([b"a", b"c"])
        with pytest.raises(shmkv_module.ExpiredError, match="posted commit_retrieve") as exc:
            c.stats()  # a posted commit's expiry comes with the next call
        assert exc.value.indices == [1]
        assert c.stats()["pinned_objects"] == 0


def test_retrieve_counts_chunks_from_the_first_expired_pin_as_not_loaded(shmkv_module, short_ttl_server):
    src = cache(seed=20)
    toks = tokens(4 * CHUNK, seed=21)
    with connector(shmkv_module, short_ttl_server) as c:
        c.store(toks, src, list(range(4 * BPC)))
        real = c.client
        c.client = LateLease(real, index=2)  # chunk 2's pin expires while the chunks are copied
        dst = cache(value=-1.0)
        assert c.retrieve(toks, dst, list(range(4 * BPC))) == 2 * CHUNK  # known before it returns
        assert_blocks_equal(dst, list(range(2 * BPC)), src, list(range(2 * BPC)))
        c.client = real
        st = c.stats()
        assert st["pinned_objects"] == 0  # the other chunks' pins were released with the Expired reply


def test_retrieve_with_every_pin_expired_loads_nothing(shmkv_module, short_ttl_server, monkeypatch):
    src = cache(seed=22)
    toks = tokens(2 * CHUNK, seed=23)
    with connector(shmkv_module, short_ttl_server) as c:
        c.store(toks, src, list(range(2 * BPC)))
        scatter = c._scatter

        def stalled_scatter(*args):
            stream = scatter(*args)
            time.sleep(STALL)  # a copy (or stream sync) that outlives --pin-ttl
            return stream

        monkeypatch.setattr(c, "_scatter", stalled_scatter)
        dst = cache(value=-1.0)
        assert c.retrieve(toks, dst, list(range(2 * BPC)), skip_first_n_tokens=BLOCK) == 0
        assert c.stats()["pinned_objects"] == 0
        assert c.lookup(toks) == 2 * CHUNK  # the objects themselves are intact


def test_store_commits_the_chunks_before_an_expired_reservation_and_releases_the_rest(shmkv_module,
                                                                                     short_ttl_server):
    src = cache(seed=24)
    toks = tokens(4 * CHUNK, seed=25)
    with connector(shmkv_module, short_ttl_server) as c:
        real = c.client
        c.client = LateLease(real, index=1)  # chunk 1's reservation expires during the copy
        r = c.store(toks, src, list(range(4 * BPC)))
        c.client = real
        assert (r.stored_chunks, r.existing_chunks, r.skipped_chunks) == (1, 0, 3)
        assert r.bytes_written == CHUNK_BYTES
        assert c.lookup(toks) == CHUNK
        st = c.stats()
        assert st["reserved_objects"] == 0 and st["quarantined_slots"] == 0  # nothing left held
        dst = cache(value=-1.0)
        assert c.retrieve(toks, dst, list(range(4 * BPC))) == CHUNK
        assert_blocks_equal(dst, list(range(BPC)), src, list(range(BPC)))
        assert c.store(toks, src, list(range(4 * BPC))).stored_chunks == 3  # a later store completes it


def test_store_with_every_reservation_expired_stores_nothing(shmkv_module, short_ttl_server, monkeypatch):
    src = cache(seed=26)
    toks = tokens(2 * CHUNK, seed=27)
    with connector(shmkv_module, short_ttl_server) as c:
        gather = c._gather

        def stalled_gather(*args):
            stream = gather(*args)
            time.sleep(STALL)
            return stream

        monkeypatch.setattr(c, "_gather", stalled_gather)
        r = c.store(toks, src, list(range(2 * BPC)))
        assert (r.stored_chunks, r.skipped_chunks, r.bytes_written) == (0, 2, 0)
        st = c.stats()
        assert st["objects"] == 0 and st["reserved_objects"] == 0 and st["quarantined_slots"] == 0


def test_a_cache_of_the_wrong_dtype_is_refused_even_when_nothing_is_copied(shmkv_module, server):
    src = cache(seed=31)
    toks = tokens(2 * CHUNK, seed=32)
    wrong = [a.astype(np.float64) for a in src]
    with connector(shmkv_module, server) as c:
        c.store(toks, src, list(range(2 * BPC)))
        # Every chunk is stored already: no gather runs, and still the dtype is checked.
        with pytest.raises(Exception, match="dtype"):
            c.store(toks, wrong, list(range(2 * BPC)))
        # Nothing stored for these tokens: no scatter runs, and still the dtype is checked.
        with pytest.raises(Exception, match="dtype"):
            c.retrieve(tokens(2 * CHUNK, seed=33), wrong, list(range(2 * BPC)))
        assert c.lookup(toks) == 2 * CHUNK  # nothing lost
