// fake_metrics_server: the metrics exporter over counters that stdin sets, for
// tests/python/test_metrics.py (the server's own wiring of --metrics-address comes separately).
// It is built the way the server is meant to use the component: the figures live on an asio
// event loop, and the exporter's snapshot function reads them with RunOnLoop.
//
//   fake_metrics_server [--port N] [--snapshot-timeout-ms MS]
// prints "metrics http://127.0.0.1:PORT/metrics", then reads commands, one a line, and answers
// each with "ok" once the loop has applied it:
//   set NAME VALUE                 a stats counter (starts with those of a real KvService)
//   record OP OUTCOME SECONDS      one request in the registry
//   health NAME up | health NAME down REASON...
//   block MS                       keeps the loop busy for MS (a scrape then times out)
//   quit
#include <fmt/format.h>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <future>
#include <iostream>
#include <sstream>
#include <thread>

#include "metrics/exporter.h"
#include "metrics/on_loop.h"
#include "protocol/wire.h"
#include "server/kv_service.h"
#include "shmkv/version.h"

namespace {

using shmkv::metrics::Snapshot;

const std::vector<std::string> kOps = {
    "register",        "lookup", "prepare_store", "commit_store", "abort_store", "prepare_retrieve",
    "commit_retrieve", "remove", "clear",         "stats",        "health"};
const std::vector<std::string> kOutcomes = {"ok", "invalid_argument", "full", "busy", "expired", "timeout", "internal"};

struct LoopState {
  std::vector<std::pair<std::string, uint64_t>> counters;
  std::vector<shmkv::metrics::ComponentHealth> health = {{"loop", true, ""}, {"pool", true, ""}};
};

}  // namespace

int main(int argc, char** argv) {
  uint16_t port = 0;
  int timeout_ms = 500;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--port") port = static_cast<uint16_t>(std::stoi(argv[i + 1]));
    if (a == "--snapshot-timeout-ms") timeout_ms = std::stoi(argv[i + 1]);
  }

  LoopState state;
  {
    shmkv::StoreOptions o;
    o.pool_size = 64 << 20;
    auto store = shmkv::Store::Create(o);
    if (!store.ok()) return 1;
    shmkv::KvService service(std::move(store).value(), {"lmcache_l1_pool_fake", 64 << 20, 7, ""});
    std::vector<shmkv::TierCounter> counters;
    service.Stats(counters);
    shmkv::metrics::AppendCounters(counters, state.counters);
  }
  shmkv::metrics::RequestMetrics requests(kOps, kOutcomes);
  const double start_time = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();

  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  std::thread loop([&] { io.run(); });

  auto exporter = shmkv::metrics::Exporter::Start({"127.0.0.1", port}, [&]() -> shmkv::Result<Snapshot> {
    return shmkv::metrics::RunOnLoop(
        io,
        [&] {
          Snapshot s;
          s.counters = state.counters;
          s.health = state.health;
          s.requests = requests.Snapshot();
          s.version = shmkv::kVersionString;
          s.protocol_min = shmkv::wire::kMinProtocolVersion;
          s.protocol_max = shmkv::wire::kProtocolVersion;
          s.segment = "lmcache_l1_pool_fake";
          s.generation = 7;
          s.start_time_seconds = start_time;
          return s;
        },
        std::chrono::milliseconds(timeout_ms));
  });
  if (!exporter.ok()) {
    fmt::print(stderr, "fake_metrics_server: {}\n", exporter.status().ToString());
    guard.reset();
    loop.join();
    return 1;
  }
  fmt::print("metrics {}\n", (*exporter)->url());
  std::fflush(stdout);

  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    if (cmd == "quit") break;
    std::promise<std::string> done;
    auto answer = done.get_future();
    asio::post(io, [&, cmd, rest = line.substr(std::min(line.size(), cmd.size() + 1))] {
      std::istringstream args(rest);
      if (cmd == "set") {
        std::string name;
        uint64_t value = 0;
        args >> name >> value;
        auto it =
            std::find_if(state.counters.begin(), state.counters.end(), [&](const auto& c) { return c.first == name; });
        if (it == state.counters.end()) {
          state.counters.emplace_back(name, value);
        } else {
          it->second = value;
        }
      } else if (cmd == "record") {
        std::string op, outcome;
        double seconds = 0;
        args >> op >> outcome >> seconds;
        requests.Record(requests.OpIndex(op), requests.OutcomeIndex(outcome),
                        std::chrono::nanoseconds(static_cast<int64_t>(seconds * 1e9)));
      } else if (cmd == "health") {
        std::string name, updown, reason;
        args >> name >> updown;
        std::getline(args >> std::ws, reason);
        auto it = std::find_if(state.health.begin(), state.health.end(), [&](const auto& h) { return h.name == name; });
        if (it == state.health.end()) it = state.health.insert(state.health.end(), {name, true, ""});
        it->up = updown == "up";
        it->reason = it->up ? "" : reason;
      } else if (cmd == "block") {
        int ms = 0;
        args >> ms;
        done.set_value("ok");
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        return;
      } else {
        done.set_value("unknown command: " + cmd);
        return;
      }
      done.set_value("ok");
    });
    fmt::print("{}\n", answer.get());
    std::fflush(stdout);
  }
  (*exporter)->Stop();
  guard.reset();
  loop.join();
  return 0;
}
