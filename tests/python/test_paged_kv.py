"""shmkv.gather / shmkv.scatter over numpy arrays and torch tensors, checked element for element
against a numpy reference written from the layout formulas of docs/paged-kv.md."""
import numpy as np
import pytest

LAYERS, HEADS, HEAD, BLOCK, CHUNK, NUM_BLOCKS = 3, 2, 8, 4, 16, 40
BPC = CHUNK // BLOCK


def make_cache(layout, dtype=np.float32, seed=0, mla_dim=24):
    rng = np.random.default_rng(seed)
    shape = {"NHD": (2, NUM_BLOCKS, BLOCK, HEADS, HEAD), "HND": (2, NUM_BLOCKS, HEADS, BLOCK, HEAD),
             "MLA": (NUM_BLOCKS, BLOCK, mla_dim)}[layout]
    if np.dtype(dtype).kind == "u":
        return [rng.integers(0, 255, size=shape, dtype=dtype) for _ in range(LAYERS)]
    return [rng.standard_normal(shape).astype(dtype) for _ in range(LAYERS)]


def reference_chunk(kv, layout, block_ids, c):
    """The chunk object of chunk c: [2, layers, tokens, heads*head] or [layers, tokens, dim]."""
    blocks = block_ids[c * BPC:(c + 1) * BPC]
    if layout == "MLA":
        return np.stack([layer[blocks].reshape(CHUNK, -1) for layer in kv])
    per_kv = []
    for k in range(2):
        rows = []
        for layer in kv:
            x = layer[k][blocks]  # NHD: [bpc, block, heads, head]; HND: [bpc, heads, block, head]
            if layout == "HND":
                x = x.transpose(0, 2, 1, 3)
            rows.append(x.reshape(CHUNK, -1))
        per_kv.append(np.stack(rows))
    return np.stack(per_kv)


def chunk_buffers(shmkv, kv, layout, n):
    nbytes = shmkv.chunk_nbytes(kv, layout=layout, chunk_tokens=CHUNK)
    return [np.zeros(nbytes, dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("layout", ["NHD", "HND", "MLA"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8])
def test_gather_matches_the_reference_and_scatter_restores_it(shmkv_module, layout, dtype):
    kv = make_cache(layout, dtype)
    block_ids = list(np.random.default_rng(1).permutation(NUM_BLOCKS)[:3 * BPC])
    out = chunk_buffers(shmkv_module, kv, layout, 3)
    shmkv_module.gather(kv, block_ids, [0, 1, 2], out, layout=layout, chunk_tokens=CHUNK)
    for c in range(3):
        np.testing.assert_array_equal(out[c].view(dtype), reference_chunk(kv, layout, block_ids, c).ravel())
    target = [np.zeros_like(layer) for layer in kv]
    shmkv_module.scatter(out, target, block_ids, layout=layout, chunk_tokens=CHUNK)
    for layer, orig in zip(target, kv):
        blocks = np.array(block_ids)
        if layout == "MLA":
            np.testing.assert_array_equal(layer[blocks], orig[blocks])
            untouched = np.setdiff1d(np.arange(NUM_BLOCKS), blocks)
            assert not layer[untouched].any()
        else:
            np.testing.assert_array_equal(layer[:, blocks], orig[:, blocks])


def test_torch_bfloat16_round_trip_without_copies(shmkv_module):
    torch = pytest.importorskip("torch")
    kv = [torch.randn(2, NUM_BLOCKS, BLOCK, HEADS, HEAD, dtype=torch.bfloat16) for _ in range(LAYERS)]
    block_ids = list(range(NUM_BLOCKS - 1, NUM_BLOCKS - 1 - 2 * BPC, -1))
    nbytes = shmkv_module.chunk_nbytes(kv, chunk_tokens=CHUNK)
    assert nbytes == 2 * LAYERS * CHUNK * HEADS * HEAD * 2
    out = [bytearray(nbytes) for _ in range(2)]
    shmkv_module.gather(kv, block_ids, [0, 1], out, chunk_tokens=CHUNK, dtype="bfloat16")
    ref = [reference_chunk([t.view(torch.int16).numpy() for t in kv], "NHD", block_ids, c) for c in range(2)]
    for c in range(2):
        np.testing.assert_array_equal(np.frombuffer(out[c], dtype=np.int16), ref[c].ravel())
    back = [torch.zeros_like(t) for t in kv]
    shmkv_module.scatter(out, back, block_ids, chunk_tokens=CHUNK)
    idx = torch.tensor(block_ids)
    for b, t in zip(back, kv):
        assert torch.equal(b[:, idx], t[:, idx])


def test_chunk_indices_subset_writes_only_those_buffers(shmkv_module):
    kv = make_cache("NHD")
    block_ids = list(range(4 * BPC))
    out = chunk_buffers(shmkv_module, kv, "NHD", 2)
    shmkv_module.gather(kv, block_ids, [1, 3], out, chunk_tokens=CHUNK)
    np.testing.assert_array_equal(out[0].view(np.float32), reference_chunk(kv, "NHD", block_ids, 1).ravel())
    np.testing.assert_array_equal(out[1].view(np.float32), reference_chunk(kv, "NHD", block_ids, 3).ravel())


@pytest.mark.parametrize("layout", ["NHD", "HND", "MLA"])
def test_skip_first_n_tokens_leaves_those_blocks_untouched(shmkv_module, layout):
    kv = make_cache(layout)
    block_ids = list(range(10, 10 + 2 * BPC))
    out = chunk_buffers(shmkv_module, kv, layout, 2)
    shmkv_module.gather(kv, block_ids, [0, 1], out, layout=layout, chunk_tokens=CHUNK)
    target = [np.full_like(layer, 7.0) for layer in kv]
    skip = BPC * BLOCK + BLOCK  # chunk 0 and the first block of chunk 1
    shmkv_module.scatter(out, target, block_ids, skip, layout=layout, chunk_tokens=CHUNK)
    skipped, written = block_ids[:BPC + 1], block_ids[BPC + 1:]
    for layer, orig in zip(target, kv):
        sel = (lambda b: layer[b]) if layout == "MLA" else (lambda b: layer[:, b])
        assert (sel(skipped) == 7.0).all()
        np.testing.assert_array_equal(sel(written), orig[written] if layout == "MLA" else orig[:, written])


def unchanged(arrays):
    return [a.copy() for a in arrays]


def test_bad_input_gets_a_clear_error_and_nothing_is_written(shmkv_module):
    kv = make_cache("NHD")
    good_blocks = list(range(2 * BPC))
    out = chunk_buffers(shmkv_module, kv, "NHD", 2)
    before_out, before_kv = unchanged(out), unchanged(kv)

    def expect(match, fn, *args, **kw):
        with pytest.raises(ValueError, match=match):
            fn(*args, **kw)
        for a, b in zip(out + kv, before_out + before_kv):
            np.testing.assert_array_equal(a, b)

    g, s = shmkv_module.gather, shmkv_module.scatter
    expect("layout NHD needs", g, [layer[0] for layer in kv], good_blocks, [0, 1], out, chunk_tokens=CHUNK)
    expect("first dimension must be 2", g, [np.zeros((3,) + kv[0].shape[1:], np.float32)] * LAYERS, good_blocks,
           [0], out[:1], chunk_tokens=CHUNK)
    expect(r"kv_caches\[1\] has dtype float16", g, [kv[0], kv[1].astype(np.float16), kv[2]], good_blocks, [0],
           out[:1], chunk_tokens=CHUNK)
    expect(r"kv_caches\[2\] has shape", g, [kv[0], kv[1], kv[2][:, :10].copy()], good_blocks, [0], out[:1],
           chunk_tokens=CHUNK)
    expect("does not match the expected dtype bfloat16", g, kv, good_blocks, [0], out[:1], chunk_tokens=CHUNK,
           dtype="bfloat16")
    expect("only 5 block ids, 8 needed for chunk index 1", g, kv, good_blocks[:BPC + 1], [0, 1], out, chunk_tokens=CHUNK)  # too few block ids
    expect(r"block_ids\[3\] = 40 is out of range \[0, 40\)", g, kv, [0, 1, 2, NUM_BLOCKS], [0], out[:1],
           chunk_tokens=CHUNK)  # id out of range
    expect("only 4 block ids, 8 needed for 2 chunks", s, out, kv, good_blocks[:BPC], chunk_tokens=CHUNK)  # scatter: too few block ids
    expect("skip_first_n_tokens 3 is not a multiple of block_size 4", s, out, kv, good_blocks, BLOCK - 1,
           chunk_tokens=CHUNK)  # skip not block-aligned
    expect(r"out\[0\] is 10 bytes; a chunk object of this geometry is", g, kv, good_blocks, [0], [np.zeros(10, np.uint8)], chunk_tokens=CHUNK)
    expect("read-only", g, kv, good_blocks, [0], [bytes(len(out[0]))], chunk_tokens=CHUNK)
    expect("chunk_tokens 17 is not a multiple of block_size 4", g, kv, good_blocks, [0], out[:1], chunk_tokens=CHUNK + 1)
    expect("None", g, kv, good_blocks, [0], [None], chunk_tokens=CHUNK)
    expect("unknown KV layout 'XYZ'", g, kv, good_blocks, [0], out[:1], layout="XYZ", chunk_tokens=CHUNK)
    ro = [layer.copy() for layer in kv]
    for r in ro:
        r.flags.writeable = False
    expect("read-only", s, out, ro, good_blocks, chunk_tokens=CHUNK)

