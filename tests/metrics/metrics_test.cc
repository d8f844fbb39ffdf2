// The metrics component: the request registry, the Prometheus renderer against the counters a
// real Store/KvService reports, and the HTTP exporter served on 127.0.0.1 and read over a socket.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <atomic>
#include <thread>

#include <gtest/gtest.h>

#include "metrics/exporter.h"
#include "metrics/on_loop.h"
#include "metrics/prometheus.h"
#include "metrics/request_metrics.h"
#include "server/kv_service.h"

namespace shmkv::metrics {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;

size_t Count(const std::string& text, std::string_view needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

TEST(RequestMetrics, CountsByOutcomeAndBucketsLatency) {
  RequestMetrics m({"lookup", "prepare_store"}, {"ok", "full"});
  m.Record(0, 0, microseconds(3));           // <= 5 us
  m.Record(0, 0, microseconds(7));           // <= 10 us
  m.Record(0, 1, std::chrono::seconds(20));  // +Inf
  m.Record(1, 1, milliseconds(1));           // <= 1 ms exactly
  m.Record(2, 0, microseconds(1));           // unknown op: ignored
  m.Record(0, 5, microseconds(1));           // unknown outcome: ignored
  const RequestSnapshot s = m.Snapshot();
  ASSERT_EQ(s.ops.size(), 2u);
  EXPECT_EQ(s.ops[0].outcomes, (std::vector<uint64_t>{2, 1}));
  EXPECT_EQ(s.ops[0].count, 3u);
  EXPECT_EQ(s.ops[0].buckets[0], 1u);
  EXPECT_EQ(s.ops[0].buckets[1], 1u);
  EXPECT_EQ(s.ops[0].buckets.back(), 1u);
  EXPECT_NEAR(s.ops[0].sum_seconds, 20.00001, 1e-9);
  const size_t one_ms = static_cast<size_t>(
      std::find(kLatencyBucketsSeconds.begin(), kLatencyBucketsSeconds.end(), 1e-3) - kLatencyBucketsSeconds.begin());
  EXPECT_EQ(s.ops[1].buckets[one_ms], 1u);
  EXPECT_EQ(m.OpIndex("prepare_store"), 1u);
  EXPECT_EQ(m.OutcomeIndex("nope"), RequestMetrics::kNotFound);
}

TEST(RequestMetrics, ConcurrentRecordersLoseNothing) {
  RequestMetrics m({"a", "b"}, {"ok"});
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop.load()) {
      for (const OpSnapshot& o : m.Snapshot().ops) {
        uint64_t sum = 0;
        for (uint64_t b : o.buckets) sum += b;
        ASSERT_EQ(sum, o.count);
      }
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < 50000; ++i) m.Record(static_cast<size_t>(t % 2), 0, microseconds(i % 2000));
    });
  }
  for (auto& w : writers) w.join();
  stop = true;
  reader.join();
  const RequestSnapshot s = m.Snapshot();
  EXPECT_EQ(s.ops[0].count + s.ops[1].count, 200000u);
  EXPECT_EQ(s.ops[0].outcomes[0], 100000u);
}

Snapshot ServiceSnapshot() {
  StoreOptions o;
  o.pool_size = 1 << 20;
  auto store = Store::Create(o);
  EXPECT_TRUE(store.ok());
  KvService service(std::move(store).value(), ServiceIdentity{"lmcache_l1_pool_t", 1 << 20, 42, ""});
  service.OpenSession(1);
  std::vector<TierCounter> counters;
  service.Stats(counters);
  Snapshot s;
  AppendCounters(counters, s.counters);
  return s;
}

// A contract with KvService: every counter it reports has a family (none falls back to
// shmkv_stat_<name>). A new counter in the service fails this until prometheus.cc maps it.
TEST(Prometheus, EveryCounterTheServiceReportsHasAFamily) {
  const Snapshot s = ServiceSnapshot();
  ASSERT_FALSE(s.counters.empty());
  const std::string text = RenderPrometheus(s);
  EXPECT_EQ(text.find("shmkv_stat_"), std::string::npos) << text;
  EXPECT_NE(text.find("shmkv_tier_capacity_bytes{tier=\"l1\"} 1048576\n"), std::string::npos) << text;
  EXPECT_NE(text.find("shmkv_sessions 1\n"), std::string::npos) << text;
}

TEST(Prometheus, EveryL3CounterHasAFamily) {
  Snapshot s;
  for (const char* name : {"l3_available",
                           "l3_hits",
                           "l3_loads",
                           "l3_load_bytes",
                           "l3_load_full",
                           "l3_writes",
                           "l3_write_bytes",
                           "l3_write_skipped_exists",
                           "l3_write_dropped",
                           "l3_write_errors",
                           "l3_miss_unavailable",
                           "l3_miss_corrupt",
                           "l3_miss_absent",
                           "l3_deletes",
                           "l3_queue_bytes",
                           "l3_known_keys",
                           "l3_moved",
                           "l3_ask",
                           "l3_slot_refreshes",
                           "l3_reconnects",
                           "l3_auth_errors",
                           "l3_config_errors",
                           "uptime_seconds"}) {
    s.counters.emplace_back(name, 1);
  }
  const std::string text = RenderPrometheus(s);
  EXPECT_EQ(text.find("shmkv_stat_"), std::string::npos) << text;
  EXPECT_NE(text.find("shmkv_tier_errors_total{tier=\"l3\",reason=\"corrupt_value\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("shmkv_tier_redirects_total{tier=\"l3\",kind=\"moved\"} 1\n"), std::string::npos) << text;
}

TEST(Prometheus, FamiliesHaveOneHelpAndTypeAndTierLabels) {
  Snapshot s;
  s.version = "0.1.0";
  s.protocol_min = 1;
  s.protocol_max = 2;
  s.segment = "lmcache_l1_pool_\"x\"";
  s.generation = 18446744073709551615u;
  s.counters = {{"objects", 3},         {"used_bytes", 12288}, {"l2_objects", 7},       {"l2_bytes", 9000},
                {"l2_write_errors", 1}, {"l2_read_errors", 2}, {"l2_dirty_objects", 4}, {"lookups", 10},
                {"evictions", 5},       {"brand_new", 9},      {"l2_available", 1}};
  s.health = {{"loop", true, ""}, {"pool", true, ""}, {"l2", true, ""}};
  RequestMetrics m({"lookup"}, {"ok", "invalid_argument"});
  m.Record(0, 0, microseconds(30));
  s.requests = m.Snapshot();
  const std::string text = RenderPrometheus(s);

  EXPECT_EQ(Count(text, "# HELP shmkv_tier_objects "), 1u) << text;
  EXPECT_EQ(Count(text, "# TYPE shmkv_tier_objects gauge\n"), 1u);
  EXPECT_NE(text.find("shmkv_tier_objects{tier=\"l1\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_tier_objects{tier=\"l2\"} 7\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_tier_bytes{tier=\"l1\"} 12288\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_tier_errors_total{tier=\"l2\",reason=\"read\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_tier_unwritten_objects{tier=\"l1\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_tier_evictions_total{tier=\"l1\",reason=\"capacity\"} 5\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE shmkv_lookups_total counter\nshmkv_lookups_total 10\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_stat_brand_new 9\n"), std::string::npos);
  EXPECT_NE(text.find("segment=\"lmcache_l1_pool_\\\"x\\\"\",generation=\"18446744073709551615\""), std::string::npos);
  // The tier is up once, though both its health and its counter say so.
  EXPECT_EQ(Count(text, "shmkv_tier_up{tier=\"l2\"}"), 1u);
  EXPECT_NE(text.find("shmkv_tier_up{tier=\"l1\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_requests_total{op=\"lookup\",outcome=\"ok\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_requests_total{op=\"lookup\",outcome=\"invalid_argument\"} 0\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_request_duration_seconds_bucket{op=\"lookup\",le=\"2.5e-05\"} 0\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("shmkv_request_duration_seconds_bucket{op=\"lookup\",le=\"5e-05\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_request_duration_seconds_bucket{op=\"lookup\",le=\"+Inf\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_request_duration_seconds_count{op=\"lookup\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("shmkv_healthy 1\n"), std::string::npos);
  // Every sample line belongs to the family whose TYPE line came last.
  std::string family;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.rfind("# TYPE ", 0) == 0) {
      family = line.substr(7, line.find(' ', 7) - 7);
    } else if (line[0] != '#') {
      EXPECT_EQ(line.rfind(family, 0), 0u) << line << " after TYPE of " << family;
    }
  }
}

TEST(Prometheus, HealthVerdictNamesEachComponentDown) {
  std::vector<ComponentHealth> h = {{"loop", true, ""}, {"pool", true, ""}, {"l2", false, "the file worker died"}};
  HealthVerdict v = Judge(h);
  EXPECT_FALSE(v.healthy);
  EXPECT_EQ(v.reason, "l2: the file worker died");
  h[1] = {"pool", false, ""};
  EXPECT_EQ(Judge(h).reason, "pool: down; l2: the file worker died");
  EXPECT_EQ(EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
}

TEST(MetricsAddress, ParsesHostAndPortAndSaysWhatIsWrong) {
  auto a = ParseMetricsAddress("127.0.0.1:9464");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 9464);
  auto b = ParseMetricsAddress("[::1]:0");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "::1");
  EXPECT_EQ(b->port, 0);
  for (const char* bad : {"9464", ":9464", "host:", "host:70000", "host:12x", "::1:9464"}) {
    auto r = ParseMetricsAddress(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("HOST:PORT"), std::string::npos);
  }
  EXPECT_TRUE(IsLoopbackHost("127.0.0.1"));
  EXPECT_TRUE(IsLoopbackHost("127.3.2.1"));
  EXPECT_TRUE(IsLoopbackHost("::1"));
  EXPECT_TRUE(IsLoopbackHost("localhost"));
  EXPECT_FALSE(IsLoopbackHost("0.0.0.0"));
  EXPECT_FALSE(IsLoopbackHost("10.1.2.3"));
  EXPECT_FALSE(IsLoopbackHost("::"));
}

struct HttpReply {
  int status = 0;
  std::string headers;
  std::string body;
};

// A plain HTTP/1.1 GET over a socket: the test does not use the library it tests.
HttpReply Get(uint16_t port, const std::string& path) {
  HttpReply r;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return r;
  }
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return r;
  }
  std::string all;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) all.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const size_t split = all.find("\r\n\r\n");
  if (all.rfind("HTTP/1.1 ", 0) != 0 || split == std::string::npos) return r;
  r.status = std::stoi(all.substr(9, 3));
  r.headers = all.substr(0, split);
  r.body = all.substr(split + 4);
  return r;
}

TEST(Exporter, ServesMetricsAndHealthOverHttp) {
  std::atomic<int> calls{0};
  std::atomic<bool> l2_up{true};
  auto exporter = Exporter::Start({"127.0.0.1", 0}, [&]() -> Result<Snapshot> {
    calls++;
    Snapshot s = ServiceSnapshot();
    s.version = "0.1.0";
    s.health = {{"loop", true, ""}, {"pool", true, ""}, {"l2", l2_up.load(), l2_up ? "" : "the file worker died"}};
    return s;
  });
  ASSERT_TRUE(exporter.ok()) << exporter.status().ToString();
  const uint16_t port = (*exporter)->port();
  ASSERT_NE(port, 0);
  EXPECT_EQ((*exporter)->url(), "http://127.0.0.1:" + std::to_string(port) + "/metrics");

  HttpReply m = Get(port, "/metrics");
  EXPECT_EQ(m.status, 200);
  EXPECT_NE(m.headers.find("text/plain; version=0.0.4"), std::string::npos) << m.headers;
  EXPECT_NE(m.body.find("# TYPE shmkv_tier_objects gauge\n"), std::string::npos) << m.body;
  EXPECT_NE(m.body.find("shmkv_build_info{version=\"0.1.0\""), std::string::npos);
  HttpReply h = Get(port, "/healthz");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body, "ok\n");
  l2_up = false;
  h = Get(port, "/healthz");
  EXPECT_EQ(h.status, 503);
  EXPECT_EQ(h.body, "unhealthy: l2: the file worker died\n");
  EXPECT_EQ(Get(port, "/nothing").status, 404);
  EXPECT_EQ(calls.load(), 3);  // one snapshot per /metrics and /healthz, none for a 404

  (*exporter)->Stop();
  EXPECT_EQ(Get(port, "/metrics").status, 0);  // nothing listens any more
}

TEST(Exporter, AFailedSnapshotIs503WithItsReasonAndAPortInUseFailsStart) {
  auto exporter = Exporter::Start({"127.0.0.1", 0}, []() -> Result<Snapshot> {
    return Status::Timeout("the event loop did not answer within 2000 ms");
  });
  ASSERT_TRUE(exporter.ok());
  HttpReply m = Get((*exporter)->port(), "/metrics");
  EXPECT_EQ(m.status, 503);
  EXPECT_NE(m.body.find("did not answer within 2000 ms"), std::string::npos) << m.body;
  HttpReply h = Get((*exporter)->port(), "/healthz");
  EXPECT_EQ(h.status, 503);
  EXPECT_EQ(h.body, "unhealthy: loop: the event loop did not answer within 2000 ms\n");

  auto second = Exporter::Start({"127.0.0.1", (*exporter)->port()}, [] { return Result<Snapshot>(Snapshot{}); });
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find("127.0.0.1:" + std::to_string((*exporter)->port())), std::string::npos)
      << second.status().ToString();
}

TEST(RunOnLoop, ReadsOnTheLoopThreadAndTimesOutWhenTheLoopIsBusy) {
  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  std::thread loop([&] { io.run(); });
  std::thread::id loop_id;
  asio::post(io, [&] { loop_id = std::this_thread::get_id(); });
  auto r = RunOnLoop(
      io,
      [&] {
        Snapshot s;
        s.counters.emplace_back("on_loop", std::this_thread::get_id() == loop_id ? 1 : 0);
        return s;
      },
      milliseconds(2000));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->counters.at(0).second, 1u);

  std::atomic<bool> release{false};
  asio::post(io, [&] {
    while (!release.load()) std::this_thread::sleep_for(milliseconds(1));
  });
  auto late = RunOnLoop(
      io, [] { return Snapshot{}; }, milliseconds(50));
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.status().code(), StatusCode::kTimeout);
  EXPECT_EQ(late.status().message(), "the event loop did not answer within 50 ms");
  release = true;
  guard.reset();
  loop.join();  // the timed-out call ran afterwards and its result was dropped safely
}

}  // namespace
}  // namespace shmkv::metrics
