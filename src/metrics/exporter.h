// Exporter: the HTTP endpoint of `shmkv-server --metrics-address HOST:PORT` (docs/operations.md
// "Metrics"), on cpp-httplib, on threads of its own:
//   GET /metrics  200, Prometheus text (metrics/prometheus.h); 503 when no snapshot could be taken
//   GET /healthz  200 "ok" while every component is up; 503 "unhealthy: <component>: <why>; ..."
//                 otherwise, or when the snapshot function failed (the loop did not answer)
//
// The exporter never touches the server's data itself: each request calls the snapshot function,
// which copies what it needs out of the event loop (RunOnLoop in metrics/on_loop.h posts to the
// loop and waits, bounded) and returns it by value. Calls of the snapshot function never overlap.
//
// Thread-safety: Start, Stop, the destructor and the accessors belong to the owning thread. The
// snapshot function runs on an exporter thread; Stop waits for a call in progress to return, so
// what the function refers to must outlive Stop (stop the exporter before the event loop).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "metrics/prometheus.h"
#include "shmkv/status.h"

namespace shmkv::metrics {

struct ExporterOptions {
  std::string host = "127.0.0.1";  // an address or a name getaddrinfo resolves; "::1" for IPv6
  uint16_t port = 9464;            // 0: any free port (Exporter::port() tells which)
  // Bounds a client's reads and writes; a connection idle this long is closed.
  std::chrono::seconds io_timeout{5};
  // Connections served at the same time (a scraper keeps one open; a curl next to it is served).
  int threads = 2;
};

// "HOST:PORT" ("127.0.0.1:9464", "localhost:9464", "[::1]:9464"); port 0 asks for a free one.
Result<ExporterOptions> ParseMetricsAddress(std::string_view address);
// Whether `host` is a loopback address (127.0.0.0/8, ::1) or "localhost". The server serves any
// address it is given; it logs a warning for the others (the figures show key counts and sizes).
bool IsLoopbackHost(std::string_view host);

class Exporter {
 public:
  // Returns the figures of one scrape, or an error (the loop did not answer in time, the server is
  // shutting down): /metrics and /healthz then answer 503 with its text. Must return in bounded time.
  using SnapshotFn = std::function<Result<Snapshot>()>;

  // Binds (failing here, with the address in the message, when it cannot) and starts serving.
  static Result<std::unique_ptr<Exporter>> Start(ExporterOptions options, SnapshotFn snapshot);
  ~Exporter();
  Exporter(const Exporter&) = delete;
  Exporter& operator=(const Exporter&) = delete;

  // Stops serving and joins the threads; idempotent.
  void Stop();
  const std::string& host() const { return options_.host; }
  uint16_t port() const { return options_.port; }  // the bound port (never 0 after Start)
  // "http://HOST:PORT/metrics", for the log line.
  std::string url() const;

 private:
  struct Impl;
  Exporter(ExporterOptions options, std::unique_ptr<Impl> impl);

  ExporterOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmkv::metrics
