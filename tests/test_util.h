// Helpers shared by the C++ tests: unique segment names, child processes, /dev/shm probes.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace shmkv::testing {

// A full, prefixed segment name no other test (or test process) uses.
inline std::string UniqueSegmentName(std::string_view tag) {
  static std::atomic<int> counter{0};
  return fmt::format("lmcache_l1_pool_t{}_{}_{}", ::getpid(), tag, counter++);
}

inline bool SegmentExists(const std::string& name) {
  int fd = ::shm_open(("/" + name).c_str(), O_RDONLY, 0);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

// Runs `body` in a forked child; the child _exits with body's return value. Returns the pid.
inline pid_t Spawn(const std::function<int()>& body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 1;
    try {
      rc = body();
    } catch (...) {
    }
    ::_exit(rc);
  }
  return pid;
}

// Waits for a child; returns its raw wait status.
inline int Reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// A one-byte pipe a child writes when it is ready; the parent blocks on it.
class ReadyPipe {
 public:
  ReadyPipe() { EXPECT_EQ(::pipe(fds_), 0); }
  ~ReadyPipe() {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }
  void Signal() { (void)!::write(fds_[1], "r", 1); }
  bool Wait() {
    char c = 0;
    return ::read(fds_[0], &c, 1) == 1;
  }

 private:
  int fds_[2] = {-1, -1};
};

}  // namespace shmkv::testing
