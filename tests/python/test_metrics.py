"""The metrics exporter's text, read with a real Prometheus parser (Debian's python3-prometheus-client).

Driven by tests/tools/fake_metrics_server (the exporter over counters set on stdin, read from an
asio loop with RunOnLoop, as the server does); each family is checked to move as its counter moves.
"""
import subprocess
import urllib.error
import urllib.request

import pytest

prometheus_parser = pytest.importorskip("prometheus_client.parser")


class FakeServer:
    def __init__(self, binary):
        self.proc = subprocess.Popen([binary, "--port", "0", "--snapshot-timeout-ms", "300"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("metrics http://127.0.0.1:"), line
        self.url = line.split()[1]
        self.base = self.url.rsplit("/", 1)[0]

    def cmd(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def get(self, path):
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as r:
                return r.status, r.headers.get("Content-Type"), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type"), e.read().decode()

    def families(self):
        status, ctype, text = self.get("/metrics")
        assert status == 200, text
        assert ctype.startswith("text/plain; version=0.0.4")
        return {f.name: f for f in prometheus_parser.text_string_to_metric_families(text)}, text

    def close(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0


@pytest.fixture
def fake(build_dir):
    s = FakeServer(str(build_dir / "tests" / "fake_metrics_server"))
    yield s
    s.close()


def value(families, family, sample=None, **labels):
    """The value of the one sample of `family` (the parser strips _total from counter names) with `labels`."""
    f = families[family]
    name = sample or (f.name + "_total" if f.type == "counter" else f.name)
    hits = [s for s in f.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (family, labels, f.samples)
    return hits[0].value


def test_every_family_parses_with_help_type_and_units(fake):
    fams, text = fake.families()
    for name, f in fams.items():
        assert name.startswith("shmkv_"), name
        assert f.documentation, name
        assert f"# TYPE {name}" in text
    # Types and the units in the names.
    assert fams["shmkv_tier_bytes"].type == "gauge"
    assert fams["shmkv_tier_capacity_bytes"].type == "gauge"
    assert fams["shmkv_request_duration_seconds"].type == "histogram"
    assert fams["shmkv_requests"].type == "counter"
    assert fams["shmkv_lookups"].type == "counter"
    build = [s for s in fams["shmkv_build_info"].samples][0]
    assert build.labels["version"] and int(build.labels["protocol_max"]) >= int(build.labels["protocol_min"]) >= 1
    assert value(fams, "shmkv_tier_capacity_bytes", tier="l1") == 64 << 20
    assert value(fams, "shmkv_healthy") == 1
    assert value(fams, "shmkv_start_time_seconds") > 1.6e9
    assert not [n for n in fams if n.startswith("shmkv_stat_")], "a counter of the service has no family"


def test_each_family_moves_with_its_counter(fake):
    moves = [  # (stats counter, family, labels)
        ("objects", "shmkv_tier_objects", {"tier": "l1"}),
        ("used_bytes", "shmkv_tier_bytes", {"tier": "l1"}),
        ("lookup_hits", "shmkv_tier_hits", {"tier": "l1"}),
        ("stores", "shmkv_tier_writes", {"tier": "l1"}),
        ("retrieves", "shmkv_tier_loads", {"tier": "l1"}),
        ("evictions", "shmkv_tier_evictions", {"tier": "l1", "reason": "capacity"}),
        ("evicted_bytes", "shmkv_tier_evicted_bytes", {"tier": "l1"}),
        ("lookups", "shmkv_lookups", {}),
        ("lookup_keys", "shmkv_lookup_keys", {}),
        ("lookup_hit_keys", "shmkv_lookup_hit_keys", {}),
        ("reserved_objects", "shmkv_reservations_outstanding", {}),
        ("pinned_objects", "shmkv_pinned_objects", {}),
        ("sessions", "shmkv_sessions", {}),
        ("expired_leases", "shmkv_leases_reclaimed", {"cause": "ttl"}),
        ("leases_reclaimed_on_disconnect", "shmkv_leases_reclaimed", {"cause": "disconnect"}),
        ("quarantined_slots", "shmkv_quarantined_slots", {}),
        ("rejected_frames", "shmkv_rejected_frames", {}),
        ("l2_objects", "shmkv_tier_objects", {"tier": "l2"}),
        ("l2_bytes", "shmkv_tier_bytes", {"tier": "l2"}),
        ("l2_capacity", "shmkv_tier_capacity_bytes", {"tier": "l2"}),
        ("l2_hits", "shmkv_tier_hits", {"tier": "l2"}),
        ("l2_loads", "shmkv_tier_loads", {"tier": "l2"}),
        ("l2_load_bytes", "shmkv_tier_read_bytes", {"tier": "l2"}),
        ("l2_writes", "shmkv_tier_writes", {"tier": "l2"}),
        ("l2_write_bytes", "shmkv_tier_written_bytes", {"tier": "l2"}),
        ("l2_write_errors", "shmkv_tier_errors", {"tier": "l2", "reason": "write"}),
        ("l2_read_errors", "shmkv_tier_errors", {"tier": "l2", "reason": "read"}),
        ("l2_worker_deaths", "shmkv_tier_errors", {"tier": "l2", "reason": "worker_died"}),
        ("l2_dirty_objects", "shmkv_tier_unwritten_objects", {"tier": "l1"}),
        ("l2_evicted_dirty", "shmkv_tier_evicted_unwritten", {"tier": "l1"}),
        ("l2_writes_in_flight", "shmkv_tier_io_in_flight", {"tier": "l2", "op": "write"}),
        ("l2_worker_restarts", "shmkv_tier_worker_restarts", {"tier": "l2"}),
        ("l3_objects", "shmkv_tier_objects", {"tier": "l3"}),
    ]
    for i, (counter, family, labels) in enumerate(moves):
        fake.cmd(f"set {counter} {1000 + i}")
    fams, _ = fake.families()
    for i, (counter, family, labels) in enumerate(moves):
        assert value(fams, family, **labels) == 1000 + i, counter
    for i, (counter, family, labels) in enumerate(moves):
        fake.cmd(f"set {counter} {5000 + 3 * i}")
    fams, _ = fake.families()
    for i, (counter, family, labels) in enumerate(moves):
        assert value(fams, family, **labels) == 5000 + 3 * i, counter


def test_requests_and_latency_histograms(fake):
    fake.cmd("record lookup ok 0.00002")
    fake.cmd("record lookup ok 0.003")
    fake.cmd("record prepare_retrieve full 1.5")
    fams, _ = fake.families()
    assert value(fams, "shmkv_requests", op="lookup", outcome="ok") == 2
    assert value(fams, "shmkv_requests", op="prepare_retrieve", outcome="full") == 1
    assert value(fams, "shmkv_requests", op="lookup", outcome="full") == 0
    h = "shmkv_request_duration_seconds"
    assert value(fams, h, sample=h + "_count", op="lookup") == 2
    assert value(fams, h, sample=h + "_sum", op="lookup") == pytest.approx(0.00302)
    assert value(fams, h, sample=h + "_bucket", op="lookup", le="2.5e-05") == 1
    assert value(fams, h, sample=h + "_bucket", op="lookup", le="0.005") == 2
    assert value(fams, h, sample=h + "_bucket", op="prepare_retrieve", le="1") == 0
    assert value(fams, h, sample=h + "_bucket", op="prepare_retrieve", le="+Inf") == 1


def test_healthz_is_503_with_the_reason_and_recovers(fake):
    assert fake.get("/healthz")[0::2] == (200, "ok\n")
    fake.cmd("health l2 down the file worker is not running; a restart is pending")
    assert fake.get("/healthz")[0::2] == (503, "unhealthy: l2: the file worker is not running; a restart is pending\n")
    fams, _ = fake.families()  # /metrics still answers, and says so
    assert value(fams, "shmkv_healthy") == 0
    assert value(fams, "shmkv_tier_up", tier="l2") == 0
    fake.cmd("health l2 up")
    assert fake.get("/healthz")[0] == 200


def test_a_stuck_loop_makes_healthz_503_not_a_hang(fake):
    fake.cmd("block 1500")
    status, _, body = fake.get("/healthz")
    assert (status, body) == (503, "unhealthy: loop: the event loop did not answer within 300 ms\n")
    status, _, body = fake.get("/metrics")
    assert status == 503 and "did not answer within 300 ms" in body
