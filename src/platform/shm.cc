#include "platform/shm.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>
#if SHMKV_LINUX_PLATFORM
#include <sys/statfs.h>
#include <sys/statvfs.h>
#endif

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

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
constexpr std::string_view kShmDir = "/dev/shm";

std::string_view DirOrDefault(std::string_view dir) {
  return dir.empty() ? kShmDir : dir;
}

// The first line of a small kernel file, trimmed; empty when unreadable.
std::string ReadLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
  return line;
}

uint64_t ReadNumber(const std::string& path) {
  const std::string line = ReadLine(path);
  return line.empty() ? 0 : std::strtoull(line.c_str(), nullptr, 10);
}

// "always within_size advise [never] deny force" -> "never".
std::string ShmemThpSetting() {
  const std::string line = ReadLine("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  const size_t open = line.find('['), close = line.find(']');
  if (open == std::string::npos || close == std::string::npos || close < open) return "unknown";
  return line.substr(open + 1, close - open - 1);
}

// /proc/self/mounts escapes blanks in paths as octal (\040).
std::string UnescapeMountField(std::string_view f) {
  std::string out;
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] == '\\' && i + 3 < f.size()) {
      const std::string oct(f.substr(i + 1, 3));
      char* end = nullptr;
      const long v = std::strtol(oct.c_str(), &end, 8);
      if (end == oct.c_str() + 3) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += f[i];
  }
  return out;
}

struct MountEntry {
  std::string point, type, options;
};

std::vector<MountEntry> ReadMounts() {
  std::vector<MountEntry> out;
  std::ifstream in("/proc/self/mounts");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string dev, point, type, options;
    if (!(fields >> dev >> point >> type >> options)) continue;
    out.push_back({UnescapeMountField(point), type, options});
  }
  return out;
}

// The value of option `key` in a comma-separated mount option list; empty when absent.
std::string MountOption(std::string_view options, std::string_view key) {
  size_t at = 0;
  while (at <= options.size()) {
    const size_t end = std::min(options.find(',', at), options.size());
    const std::string_view opt = options.substr(at, end - at);
    if (opt.size() > key.size() && opt.starts_with(key) && opt[key.size()] == '=') {
      return std::string(opt.substr(key.size() + 1));
    }
    at = end + 1;
  }
  return {};
}

std::string HugetlbSysDir(uint64_t page_size) {
  return fmt::format("/sys/kernel/mm/hugepages/hugepages-{}kB", page_size / 1024);
}

std::string PageSizeText(uint64_t bytes) {
  if (bytes >= (1ULL << 30) && bytes % (1ULL << 30) == 0) return fmt::format("{} GiB", bytes >> 30);
  if (bytes >= (1ULL << 20) && bytes % (1ULL << 20) == 0) return fmt::format("{} MiB", bytes >> 20);
  return fmt::format("{} KiB", bytes >> 10);
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

std::string_view DefaultSegmentDir() {
#if defined(__linux__)
  return "/dev/shm";  // selected by the operating system: glibc's shm_open uses it in both builds
#else
  return {};
#endif
}

std::string SegmentPath([[maybe_unused]] std::string_view dir, [[maybe_unused]] std::string_view name) {
#if SHMKV_LINUX_PLATFORM
  return fmt::format("{}/{}", DirOrDefault(dir), name);
#else
  return {};
#endif
}

namespace {
// Linux opens the file itself (what glibc's shm_open does in /dev/shm, with any directory);
// portable builds have shm_open's namespace only.
Result<int> OpenSegmentFile(std::string_view dir, std::string_view name, int flags, mode_t mode) {
#if SHMKV_LINUX_PLATFORM
  const std::string path = SegmentPath(dir, name);
  auto r = sys::Call([&] { return ::open(path.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode); });
#else
  if (!dir.empty()) {
    return Status::Unavailable(fmt::format("segment '{}': a segment directory ({}) needs Linux", name, dir));
  }
  const std::string path = ShmOpenName(name);
  auto r = sys::Call([&] { return ::shm_open(path.c_str(), flags, mode); });
#endif
  if (!r.ok()) return Status(StatusCode::kIoError, "", r.err);
  return r.value;
}

std::string Where(std::string_view dir) {
  return dir.empty() ? std::string() : fmt::format(" in {}", dir);
}
}  // namespace

Result<sys::UniqueFd> CreateExclusive(std::string_view dir, std::string_view name, mode_t mode) {
  auto r = OpenSegmentFile(dir, name, O_CREAT | O_EXCL | O_RDWR, mode);
  if (!r.ok()) {
    if (r.status().code() == StatusCode::kUnavailable) return r.status();
    return Status::FromErrno(fmt::format("creating segment '{}'{}", name, Where(dir)), r.status().sys_errno());
  }
  return sys::UniqueFd(*r);
}

Result<sys::UniqueFd> OpenExisting(std::string_view dir, std::string_view name) {
  auto r = OpenSegmentFile(dir, name, O_RDWR, 0);
  if (!r.ok()) {
    if (r.status().code() == StatusCode::kUnavailable) return r.status();
    const int err = r.status().sys_errno();
    if (err == ENOENT) {
      return Status(StatusCode::kNotFound, fmt::format("segment '{}'{} does not exist", name, Where(dir)), err);
    }
    return Status::FromErrno(fmt::format("opening segment '{}'{}", name, Where(dir)), err);
  }
  return sys::UniqueFd(*r);
}

std::optional<struct stat> StatSegment(std::string_view dir, std::string_view name) {
  struct stat st {};
#if SHMKV_LINUX_PLATFORM
  if (::lstat(SegmentPath(dir, name).c_str(), &st) == 0) return st;
#else
  if (auto fd = OpenExisting(dir, name); fd.ok() && ::fstat(fd->get(), &st) == 0) return st;
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

Status UnlinkSegment(std::string_view dir, std::string_view name) {
  if (::unlink(SegmentPath(dir, name).c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno(fmt::format("removing segment '{}'{}", name, Where(dir)), errno);
  }
  return Status::Ok();
}

bool StillNamed(int fd, std::string_view dir, std::string_view name) {
  struct stat by_fd {};
  struct stat by_name {};
  if (::fstat(fd, &by_fd) != 0 || ::lstat(SegmentPath(dir, name).c_str(), &by_name) != 0) return false;
  return by_fd.st_ino == by_name.st_ino && by_fd.st_dev == by_name.st_dev;
}

Result<std::vector<std::string>> ListSegmentNames(std::string_view dir_name, std::string_view prefix) {
  const std::string path(DirOrDefault(dir_name));
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(path.c_str()), &::closedir);
  if (!dir) return Status::FromErrno(fmt::format("listing {}", path), errno);
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir.get())) {
    const std::string_view n = e->d_name;
    if (n.starts_with(prefix) && n.size() > prefix.size()) names.emplace_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

Status CheckCapacity(std::string_view dir, std::string_view name, uint64_t size) {
  const std::string shm_dir(DirOrDefault(dir));
  struct statvfs fs {};
  if (auto r = sys::Call([&] { return ::statvfs(shm_dir.c_str(), &fs); }); !r.ok()) {
    return r.ToStatus(fmt::format("statvfs {}", shm_dir));
  }
  const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  if (size > free_bytes) {
    const auto need_gib = static_cast<uint64_t>(std::ceil(static_cast<double>(size) / double(1ULL << 30))) + 1;
    return Status::Full(fmt::format(
        "cannot create segment '{}' of {}: {} has only {} free. Enlarge it (in a container: "
        "docker run --shm-size={}g ...; on a host: mount -o remount,size=... {}) or choose a smaller pool size",
        name, FormatSize(size), shm_dir, FormatSize(free_bytes), need_gib, shm_dir));
  }
  return Status::Ok();
}

Status ReserveSize(int fd, std::string_view dir, std::string_view name, uint64_t size) {
  // posix_fallocate reserves the tmpfs (or hugetlbfs) pages now. It returns the error instead of
  // setting errno.
  int err = 0;
  do {
    err = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
  } while (err == EINTR);
  if (err == 0) return Status::Ok();
  Status s = Status::FromErrno(fmt::format("reserving {} for segment '{}'", FormatSize(size), name), err);
  if (err == ENOSPC) {
    if (auto info = InspectShmDir(dir); info.ok() && info->hugetlbfs()) {
      return Status(StatusCode::kFull, s.message() + ": " + HugePageAdvice(*info, size), err);
    }
    return Status(
        StatusCode::kFull,
        s.message() + fmt::format(" ({} is too small; enlarge it, e.g. docker run --shm-size)", DirOrDefault(dir)),
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

bool CollapseHugePages(std::byte* data, uint64_t size) {
#if !defined(MADV_COLLAPSE)
  constexpr int MADV_COLLAPSE = 25;  // linux/mman.h of 6.1; older headers lack it
#endif
  return ::madvise(data, size, MADV_COLLAPSE) == 0;
}

void AdviseNoHugePages(std::byte* data, uint64_t size) {
#if defined(MADV_NOHUGEPAGE)
  (void)::madvise(data, size, MADV_NOHUGEPAGE);
#else
  (void)data;
  (void)size;
#endif
}

Result<ShmDirInfo> InspectShmDir(std::string_view dir_name) {
  ShmDirInfo info;
  info.dir = std::string(DirOrDefault(dir_name));
  char resolved[PATH_MAX];
  if (::realpath(info.dir.c_str(), resolved) == nullptr) {
    return Status::FromErrno(fmt::format("segment directory {}", info.dir), errno);
  }
  const std::string real = resolved;
  // The last matching entry wins: a later mount on the same point hides the earlier ones.
  size_t best = 0;
  for (const MountEntry& m : ReadMounts()) {
    const bool covers = real == m.point || m.point == "/" ||
                        (real.starts_with(m.point) && real.size() > m.point.size() && real[m.point.size()] == '/');
    if (!covers || m.point.size() < best) continue;
    best = m.point.size();
    info.mount_point = m.point;
    info.fs_type = m.type;
    info.huge_option = m.type == "tmpfs" ? MountOption(m.options, "huge") : "";
    if (m.type == "tmpfs" && info.huge_option.empty()) info.huge_option = "never";
  }
  if (info.mount_point.empty()) return Status::NotFound(fmt::format("no mount holds {} (/proc/self/mounts)", real));
  struct statfs fs {};
  if (::statfs(info.dir.c_str(), &fs) == 0) info.block_size = static_cast<uint64_t>(fs.f_bsize);
  return info;
}

uint64_t PmdPageSize() {
  static const uint64_t size = [] {
    const uint64_t n = ReadNumber("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
    return n != 0 ? n : uint64_t{2} << 20;
  }();
  return size;
}

Result<MappingPages> InspectMapping(const std::byte* data) {
  std::ifstream in("/proc/self/smaps");
  if (!in) return Status::FromErrno("reading /proc/self/smaps", errno);
  const auto want = reinterpret_cast<uintptr_t>(data);
  std::string line;
  bool inside = false;
  bool found = false;
  MappingPages pages;
  uint64_t hugetlb_kib = 0;
  while (std::getline(in, line)) {
    unsigned long long lo = 0, hi = 0;
    // A mapping's header: "7f72c8200000-7f72c9200000 rw-s 00000000 00:28 2  /path".
    if (std::sscanf(line.c_str(), "%llx-%llx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      if (inside) break;
      inside = lo == want;
      found = found || inside;
      continue;
    }
    if (!inside) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, colon);
    const uint64_t kib = std::strtoull(line.c_str() + colon + 1, nullptr, 10);
    if (key == "KernelPageSize") {
      pages.kernel_page_size = kib * 1024;
    } else if (key == "AnonHugePages" || key == "ShmemPmdMapped" || key == "FilePmdMapped") {
      pages.huge_bytes += kib * 1024;
    } else if (key == "Shared_Hugetlb" || key == "Private_Hugetlb") {
      hugetlb_kib += kib;
    }
  }
  if (!found) {
    return Status::NotFound(fmt::format("no mapping at {} in /proc/self/smaps", static_cast<const void*>(data)));
  }
  pages.huge_bytes += hugetlb_kib * 1024;
  return pages;
}

std::string HugePageAdvice(const ShmDirInfo& info, uint64_t size) {
  const uint64_t page = info.hugetlbfs() && info.block_size > 0 ? info.block_size : PmdPageSize();
  const std::string sys = HugetlbSysDir(page);
  const uint64_t nr = ReadNumber(sys + "/nr_hugepages");
  const uint64_t free_pages = ReadNumber(sys + "/free_hugepages");
  const uint64_t reserved = ReadNumber(sys + "/resv_hugepages");
  const uint64_t available = free_pages > reserved ? free_pages - reserved : 0;
  const uint64_t need = (size + page - 1) / page;
  const uint64_t nr_needed = nr + (need > available ? need - available : 0);
  const std::string sysctl = page == PmdPageSize() ? std::string("/proc/sys/vm/nr_hugepages") : sys + "/nr_hugepages";
  if (info.hugetlbfs()) {
    return fmt::format(
        "{} is a hugetlbfs mount ({} pages) with {} of its {} pages free and unreserved; the pool needs {}: raise "
        "nr_hugepages to at least {} (echo {} > {})",
        info.mount_point, PageSizeText(page), available, nr, need, nr_needed, nr_needed, sysctl);
  }
  const uint64_t gib = (size + (1ULL << 30) - 1) >> 30;
  return fmt::format(
      "{}{} is a {} mount{} and /sys/kernel/mm/transparent_hugepage/shmem_enabled is [{}]: mount a tmpfs "
      "with huge=always (mount -t tmpfs -o huge=always,size={}G,mode=1777 tmpfs DIR) and pass --shm-dir DIR, or "
      "mount a hugetlbfs and raise nr_hugepages to at least {} ({} pages of {}; echo {} > {})",
      info.mount_point, info.dir == info.mount_point ? std::string() : " (holding " + info.dir + ")", info.fs_type,
      info.fs_type == "tmpfs" ? " with huge=" + info.huge_option : "", ShmemThpSetting(), gib + 1, nr_needed, need,
      PageSizeText(page), nr_needed, sysctl);
}

Status CheckHugetlbPages(const ShmDirInfo& info, uint64_t size) {
  if (!info.hugetlbfs() || info.block_size == 0) return Status::Ok();
  const std::string sys = HugetlbSysDir(info.block_size);
  const uint64_t free_pages = ReadNumber(sys + "/free_hugepages");
  const uint64_t reserved = ReadNumber(sys + "/resv_hugepages");
  const uint64_t available = free_pages > reserved ? free_pages - reserved : 0;
  if ((size + info.block_size - 1) / info.block_size <= available) return Status::Ok();
  return Status::Full(HugePageAdvice(info, size));
}

std::vector<std::string> HugePageMounts() {
  std::vector<std::string> out;
  for (const MountEntry& m : ReadMounts()) {
    const std::string huge = MountOption(m.options, "huge");
    if (m.type == "hugetlbfs" || (m.type == "tmpfs" && (huge == "always" || huge == "within_size"))) {
      if (m.point != kShmDir && std::find(out.begin(), out.end(), m.point) == out.end()) out.push_back(m.point);
    }
  }
  return out;
}

Status CheckSegmentDir(std::string_view dir) {
  if (!dir.starts_with('/')) {
    return Status::InvalidArgument(fmt::format("segment directory '{}' must be an absolute path", dir));
  }
  struct stat st {};
  const std::string path(dir);
  if (::stat(path.c_str(), &st) != 0) return Status::FromErrno(fmt::format("segment directory {}", dir), errno);
  if (!S_ISDIR(st.st_mode)) return Status::InvalidArgument(fmt::format("segment directory {} is not a directory", dir));
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    return Status::InvalidArgument(fmt::format(
        "segment directory {} belongs to uid {}, not to this user or root: its owner could replace the pool", dir,
        st.st_uid));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0) {
    return Status::InvalidArgument(fmt::format(
        "segment directory {} (mode {:04o}) lets other users remove or rename files in it: make it 0700, or sticky "
        "(1777, as /dev/shm)",
        dir, st.st_mode & 07777));
  }
  return Status::Ok();
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

Status UnlinkSegment(std::string_view dir, std::string_view name) {
  if (!dir.empty()) return Status::Unavailable(fmt::format("segment '{}': a segment directory needs Linux", name));
  if (::shm_unlink(ShmOpenName(name).c_str()) != 0 && errno != ENOENT) {
    // The lock file stays: it is how a later scan still finds the segment.
    return Status::FromErrno(fmt::format("removing segment '{}'", name), errno);
  }
  // The lock file goes last: while it exists, a concurrent cleaner finds the lock it must take.
  (void)::unlink(LockFilePath(name).c_str());
  return Status::Ok();
}

bool StillNamed(int /*fd*/, std::string_view /*dir*/, std::string_view /*name*/) {
  return true;
}

Result<std::vector<std::string>> ListSegmentNames(std::string_view segment_dir, std::string_view prefix) {
  if (!segment_dir.empty()) {
    return Status::Unavailable(fmt::format("listing segments in {} needs Linux", segment_dir));
  }
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

Status CheckCapacity(std::string_view /*dir*/, std::string_view /*name*/, uint64_t /*size*/) {
  return Status::Ok();
}

Status ReserveSize(int fd, std::string_view /*dir*/, std::string_view name, uint64_t size) {
  return sys::Call([&] { return ::ftruncate(fd, static_cast<off_t>(size)); })
      .ToStatus(fmt::format("ftruncate segment '{}' to {} bytes", name, size));
}

void AdviseHugePages(std::byte* /*data*/, uint64_t /*size*/) {}
void AdviseNoHugePages(std::byte* /*data*/, uint64_t /*size*/) {}
bool CollapseHugePages(std::byte* /*data*/, uint64_t /*size*/) {
  return false;
}

Result<ShmDirInfo> InspectShmDir(std::string_view dir) {
  return Status::Unavailable(fmt::format("inspecting segment directory '{}': huge pages need Linux", dir));
}

uint64_t PmdPageSize() {
  return uint64_t{2} << 20;
}

Result<MappingPages> InspectMapping(const std::byte* /*data*/) {
  return Status::Unavailable("page sizes of a mapping: Linux only (/proc/self/smaps)");
}

std::string HugePageAdvice(const ShmDirInfo& /*info*/, uint64_t /*size*/) {
  return "huge pages for the pool need Linux (a hugetlbfs or a tmpfs mounted huge=always)";
}

Status CheckHugetlbPages(const ShmDirInfo& /*info*/, uint64_t /*size*/) {
  return Status::Ok();
}

std::vector<std::string> HugePageMounts() {
  return {};
}

Status CheckSegmentDir(std::string_view dir) {
  return Status::Unavailable(fmt::format("segment directory {}: --shm-dir needs Linux", dir));
}
#endif  // SHMKV_LINUX_PLATFORM

void Prefault(std::byte* data, uint64_t size, const std::function<void(uint64_t done)>& progress) {
  // A gigabyte at a time, so that a caller can say how far a large pool got.
  constexpr uint64_t kStep = uint64_t{1} << 30;
  static const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  for (uint64_t at = 0; at < size; at += kStep) {
    std::byte* part = data + at;
    const uint64_t len = std::min(kStep, size - at);
    bool done = false;
#if SHMKV_LINUX_PLATFORM && defined(MADV_POPULATE_WRITE)
    // EINVAL: a kernel older than 5.14; falls through to touching pages.
    done = ::madvise(part, len, MADV_POPULATE_WRITE) == 0;
#endif
    if (!done) {
      volatile auto* bytes = reinterpret_cast<volatile unsigned char*>(part);
      for (uint64_t off = 0; off < len; off += page) bytes[off] = bytes[off];
    }
    if (progress) progress(at + len);
  }
}

}  // namespace shmkv::platform
