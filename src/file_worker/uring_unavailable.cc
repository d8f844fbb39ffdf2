// Ring and UringExecutor of a build without io_uring (src/file_worker/uring.h): Create always
// fails, so no executor is ever constructed; the definitions below only satisfy the linker.
#include "file_worker/uring.h"

#include <cerrno>
#include <utility>

#include <fmt/format.h>

namespace shmkv::file_worker {

Result<Ring> Ring::Create(unsigned entries) {
  return Status::Unavailable(
      fmt::format("io_uring ({} entries) is not available: this build has none (portable platform, "
                  "docs/platform.md); use --io-engine threads",
                  entries));
}

Ring::Ring(Ring&& other) noexcept : live_(std::exchange(other.live_, false)), entries_(other.entries_) {}

Ring& Ring::operator=(Ring&& other) noexcept {
  live_ = std::exchange(other.live_, false);
  entries_ = other.entries_;
  return *this;
}

Ring::~Ring() {
  Reset();
}

void Ring::Reset() {
  live_ = false;
}

UringExecutor::UringExecutor(Ring ring) : ring_(std::move(ring)) {}

UringExecutor::~UringExecutor() = default;

int64_t UringExecutor::Read(int /*fd*/, std::byte* /*dst*/, uint32_t /*len*/, uint64_t /*offset*/) {
  return -ENOSYS;
}

int64_t UringExecutor::Write(int /*fd*/, const std::byte* /*src*/, uint32_t /*len*/, uint64_t /*offset*/) {
  return -ENOSYS;
}

}  // namespace shmkv::file_worker
