#include "platform/shm.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>
#if SHMKV_LINUX_PLATFORM
#include <sys/statvfs.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <memory>

#include <fmt/format.h>

#include "shmkv/size.h"

namespace shmkv::platform {
namespace {

Status LockBusy(std::string_view name) {
  return Status::Busy(fmt::format("segment '{}' is held by a live process", name));
}

// flock(LOCK_EX | LOCK_NB) on `fd`: kBusy when another process holds it.
Status TryFlock(int fd, std::string_view name, std::string_view what) {
  auto r = sys::Call([&] { return ::flock(fd, LOCK_EX | LOCK_NB); });
  if (r.ok()) return Status::Ok();
  if (r.err == EWOULDBLOCK) return LockBusy(name);
  return Status::FromErrno(fmt::format("flock of {}", what), r.err);
}

#if SHMKV_LINUX_PLATFORM
// Where Linux exposes POSIX shared memory as files.
constexpr const char* kShmDir = "/dev/shm";

std::string SegmentPath(std::string_view name) {
  return fmt::format("{}/{}", kShmDir, name);
}
#else
// The portable liveness lock: a file per segment in the per-user temporary directory. Its name
// also stands for the segment when listing (shared memory cannot be enumerated on macOS).
constexpr std::string_view kLockPrefix = "shmkv-";
constexpr std::string_view kLockSuffix = ".lock";

std::string LockDir() {
  const char* dir = std::getenv("TMPDIR");
  std::string d = (dir != nullptr && *dir != '\0') ? dir : "/tmp";
  while (d.size() > 1 && d.back() == '/') d.pop_back();  // macOS's TMPDIR ends with '/'
  return d;
}

std::string LockFilePath(std::string_view name) {
  return fmt::format("{}/{}{}{}", LockDir(), kLockPrefix, name, kLockSuffix);
}
#endif

}  // namespace

std::string ShmOpenName(std::string_view name) {
  // Appended, not "/" + name: GCC 12 at -O3 reports a false -Wrestrict inside libstdc++ for
  // inserting into or assigning a literal to a std::string (GCC bug 105329).
  std::string path;
  path.reserve(name.size() + 1);
  path += '/';
  path += name;
  return path;
}

Result<sys::UniqueFd> CreateExclusive(std::string_view name, mode_t mode) {
  const std::string path = ShmOpenName(name);
  auto r = sys::Call([&] { return ::shm_open(path.c_str(), O_CREAT | O_EXCL | O_RDWR, mode); });
  if (!r.ok()) return Status::FromErrno(fmt::format("creating segment '{}'", name), r.err);
  return sys::UniqueFd(r.value);
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

std::optional<struct stat> StatSegment(std::string_view name) {
  struct stat st {};
#if SHMKV_LINUX_PLATFORM
  if (::stat(SegmentPath(name).c_str(), &st) == 0) return st;
#else
  if (auto fd = OpenExisting(name); fd.ok() && ::fstat(fd->get(), &st) == 0) return st;
#endif
  return std::nullopt;
}

std::string LivenessLockPath([[maybe_unused]] std::string_view name) {
#if SHMKV_LINUX_PLATFORM
  return {};
#else
  return LockFilePath(name);
#endif
}

#if SHMKV_LINUX_PLATFORM
Result<sys::UniqueFd> TryLockLiveness(int segment_fd, std::string_view name) {
  SHMKV_RETURN_IF_ERROR(TryFlock(segment_fd, name, fmt::format("segment '{}'", name)));
  return sys::UniqueFd();  // the lock lives on segment_fd itself
}

Status UnlinkSegment(std::string_view name) {
  if (::shm_unlink(ShmOpenName(name).c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno(fmt::format("removing segment '{}'", name), errno);
  }
  return Status::Ok();
}

bool StillNamed(int fd, std::string_view name) {
  struct stat by_fd {};
  struct stat by_name {};
  if (::fstat(fd, &by_fd) != 0 || ::stat(SegmentPath(name).c_str(), &by_name) != 0) return false;
  return by_fd.st_ino == by_name.st_ino && by_fd.st_dev == by_name.st_dev;
}

Result<std::vector<std::string>> ListSegmentNames(std::string_view prefix) {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(kShmDir), &::closedir);
  if (!dir) return Status::FromErrno(fmt::format("listing {}", kShmDir), errno);
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir.get())) {
    const std::string_view n = e->d_name;
    if (n.starts_with(prefix) && n.size() > prefix.size()) names.emplace_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

Status CheckCapacity(std::string_view name, uint64_t size) {
  struct statvfs fs {};
  if (auto r = sys::Call([&] { return ::statvfs(kShmDir, &fs); }); !r.ok()) {
    return r.ToStatus(fmt::format("statvfs {}", kShmDir));
  }
  const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  if (size > free_bytes) {
    const auto need_gib = static_cast<uint64_t>(std::ceil(static_cast<double>(size) / double(1ULL << 30))) + 1;
    return Status::Full(fmt::format(
        "cannot create segment '{}' of {}: {} has only {} free. Enlarge it (in a container: "
        "docker run --shm-size={}g ...; on a host: mount -o remount,size=... {}) or choose a smaller pool size",
        name, FormatSize(size), kShmDir, FormatSize(free_bytes), need_gib, kShmDir));
  }
  return Status::Ok();
}

Status ReserveSize(int fd, std::string_view name, uint64_t size) {
  // posix_fallocate reserves the tmpfs pages now. It returns the error instead of setting errno.
  int err = 0;
  do {
    err = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
  } while (err == EINTR);
  if (err == 0) return Status::Ok();
  Status s = Status::FromErrno(fmt::format("reserving {} for segment '{}'", FormatSize(size), name), err);
  if (err == ENOSPC) {
    return Status(StatusCode::kFull,
                  s.message() + fmt::format(" ({} is too small; enlarge it, e.g. docker run --shm-size)", kShmDir),
                  err);
  }
  return s;
}

// 2 MiB pages cut the TLB misses of multi-MiB chunk copies. It takes effect only where the host
// allows it for shared memory (/sys/kernel/mm/transparent_hugepage/shmem_enabled = advise,
// within_size or always); elsewhere the kernel ignores or refuses it and 4 KiB pages are used.
void AdviseHugePages(std::byte* data, uint64_t size) {
#if defined(MADV_HUGEPAGE)
  (void)::madvise(data, size, MADV_HUGEPAGE);
#else
  (void)data;
  (void)size;
#endif
}
#else  // portable
Result<sys::UniqueFd> TryLockLiveness([[maybe_unused]] int segment_fd, std::string_view name) {
  const std::string path = LockFilePath(name);
  auto fd = sys::Call([&] { return ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600); });
  if (!fd.ok()) return Status::FromErrno(fmt::format("open lock file {}", path), fd.err);
  sys::UniqueFd lock(fd.value);
  SHMKV_RETURN_IF_ERROR(TryFlock(lock.get(), name, path));
#if defined(__linux__)
  // Linux only: a Linux-platform `shmkv gc` beside this build judges liveness by the segment's
  // own lock; holding it too keeps it from removing a live portable segment.
  SHMKV_RETURN_IF_ERROR(TryFlock(segment_fd, name, fmt::format("segment '{}'", name)));
#endif
  return lock;
}

Status UnlinkSegment(std::string_view name) {
  if (::shm_unlink(ShmOpenName(name).c_str()) != 0 && errno != ENOENT) {
    // The lock file stays: it is how a later scan still finds the segment.
    return Status::FromErrno(fmt::format("removing segment '{}'", name), errno);
  }
  // The lock file goes last: while it exists, a concurrent cleaner finds the lock it must take.
  (void)::unlink(LockFilePath(name).c_str());
  return Status::Ok();
}

bool StillNamed(int /*fd*/, std::string_view /*name*/) {
  return true;
}

Result<std::vector<std::string>> ListSegmentNames(std::string_view prefix) {
  const std::string lock_dir = LockDir();
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(lock_dir.c_str()), &::closedir);
  if (!dir) return Status::FromErrno(fmt::format("listing {}", lock_dir), errno);
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir.get())) {
    std::string_view n = e->d_name;
    if (!n.starts_with(kLockPrefix) || !n.ends_with(kLockSuffix)) continue;
    n.remove_prefix(kLockPrefix.size());
    n.remove_suffix(kLockSuffix.size());
    if (n.starts_with(prefix) && n.size() > prefix.size()) names.emplace_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

Status CheckCapacity(std::string_view /*name*/, uint64_t /*size*/) {
  return Status::Ok();
}

Status ReserveSize(int fd, std::string_view name, uint64_t size) {
  return sys::Call([&] { return ::ftruncate(fd, static_cast<off_t>(size)); })
      .ToStatus(fmt::format("ftruncate segment '{}' to {} bytes", name, size));
}

void AdviseHugePages(std::byte* /*data*/, uint64_t /*size*/) {}
#endif  // SHMKV_LINUX_PLATFORM

void Prefault(std::byte* data, uint64_t size) {
#if SHMKV_LINUX_PLATFORM && defined(MADV_POPULATE_WRITE)
  if (::madvise(data, size, MADV_POPULATE_WRITE) == 0) return;
    // EINVAL: a kernel older than 5.14; fall through to touching pages.
#endif
  static const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  volatile auto* bytes = reinterpret_cast<volatile unsigned char*>(data);
  for (uint64_t off = 0; off < size; off += page) bytes[off] = bytes[off];
}

}  // namespace shmkv::platform
