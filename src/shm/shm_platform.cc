#include "shm/shm_platform.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/mman.h>

#include <cstdlib>
#include <vector>

#include <fmt/format.h>

namespace shmkv::shm {

std::string DescribeUid(uid_t uid) {
  long hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(hint > 0 ? static_cast<size_t>(hint) : 16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr && found->pw_name != nullptr) {
    return fmt::format("uid {} ({})", uid, found->pw_name);
  }
  return fmt::format("uid {}", uid);
}

std::optional<struct stat> StatSegment(std::string_view name) {
  struct stat st {};
#if defined(__linux__)
  const std::string path = fmt::format("{}/{}", kShmDir, name);
  if (::stat(path.c_str(), &st) == 0) return st;
#else
  if (auto fd = OpenExisting(name); fd.ok() && ::fstat(fd->get(), &st) == 0) return st;
#endif
  return std::nullopt;
}

Result<sys::UniqueFd> OpenExisting(std::string_view name) {
  const std::string path = ShmOpenName(name);
  auto r = sys::Call([&] { return ::shm_open(path.c_str(), O_RDWR, 0); });
  if (!r.ok()) {
    if (r.err == ENOENT) {
      return Status(StatusCode::kNotFound, fmt::format("segment '{}' does not exist", name), r.err);
    }
    return Status::FromErrno(fmt::format("shm_open of segment '{}'", name), r.err);
  }
  return sys::UniqueFd(r.value);
}

#if defined(__APPLE__)
namespace {
std::string LockFilePath(std::string_view name) {
  const char* dir = std::getenv("TMPDIR");
  return fmt::format("{}/shmkv-{}.lock", (dir && *dir) ? dir : "/tmp", name);
}
}  // namespace

Result<sys::UniqueFd> TryLockLiveness(int /*segment_fd*/, std::string_view name) {
  const std::string path = LockFilePath(name);
  auto fd = sys::Call([&] { return ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600); });
  if (!fd.ok()) return Status::FromErrno(fmt::format("open lock file {}", path), fd.err);
  sys::UniqueFd lock(fd.value);
  auto r = sys::Call([&] { return ::flock(lock.get(), LOCK_EX | LOCK_NB); });
  if (!r.ok()) {
    if (r.err == EWOULDBLOCK) return Status::Busy(fmt::format("segment '{}' is held by a live process", name));
    return Status::FromErrno(fmt::format("flock {}", path), r.err);
  }
  return lock;
}

void RemoveLivenessFile(std::string_view name) {
  ::unlink(LockFilePath(name).c_str());
}

bool StillNamed(int /*fd*/, std::string_view /*name*/) {
  return true;
}
#else
Result<sys::UniqueFd> TryLockLiveness(int segment_fd, std::string_view name) {
  auto r = sys::Call([&] { return ::flock(segment_fd, LOCK_EX | LOCK_NB); });
  if (!r.ok()) {
    if (r.err == EWOULDBLOCK) return Status::Busy(fmt::format("segment '{}' is held by a live process", name));
    return Status::FromErrno(fmt::format("flock of segment '{}'", name), r.err);
  }
  return sys::UniqueFd();  // the lock lives on segment_fd itself
}

void RemoveLivenessFile(std::string_view /*name*/) {}

bool StillNamed(int fd, std::string_view name) {
#if defined(__linux__)
  struct stat by_fd {};
  struct stat by_name {};
  const std::string path = fmt::format("{}/{}", kShmDir, name);
  if (::fstat(fd, &by_fd) != 0 || ::stat(path.c_str(), &by_name) != 0) return false;
  return by_fd.st_ino == by_name.st_ino && by_fd.st_dev == by_name.st_dev;
#else
  (void)fd;
  (void)name;
  return true;
#endif
}
#endif

}  // namespace shmkv::shm
