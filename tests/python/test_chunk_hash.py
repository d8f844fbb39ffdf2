"""Chunk digests from Python: the test vectors of docs/chunk-hashing.md (the C++ suite checks the
same literals) and agreement with an independent hashlib implementation of the spec."""
import hashlib
import random
import struct

import pytest

LLAMA = dict(model="llama-3-8b", world_size=1, dtype="bfloat16", layout="NHD")


def reference_root(model, world_size, dtype, layout, salt=""):
    field = lambda s: struct.pack("<I", len(s.encode())) + s.encode()  # noqa: E731
    return hashlib.sha256(b"shmkv.chunk-hash.v1" + field(model) + struct.pack("<I", world_size) + field(dtype) +
                          field(layout) + field(salt)).digest()


def reference_chain(root, tokens, n):
    out, prev = [], root
    for i in range(len(tokens) // n):
        prev = hashlib.sha256(prev + struct.pack(f"<{n}I", *tokens[i * n:(i + 1) * n])).digest()
        out.append(prev)
    return out


def test_root_vectors(shmkv_module):
    assert shmkv_module.chain_root(**LLAMA).hex() == "c391289f1a53131a60e788d0b0f9e0dc57c4e767c41b8dfed517166f976077e9"
    assert shmkv_module.chain_root(**LLAMA, salt="tenant-a").hex() == \
        "b11d0fe9db0d65528c8e618bcdef7a94fc206b1d47b99fba2c2c363074a97cd2"
    assert shmkv_module.chain_root("deepseek-v3", 8, "float8_e4m3fn", "MLA").hex() == \
        "4e57abe205f786d0bfccbb339ad213e4b2d74d6e37e175994092ec2f456fffaf"


def test_chain_vectors(shmkv_module):
    root = shmkv_module.chain_root(**LLAMA)
    assert [d.hex() for d in shmkv_module.chunk_digests(root, list(range(10)), 4)] == [
        "c8be60adbf909e8406a671b4c482f47270fadc2ba057c79a7b58e26aa38468ab",
        "32d6f7b362930fc2d9af318e25d371ffb74d0383b89c3bf5fc26fb7e7914e991",
    ]
    with_partial = shmkv_module.chunk_digests(root, list(range(10)), 4, include_partial=True)
    assert with_partial[2].hex() == "c454177c80a1ec2fc9ed21e52d135398f07ef5626511a87fa449c34e0f79db84"
    assert [d.hex() for d in shmkv_module.chunk_digests(root, range(512), 256)] == [
        "8677991d52edf08ddf6f9281a872808092fa280c59504c4cf526cf4c0e25c133",
        "2593a4bb0908ae8a7418ecda3529dad2724e452f37105ce30b1ff468ff5e15a0",
    ]
    ds = shmkv_module.chain_root("deepseek-v3", 8, "float8_e4m3fn", "MLA")
    assert [d.hex() for d in shmkv_module.chunk_digests(ds, [4294967295, 0x01020304, 7, 0], 2)] == [
        "36b158c206d77a535d0e4eb9062a16b1d3ddd77f2246b89119843b2adb0d0628",
        "8f81091d9167b235360aa5bf178354b9b9e6a942e3a5cd9b2d9441124bfacd6f",
    ]


def test_agrees_with_an_independent_implementation(shmkv_module):
    import numpy as np

    rng = random.Random(7)
    for _ in range(20):
        ns = dict(model=rng.choice(["m", "llama-3-70b", "ü-model"]), world_size=rng.choice([1, 2, 8]),
                  dtype=rng.choice(["bfloat16", "float16"]), layout=rng.choice(["NHD", "HND", "MLA"]),
                  salt=rng.choice(["", "tenant-x"]))
        n = rng.choice([1, 16, 256])
        tokens = [rng.randrange(0, 2**32) for _ in range(rng.randrange(0, 4 * n + 3))]
        root = shmkv_module.chain_root(**ns)
        assert root == reference_root(**ns)
        assert shmkv_module.chunk_digests(root, tokens, n) == reference_chain(root, tokens, n)
        # numpy arrays give the same digests as lists
        assert shmkv_module.chunk_digests(root, np.array(tokens, dtype=np.int64), n) == reference_chain(root, tokens, n)


def test_bad_token_ids_are_named(shmkv_module):
    root = shmkv_module.chain_root(**LLAMA)
    with pytest.raises(ValueError, match=r"token_ids\[2\] = -1"):
        shmkv_module.chunk_digests(root, [1, 2, -1, 4], 2)
    with pytest.raises(ValueError, match=r"token_ids\[0\] = 4294967296"):
        shmkv_module.chunk_digests(root, [2**32], 1)
    with pytest.raises(ValueError, match="one-dimensional"):
        shmkv_module.chunk_digests(root, [[1, 2], [3, 4]], 2)
    with pytest.raises(ValueError, match="32 bytes"):
        shmkv_module.chunk_digests(b"short", [1, 2], 2)
    with pytest.raises(ValueError, match="chunk_tokens must be positive"):
        shmkv_module.chunk_digests(root, [1, 2], 0)
