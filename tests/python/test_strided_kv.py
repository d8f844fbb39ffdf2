"""The strided paged-KV bindings (shmkv._native.gather_strided / scatter_strided) and the
adapters' view mapping (shmkv._transfer.logical_view), with Debian's torch: every per-layer
layout of docs/vllm.md gives the chunk object of the contiguous NHD layout, element for element."""
import pytest

torch = pytest.importorskip("torch")

B, N, H, D, L, CHUNK = 12, 4, 3, 8, 2, 8


def nhd_reference(shmkv, layers_nhd, block_ids, chunks):
    out = [bytearray(shmkv.chunk_nbytes(layers_nhd, layout="NHD", chunk_tokens=CHUNK)) for _ in chunks]
    shmkv.gather(layers_nhd, block_ids, chunks, out, layout="NHD", chunk_tokens=CHUNK)
    return [bytes(o) for o in out]


def as_layout(nhd, name):
    """One layer (2, B, N, H, D) re-laid in an engine layout, returned as the engine tensor."""
    if name == "NHD":
        return nhd.clone()
    if name == "HND-strides":  # logical (2,B,N,H,D), physical (2,B,H,N,D)
        return nhd.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
    if name == "blocks-first":
        return nhd.transpose(0, 1).contiguous()
    if name == "packed":  # (B, H, N, 2D): K then V in the last dimension
        return torch.cat([nhd[0], nhd[1]], dim=-1).permute(0, 2, 1, 3).contiguous()
    if name == "packed-LBNHC-view":  # the same logical (B,H,N,2D), physical (B,N,H,2D)
        return torch.cat([nhd[0], nhd[1]], dim=-1).contiguous().permute(0, 2, 1, 3)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["NHD", "HND-strides", "blocks-first", "packed", "packed-LBNHC-view"])
def test_every_layout_gathers_the_nhd_chunk_and_scatters_back(shmkv_module, name):
    shmkv = shmkv_module
    from shmkv._transfer import logical_view

    g = torch.Generator().manual_seed(1)
    nhd = [torch.randint(0, 1000, (2, B, N, H, D), generator=g).to(torch.float16) for _ in range(L)]
    block_ids, chunks = [5, 2, 9, 0, 7, 11], [2, 0]
    want = nhd_reference(shmkv, nhd, block_ids, chunks)
    engine = [as_layout(t, name) for t in nhd]
    views = [logical_view(t, block_size=N, num_kv_heads=H, head_size=D) for t in engine]
    assert shmkv.chunk_nbytes_strided(views, chunk_tokens=CHUNK) == len(want[0])
    out = [bytearray(len(want[0])) for _ in chunks]
    shmkv._native.gather_strided(views, block_ids, chunks, out, chunk_tokens=CHUNK)
    assert [bytes(o) for o in out] == want
    # Scatter into a zeroed cache of the same layout, skipping the first block: the engine tensor
    # then holds the source's values exactly where the sequence's blocks are.
    dst = [torch.zeros_like(t) for t in engine]
    dviews = [logical_view(t, block_size=N, num_kv_heads=H, head_size=D) for t in dst]
    seq = [bytes(o) for o in out][::-1]  # chunk 0 then chunk 2 -> sequence chunks 0, 1
    shmkv._native.scatter_strided(seq, dviews, [5, 2, 7, 11], N, chunk_tokens=CHUNK)
    src_views = [logical_view(t, block_size=N, num_kv_heads=H, head_size=D) for t in engine]
    for lv, sv in zip(dviews, src_views):
        assert torch.equal(lv[:, 2], sv[:, 2]) and torch.equal(lv[:, 11], sv[:, 11])
        assert not lv[:, 5].any(), "the skipped block was written"


def test_mla_and_bad_views_are_reported_by_name(shmkv_module):
    shmkv = shmkv_module
    from shmkv._transfer import logical_view

    mla = [torch.arange(B * N * 6, dtype=torch.float32).reshape(B, N, 6) + l for l in range(L)]
    views = [logical_view(t, block_size=N, num_kv_heads=1, head_size=6, mla=True) for t in mla]
    out = [bytearray(shmkv.chunk_nbytes_strided(views, chunk_tokens=CHUNK))]
    shmkv._native.gather_strided(views, [3, 4], [0], out, chunk_tokens=CHUNK)
    got = torch.frombuffer(out[0], dtype=torch.float32).reshape(L, CHUNK, 6)
    assert torch.equal(got[1, :N], mla[1][3]) and torch.equal(got[0, N:], mla[0][4])
    with pytest.raises(ValueError, match="not a layout shmkv knows"):
        logical_view(torch.zeros(B, N, H, D), block_size=N, num_kv_heads=H, head_size=D)
    bad = [torch.zeros(2, B, N, H, D), torch.zeros(2, B, N, H, D).transpose(2, 3).contiguous().transpose(2, 3)]
    with pytest.raises(ValueError, match=r"kv_caches\[1\] has byte strides"):
        shmkv._native.gather_strided(bad, [0, 1], [0], [bytearray(1)], chunk_tokens=CHUNK)


def test_the_vllm_module_imports_without_vllm(shmkv_module):
    import shmkv.vllm as sv

    assert hasattr(sv, "ShmkvConnector") and "shmkv.socket" in sv.EXTRA_KEYS
