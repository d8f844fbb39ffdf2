#include "metrics/exporter.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <httplib.h>
#include <sys/socket.h>

#include <charconv>
#include <mutex>
#include <thread>

namespace shmkv::metrics {

Result<ExporterOptions> ParseMetricsAddress(std::string_view address) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument(
        fmt::format("--metrics-address '{}': {}; expected HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464", address, why));
  };
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return bad("no port");
  std::string_view host = address.substr(0, colon);
  const std::string_view port_text = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return bad("an IPv6 address needs brackets");
  }
  if (host.empty()) return bad("no host");
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535) {
    return bad(fmt::format("'{}' is not a port (0..65535)", port_text));
  }
  ExporterOptions o;
  o.host = std::string(host);
  o.port = static_cast<uint16_t>(port);
  return o;
}

bool IsLoopbackHost(std::string_view host) {
  if (host == "localhost") return true;
  const std::string h(host);
  in_addr v4{};
  if (::inet_pton(AF_INET, h.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, h.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

struct Exporter::Impl {
  httplib::Server server;
  std::thread thread;
  std::mutex snapshot_mu;  // one call of the snapshot function at a time
  SnapshotFn snapshot;

  Result<Snapshot> Take() {
    std::lock_guard lock(snapshot_mu);
    try {
      return snapshot();
    } catch (const std::exception& e) {
      return Status::Internal(fmt::format("taking the snapshot threw: {}", e.what()));
    }
  }
};

Exporter::Exporter(ExporterOptions options, std::unique_ptr<Impl> impl)
    : options_(std::move(options)), impl_(std::move(impl)) {}

Result<std::unique_ptr<Exporter>> Exporter::Start(ExporterOptions options, SnapshotFn snapshot) {
  if (!snapshot) return Status::InvalidArgument("the metrics exporter needs a snapshot function");
  auto impl = std::make_unique<Impl>();
  impl->snapshot = std::move(snapshot);
  Impl* raw = impl.get();
  httplib::Server& svr = impl->server;
  const int threads = std::max(1, options.threads);
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  const auto timeout = static_cast<time_t>(options.io_timeout.count());
  svr.set_read_timeout(timeout, 0);
  svr.set_write_timeout(timeout, 0);
  svr.set_keep_alive_timeout(timeout);
  svr.set_payload_max_length(1 << 16);  // GET only: a body is never needed
  // SO_REUSEADDR only (a restart binds again at once). cpp-httplib's default adds SO_REUSEPORT,
  // which would let a second server share the port silently instead of failing to start.
  svr.set_socket_options([](socket_t sock) {
    const int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });

  svr.Get("/metrics", [raw](const httplib::Request&, httplib::Response& res) {
    Result<Snapshot> s = raw->Take();
    if (!s.ok()) {
      res.status = 503;
      res.set_content(fmt::format("shmkv metrics unavailable: {}\n", s.status().ToString()), "text/plain");
      return;
    }
    res.set_content(RenderPrometheus(*s), "text/plain; version=0.0.4; charset=utf-8");
  });
  svr.Get("/healthz", [raw](const httplib::Request&, httplib::Response& res) {
    Result<Snapshot> s = raw->Take();
    if (!s.ok()) {
      res.status = 503;
      res.set_content(fmt::format("unhealthy: loop: {}\n", s.status().message()), "text/plain");
      return;
    }
    const HealthVerdict v = Judge(s->health);
    res.status = v.healthy ? 200 : 503;
    res.set_content(v.healthy ? std::string("ok\n") : fmt::format("unhealthy: {}\n", v.reason), "text/plain");
  });
  svr.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("shmkv-server: /metrics (Prometheus text), /healthz\n", "text/plain");
  });

  if (options.port == 0) {
    const int port = svr.bind_to_any_port(options.host);
    if (port <= 0) {
      return Status::IoError(fmt::format("the metrics exporter cannot listen on {} (any port)", options.host));
    }
    options.port = static_cast<uint16_t>(port);
  } else if (!svr.bind_to_port(options.host, options.port)) {
    return Status::IoError(
        fmt::format("the metrics exporter cannot listen on {}:{} (in use, or not an address of this host)",
                    options.host, options.port));
  }
  impl->thread = std::thread([raw] { raw->server.listen_after_bind(); });
  return std::unique_ptr<Exporter>(new Exporter(std::move(options), std::move(impl)));
}

Exporter::~Exporter() {
  Stop();
}

void Exporter::Stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  // httplib's stop() does nothing until the listening thread has marked the server running; a
  // stop right after Start (a SIGTERM at startup) would then leave that thread in accept()
  // forever. Wait for it first (it gets there at once; bounded all the same).
  for (int i = 0; i < 5000 && !impl_->server.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  impl_->server.stop();
  impl_->thread.join();
}

std::string Exporter::url() const {
  const bool v6 = options_.host.find(':') != std::string::npos;
  return fmt::format("http://{}{}{}:{}/metrics", v6 ? "[" : "", options_.host, v6 ? "]" : "", options_.port);
}

}  // namespace shmkv::metrics
