"""The README's first command, in its short mode: scripts/demo.py --quick end to end."""
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_demo_quick_runs_end_to_end(build_dir, tmp_path):
    pytest.importorskip("torch")  # the simulated engines keep bfloat16 KV caches in torch
    out = subprocess.run(["/usr/bin/python3", str(ROOT / "scripts" / "demo.py"), "--quick", "--no-progress",
                          "--build-dir", str(build_dir), "--output-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for line in ("requests", "prefix hit rate", "tokens reused", "bytes moved", "throughput", "lookup    latency",
                 "store     latency", "retrieve  latency", "data check", "chart"):
        assert line in text, f"summary lacks {line!r}:\n{text}"
    assert re.search(r"requests\s+18 in", text)
    assert re.search(r"metrics \(while it runs\): http://127\.0\.0\.1:\d+/metrics", text), text
    hit = float(re.search(r"prefix hit rate\s+([\d.]+)%", text).group(1))
    assert hit > 20.0, text  # turns 2 and 3 reuse their history, every chat reuses its system prompt
    assert re.search(r"data check\s+0 wrong chunks of [1-9]\d* retrieved", text), text
    assert re.search(r"\d+ evictions", text) and not re.search(r" 0 evictions", text), "the quick pool must evict"
    png = tmp_path / "shmkv-demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    segment = re.search(r"segment=(\S+)", text).group(1)
    assert not pathlib.Path("/dev/shm", segment).exists()
    assert f"segment {segment} removed" in text


def test_demo_quick_with_an_l2_disk_tier_gets_evicted_chunks_back_from_disk(build_dir, tmp_path):
    pytest.importorskip("torch")
    disk = tmp_path / "l2"
    out = subprocess.run(["/usr/bin/python3", str(ROOT / "scripts" / "demo.py"), "--quick", "--no-progress",
                          "--build-dir", str(build_dir), "--output-dir", str(tmp_path), "--disk-dir", str(disk)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    l2 = re.search(r"L2 disk tier\s+(\d+) chunk hits from disk, (\d+) loads", text)
    assert l2 and int(l2.group(1)) > 0 and int(l2.group(2)) > 0, text
    assert re.search(r"data check\s+0 wrong chunks of [1-9]\d* retrieved", text), text
    assert any(disk.rglob("*")), "the tier wrote no files"


def test_demo_quick_through_the_vllm_adapters_call_sequence(build_dir, tmp_path):
    pytest.importorskip("torch")
    out = subprocess.run(["/usr/bin/python3", str(ROOT / "scripts" / "demo.py"), "--quick", "--no-progress",
                          "--engine", "vllm", "--build-dir", str(build_dir), "--output-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "vLLM adapter's call sequence (shmkv.vllm.ShmkvConnector)" in text
    assert re.search(r"requests\s+18 in", text)
    assert re.search(r"metrics \(while it runs\): http://127\.0\.0\.1:\d+/metrics", text), text
    hit = float(re.search(r"prefix hit rate\s+([\d.]+)%", text).group(1))
    assert hit > 20.0, text
    reused = int(re.search(r"tokens reused\s+([\d,]+)", text).group(1).replace(",", ""))
    assert reused > 0, text
    assert re.search(r"data check\s+0 wrong chunks of [1-9]\d* retrieved", text), text


def test_demo_quick_with_two_nodes_sharing_chunks_through_redis(build_dir, tmp_path):
    pytest.importorskip("torch")
    import shutil

    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("redis-server / redis-cli not installed (scripts/install-deps.sh installs them)")
    out = subprocess.run(["/usr/bin/python3", str(ROOT / "scripts" / "demo.py"), "--quick", "--no-progress",
                          "--build-dir", str(build_dir), "--output-dir", str(tmp_path), "--nodes", "2",
                          "--workers", "4"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    l3 = re.search(r"L3 \(Redis Cluster\)\s+(\d+) chunks loaded on one node that another node prefilled", text)
    assert l3 and int(l3.group(1)) > 0, text  # turns land on either node: the other node's prefill is reused
    assert len(re.findall(r"node \d\s+\d+ cross-node chunk hits", text)) == 2, text
    assert re.search(r"data check\s+0 wrong chunks of [1-9]\d* retrieved", text), text
    for segment in re.findall(r"segment=(\S+)", text):
        assert not pathlib.Path("/dev/shm", segment).exists()
    assert (tmp_path / "shmkv-demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
