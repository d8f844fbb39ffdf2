"""/metrics and /healthz of a real shmkv-server (--metrics-address), read with a real Prometheus
parser: each family moves as operations happen, and /healthz names a tier that is down."""
import socket
import time
import urllib.error
import urllib.request

import pytest

from conftest import ServerProcess

prometheus_parser = pytest.importorskip("prometheus_client.parser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(base):
    status, text = get(base + "/metrics")
    assert status == 200, text
    return {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}


def sample(families, family, suffix="", **labels):
    f = families[family]
    name = f.name + (suffix or ("_total" if f.type == "counter" else ""))
    hits = [s.value for s in f.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (family, name, labels, f.samples[:5])
    return hits[0]


@pytest.fixture
def metrics_server(server_bin, tmp_path, segment_name):
    port = free_port()
    srv = ServerProcess(server_bin, tmp_path, segment_name, "64MiB", "--metrics-address", f"127.0.0.1:{port}")
    yield srv, f"http://127.0.0.1:{port}"
    srv.stop()


def client(shmkv_module, srv):
    return shmkv_module.Client(srv.socket, timeout=10.0, model="m", world_size=1, rank=0, dtype="bf16", layout="NHD")


def test_families_move_as_operations_happen(metrics_server, shmkv_module):
    srv, base = metrics_server
    before = scrape(base)
    assert sample(before, "shmkv_build_info", version=before["shmkv_build_info"].samples[0].labels["version"]) == 1
    c = client(shmkv_module, srv)
    keys = [b"m-%d" % i for i in range(4)]
    for k in keys:
        assert c.put(k, b"x" * 4096)
    assert c.lookup(keys + [b"absent"]) == 4
    assert c.get(keys[0]) is not None
    after = scrape(base)
    assert sample(after, "shmkv_requests", op="lookup", outcome="OK") - sample(
        before, "shmkv_requests", op="lookup", outcome="OK") == 1
    assert sample(after, "shmkv_request_duration_seconds", "_count", op="lookup") >= 1
    assert sample(after, "shmkv_request_duration_seconds", "_sum", op="lookup") > 0
    assert sample(after, "shmkv_lookup_keys") - sample(before, "shmkv_lookup_keys") == 5
    assert sample(after, "shmkv_lookup_hit_keys") - sample(before, "shmkv_lookup_hit_keys") == 4
    assert sample(after, "shmkv_tier_objects", tier="l1") == 4
    assert sample(after, "shmkv_tier_hits", tier="l1") - sample(before, "shmkv_tier_hits", tier="l1") == 4
    assert sample(after, "shmkv_sessions") >= 1
    # A request refused by the server: an error outcome, counted by its code.
    with pytest.raises(Exception):
        c.commit_store([b"never-prepared"])
    errs = scrape(base)
    assert sample(errs, "shmkv_requests", op="commit_store", outcome="InvalidArgument") >= 1
    # A client that dies holding a pin: the lease is reclaimed on disconnect and counted.
    c.prepare_retrieve([keys[1]])
    c.close()
    deadline = time.monotonic() + 10
    while sample(scrape(base), "shmkv_leases_reclaimed", cause="disconnect") < 1:
        assert time.monotonic() < deadline, "the pin of the closed session was not counted as reclaimed"
        time.sleep(0.05)
    status, body = get(base + "/healthz")
    assert status == 200 and body.strip() == "ok", body


def test_healthz_names_a_tier_that_is_down(server_bin, tmp_path, segment_name):
    port, dead_redis = free_port(), free_port()
    srv = ServerProcess(server_bin, tmp_path, segment_name, "64MiB", "--metrics-address", f"127.0.0.1:{port}",
                        "--redis", f"redis://127.0.0.1:{dead_redis}")
    try:
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503 and "l3" in body, (status, body)
        fam = scrape(f"http://127.0.0.1:{port}")
        assert sample(fam, "shmkv_tier_up", tier="l3") == 0
    finally:
        srv.stop()


def test_a_bad_or_busy_metrics_address_fails_at_start_naming_it(server_bin, tmp_path, segment_name):
    import subprocess

    r = subprocess.run([server_bin, "--pool-size", "1MiB", "--no-prefault", "--socket", str(tmp_path / "s.sock"),
                        "--metrics-address", "127.0.0.1:notaport"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and "--metrics-address" in r.stderr, r
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([server_bin, "--pool-size", "1MiB", "--no-prefault", "--socket", str(tmp_path / "s.sock"),
                            "--shm-name", segment_name, "--metrics-address", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 1 and "--metrics-address" in r.stderr and str(port) in r.stderr, r


def test_sigterm_right_after_start_stops_a_server_with_metrics(server_bin, tmp_path, segment_name):
    # The exporter's listening thread may not be running yet when the stop comes: it must still end.
    import signal

    for i in range(5):
        srv = ServerProcess(server_bin, tmp_path, f"{segment_name}_{i}", "8MiB", "--metrics-address", "127.0.0.1:0")
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=15) == 0
