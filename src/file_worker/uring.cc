#include "file_worker/uring.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "common/log.h"

namespace shmkv::file_worker {

Result<Ring> Ring::Create(unsigned entries) {
  Ring ring;
  const int rc = io_uring_queue_init(entries, &ring.ring_, 0);
  if (rc < 0) {
    return Status::Unavailable(fmt::format("io_uring_queue_init({}) failed: {} ({})", entries, std::strerror(-rc),
                                           rc == -ENOSYS  ? "the kernel has no io_uring"
                                           : rc == -EPERM ? "io_uring is disabled here (seccomp or "
                                                            "kernel.io_uring_disabled)"
                                                          : "io_uring not usable"));
  }
  ring.live_ = true;
  ring.entries_ = entries;
  return ring;
}

Ring::Ring(Ring&& other) noexcept : ring_(other.ring_), live_(other.live_), entries_(other.entries_) {
  other.live_ = false;
}

Ring& Ring::operator=(Ring&& other) noexcept {
  if (this != &other) {
    Reset();
    ring_ = other.ring_;
    live_ = std::exchange(other.live_, false);
    entries_ = other.entries_;
  }
  return *this;
}

Ring::~Ring() {
  Reset();
}

void Ring::Reset() {
  if (live_) io_uring_queue_exit(&ring_);
  live_ = false;
}

// One submitted request; lives on the caller's stack until the reaper has set `done`.
struct UringExecutor::Waiter {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  int res = 0;
};

UringExecutor::UringExecutor(Ring ring) : ring_(std::move(ring)) {
  reaper_ = std::thread([this] { Reap(); });
}

UringExecutor::~UringExecutor() {
  // A NOP with user_data 0 tells the reaper to stop; no request is in flight by contract.
  {
    std::unique_lock lock(mu_);
    room_.wait(lock, [&] { return in_flight_ < ring_.entries(); });
    io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
    while (sqe == nullptr) {
      io_uring_submit(ring_.get());
      sqe = io_uring_get_sqe(ring_.get());
    }
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, 0);
    io_uring_submit(ring_.get());
  }
  reaper_.join();
}

void UringExecutor::Reap() {
  for (;;) {
    io_uring_cqe* cqe = nullptr;
    const int rc = io_uring_wait_cqe(ring_.get(), &cqe);
    if (rc == -EINTR || rc == -EAGAIN) continue;
    if (rc < 0) {
      // Cannot happen with a live ring; waiting callers would hang forever, so fail loudly.
      Log().error("file worker: io_uring_wait_cqe failed: {}; aborting", std::strerror(-rc));
      std::abort();
    }
    const uint64_t data = io_uring_cqe_get_data64(cqe);
    const int res = cqe->res;
    io_uring_cqe_seen(ring_.get(), cqe);
    if (data == 0) return;
    auto* waiter = reinterpret_cast<Waiter*>(data);
    {
      std::lock_guard lock(mu_);
      --in_flight_;
    }
    room_.notify_one();
    {
      std::lock_guard lock(waiter->mu);
      waiter->res = res;
      waiter->done = true;
      // Notify under the lock: once done is seen the waiter (on the caller's stack) may vanish.
      waiter->cv.notify_one();
    }
  }
}

int64_t UringExecutor::Submit(bool write, int fd, void* buf, uint32_t len, uint64_t offset) {
  for (;;) {
    Waiter waiter;
    {
      std::unique_lock lock(mu_);
      room_.wait(lock, [&] { return in_flight_ < ring_.entries(); });
      io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
      if (sqe == nullptr) {  // SQ full of prepared entries: flush them, then there is room
        io_uring_submit(ring_.get());
        sqe = io_uring_get_sqe(ring_.get());
        if (sqe == nullptr) return -EBUSY;
      }
      if (write) {
        io_uring_prep_write(sqe, fd, buf, len, offset);
      } else {
        io_uring_prep_read(sqe, fd, buf, len, offset);
      }
      io_uring_sqe_set_data64(sqe, reinterpret_cast<uint64_t>(&waiter));
      // The SQE is in the ring now and points at `waiter`, so it must complete before we return:
      // retry transient failures; anything else breaks the ring's invariants.
      int rc = 0;
      do {
        rc = io_uring_submit(ring_.get());
      } while (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY);
      if (rc < 0) {
        Log().error("file worker: io_uring_submit failed: {}; aborting", std::strerror(-rc));
        std::abort();
      }
      ++in_flight_;
    }
    std::unique_lock wl(waiter.mu);
    waiter.cv.wait(wl, [&] { return waiter.done; });
    if (waiter.res == -EINTR || waiter.res == -EAGAIN) continue;
    return waiter.res;
  }
}

int64_t UringExecutor::Read(int fd, std::byte* dst, uint32_t len, uint64_t offset) {
  return Submit(false, fd, dst, len, offset);
}

int64_t UringExecutor::Write(int fd, const std::byte* src, uint32_t len, uint64_t offset) {
  return Submit(true, fd, const_cast<std::byte*>(src), len, offset);
}

}  // namespace shmkv::file_worker
