// The one wrapper through which shmkv makes POSIX calls: it retries EINTR and captures errno at
// the call site, so no later call can clobber it. Plus UniqueFd, the RAII owner of a descriptor.
//
// Thread-safety: free functions are thread-safe; a UniqueFd is a value owned by one thread.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <string_view>
#include <utility>

#include "shmkv/status.h"

namespace shmkv::sys {

// The outcome of one POSIX call: its return value and, when it failed (-1), the errno.
template <typename R>
struct CallResult {
  R value;
  int err;  // 0 on success
  bool ok() const { return err == 0; }
  Status ToStatus(std::string_view what) const { return ok() ? Status::Ok() : Status::FromErrno(what, err); }
};

// Calls f() until it does not fail with EINTR. f returns -1 and sets errno on failure.
template <typename F>
auto Call(F&& f) -> CallResult<decltype(f())> {
  for (;;) {
    auto r = f();
    if (r != -1) return {r, 0};
    if (errno != EINTR) return {r, errno};
  }
}

// Owns one file descriptor; closes it on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  // close(2) is not retried on EINTR: on Linux the descriptor is gone either way.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace shmkv::sys
