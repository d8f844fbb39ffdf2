#include "metrics/on_loop.h"

#include <fmt/format.h>

#include <asio/post.hpp>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>

namespace shmkv::metrics {

Result<Snapshot> RunOnLoop(asio::io_context& loop, std::function<Snapshot()> fn, std::chrono::milliseconds timeout) {
  if (loop.get_executor().running_in_this_thread()) return fn();
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<Snapshot> value;
  };
  auto shared = std::make_shared<Shared>();
  asio::post(loop, [shared, fn = std::move(fn)] {
    Snapshot s = fn();
    std::lock_guard lock(shared->mu);
    shared->value = std::move(s);
    shared->cv.notify_all();
  });
  std::unique_lock lock(shared->mu);
  if (!shared->cv.wait_for(lock, timeout, [&] { return shared->value.has_value(); })) {
    return Status::Timeout(fmt::format("the event loop did not answer within {} ms", timeout.count()));
  }
  return std::move(*shared->value);
}

}  // namespace shmkv::metrics
