// io_uring data path of the file worker: the pread/pwrite of READ and WRITE become io_uring
// read/write SQEs on the file descriptor, straight from/to the mapped pool (no bounce buffer).
//
// Ring owns one io_uring instance (io_uring_queue_init .. io_uring_queue_exit); move-only.
// UringExecutor shares one Ring among the I/O pool threads: a caller submits one SQE under a mutex
// and sleeps until a reaper thread hands it the CQE's result. Opening, temp-name + rename and
// fsync stay synchronous on the pool thread (FileStore), so crash safety is unchanged; only the
// byte transfer moves to io_uring (the pool thread waits for its completion, so concurrency is
// still bounded by the pool). At most `entries` requests are in flight (the --queue-depth pool threads
// submit one each, so that bound is not reached in the worker; the limit keeps the CQ from
// overflowing for any caller).
//
// Builds without io_uring (the portable platform, src/platform/platform.h: macOS, or Linux with
// SHMKV_PORTABLE_PLATFORM) compile uring_unavailable.cc instead: Ring::Create fails with
// kUnavailable, so --io-engine auto takes the thread pool and --io-engine uring fails at start.
//
// Thread-safety: Ring is not thread-safe (one owner). UringExecutor::Read/Write may be called
// from any number of threads at once; the destructor must not run while a call is in progress.
#pragma once

#include "platform/platform.h"
#if SHMKV_HAVE_IO_URING
#include <liburing.h>
#else
// Stands in for liburing's ring in a build without io_uring: Ring::Create never initialises one.
struct io_uring {};
#endif

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "shmkv/status.h"

namespace shmkv::file_worker {

class Ring {
 public:
  // io_uring_queue_init(entries). Fails with kUnavailable and the reason (ENOSYS: kernel without
  // io_uring; EPERM: disabled by seccomp or the io_uring_disabled sysctl, common in containers).
  static Result<Ring> Create(unsigned entries);

  Ring(Ring&& other) noexcept;
  Ring& operator=(Ring&& other) noexcept;
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring();

  io_uring* get() { return &ring_; }
  unsigned entries() const { return entries_; }

 private:
  Ring() = default;
  void Reset();

  io_uring ring_{};
  bool live_ = false;
  unsigned entries_ = 0;
};

class UringExecutor {
 public:
  explicit UringExecutor(Ring ring);
  ~UringExecutor();
  UringExecutor(const UringExecutor&) = delete;
  UringExecutor& operator=(const UringExecutor&) = delete;

  // One read/write at `offset` of fd: the byte count (0 = end of file for a read) or -errno, as
  // pread/pwrite would return it; EINTR/EAGAIN completions are retried here. A short transfer is
  // returned as is: the caller continues with the remainder, exactly as with pread/pwrite.
  int64_t Read(int fd, std::byte* dst, uint32_t len, uint64_t offset);
  int64_t Write(int fd, const std::byte* src, uint32_t len, uint64_t offset);

 private:
  struct Waiter;
  int64_t Submit(bool write, int fd, void* buf, uint32_t len, uint64_t offset);
  void Reap();

  Ring ring_;
  std::mutex mu_;  // guards the SQ and in_flight_
  std::condition_variable room_;
  unsigned in_flight_ = 0;
  std::thread reaper_;  // the only consumer of the CQ
};

// Which engine moves the bytes; parsed from --io-engine.
enum class IoEngine { kAuto, kUring, kThreads };

}  // namespace shmkv::file_worker
