// RunOnLoop: how a snapshot function for the metrics Exporter reads the server's data — it posts
// `fn` to the event loop's executor and waits for its result, at most `timeout`.
//
// Example (in the server, where `service_` and `requests_` live on the loop):
//   auto snapshot = [this]() -> Result<metrics::Snapshot> {
//     return metrics::RunOnLoop(io_, [this] { return TakeSnapshot(); },
//                               std::chrono::seconds(2));
//   };
//
// A timed-out call leaves `fn` queued: when the loop runs it later, its result is dropped. If
// the loop never runs it again (shutdown), it is destroyed unrun; so `fn` may capture loop
// objects by reference only if they outlive the loop's queue (they do when they are members of
// the object that owns the io_context, destroyed after it).
//
// Thread-safety: call from any thread but the loop's own (it would wait for itself: the call
// detects that and runs `fn` directly instead).
#pragma once

#include <asio/io_context.hpp>

#include <chrono>
#include <functional>

#include "metrics/prometheus.h"
#include "shmkv/status.h"

namespace shmkv::metrics {

Result<Snapshot> RunOnLoop(asio::io_context& loop, std::function<Snapshot()> fn, std::chrono::milliseconds timeout);

}  // namespace shmkv::metrics
