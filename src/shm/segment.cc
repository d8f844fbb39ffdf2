#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>

#include "common/log.h"
#include "platform/process.h"
#include "platform/shm.h"
#include "shm/cuda_pinner.h"
#include "shmkv/segment.h"
#include "shmkv/size.h"

namespace shmkv {
namespace {

uint64_t PageSize() {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

// Owns a mapping until released; keeps error paths of Create/Attach free of partial state.
class MappingGuard {
 public:
  MappingGuard(void* p, size_t n) : p_(p), n_(n) {}
  ~MappingGuard() {
    if (p_ != nullptr) ::munmap(p_, n_);
  }
  MappingGuard(const MappingGuard&) = delete;
  MappingGuard& operator=(const MappingGuard&) = delete;
  void* release() { return std::exchange(p_, nullptr); }

 private:
  void* p_;
  size_t n_;
};

// Unlinks a freshly created name unless dismissed; the owner's error paths use it.
class UnlinkGuard {
 public:
  UnlinkGuard(std::string dir, std::string name) : dir_(std::move(dir)), name_(std::move(name)) {}
  ~UnlinkGuard() {
    if (!name_.empty()) (void)platform::UnlinkSegment(dir_, name_);
  }
  UnlinkGuard(const UnlinkGuard&) = delete;
  UnlinkGuard& operator=(const UnlinkGuard&) = delete;
  void dismiss() { name_.clear(); }

 private:
  std::string dir_;
  std::string name_;
};

// Why Create found `name` taken: whose it is (another user may have created a predictable name
// first), its mode, and whether a live process holds it.
Status ExistsError(const std::string& dir, const std::string& name) {
  const std::optional<struct stat> st = platform::StatSegment(dir, name);
  const std::string owner =
      st ? fmt::format("owner {}, mode {:04o}", platform::DescribeUid(st->st_uid), st->st_mode & 07777)
         : "owner unknown";
  if (st && st->st_uid != ::geteuid()) {
    return Status(StatusCode::kAlreadyExists,
                  fmt::format("segment '{}' already exists and belongs to another user ({}); shmkv never removes "
                              "another user's segment: choose another segment name",
                              name, owner),
                  EEXIST);
  }
  bool live = false;
  if (auto existing = platform::OpenExisting(dir, name); existing.ok()) {
    live = platform::TryLockLiveness(existing->get(), name).status().code() == StatusCode::kBusy;
  }
  return Status(StatusCode::kAlreadyExists,
                live ? fmt::format("segment '{}' already exists and a live process owns it ({})", name, owner)
                     : fmt::format("segment '{}' already exists and is stale (its owner died; {}); remove it "
                                   "with `shmkv gc` (the server also removes stale segments at start)",
                                   name, owner),
                EEXIST);
}

// Attach's trust check: the segment belongs to `expected` and no other user can open it.
Status CheckOwnership(const std::string& name, const struct stat& st, uid_t expected) {
  const mode_t mode = st.st_mode & 07777;
  if (st.st_uid != expected) {
    return Status::InvalidArgument(fmt::format(
        "refusing segment '{}': it is owned by {} (mode {:04o}), but the server runs as {}; another user may have "
        "created the name first",
        name, platform::DescribeUid(st.st_uid), mode, platform::DescribeUid(expected)));
  }
  if ((mode & 0007) != 0) {
    return Status::InvalidArgument(fmt::format(
        "refusing segment '{}' (owner {}): its mode {:04o} lets every user access it; a pool must be 0600 or 0660",
        name, platform::DescribeUid(st.st_uid), mode));
  }
  return Status::Ok();
}

void* Map(int fd, uint64_t size) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return p == MAP_FAILED ? nullptr : p;
}

uint64_t RoundUp(uint64_t n, uint64_t to) {
  return (n + to - 1) / to * to;
}

// Where the segment goes and at what granularity: `dir` checked and inspected, the huge-page mode
// against what the mount can give. `auto` on a hugetlbfs with too few free pages falls back to
// the default place (4 KiB pages) with a log line.
struct Placement {
  std::string dir;
  std::optional<platform::ShmDirInfo> info;  // Linux
  uint64_t granule = 0;                      // the size is a multiple of it
};

Result<Placement> Place(const std::string& name, const SegmentCreateOptions& options) {
  Placement p;
  p.dir = options.dir;
  p.granule = PageSize();
  if (!p.dir.empty()) SHMKV_RETURN_IF_ERROR(platform::CheckSegmentDir(p.dir));
  if (!platform::kLinux) return p;  // no other directory, no huge pages to check
  // --shm-dir /dev/shm (or a path to it) is the default place.
  struct stat given {};
  struct stat default_st {};
  const std::string default_dir(platform::DefaultSegmentDir());
  if (!p.dir.empty() && ::stat(p.dir.c_str(), &given) == 0 && ::stat(default_dir.c_str(), &default_st) == 0 &&
      given.st_ino == default_st.st_ino && given.st_dev == default_st.st_dev) {
    p.dir.clear();
  }
  auto info = platform::InspectShmDir(p.dir);
  if (!info.ok()) return info.status().WithContext(fmt::format("segment '{}'", name));
  if (!p.dir.empty() && !info->memory()) {
    return Status::InvalidArgument(fmt::format(
        "segment directory {} is on a {} mount ({}), not in memory: --shm-dir must be on a tmpfs or a hugetlbfs", p.dir,
        info->fs_type, info->mount_point));
  }
  if (info->hugetlbfs()) {
    if (options.huge_pages == HugePages::kOff) {
      return Status::InvalidArgument(fmt::format(
          "--huge-pages off, but segment directory {} is a hugetlbfs mount ({}), whose pages are always huge", p.dir,
          info->mount_point));
    }
    const uint64_t size = RoundUp(options.size, info->block_size);
    if (Status pages = platform::CheckHugetlbPages(*info, size); !pages.ok()) {
      if (options.huge_pages == HugePages::kOn) {
        return Status(StatusCode::kFull,
                      fmt::format("--huge-pages on: segment '{}' of {}: {}", name, FormatSize(size), pages.message()));
      }
      Log().warn("segment '{}': no huge pages ({}); creating it in the default place with 4 KiB pages", name,
                 pages.message());
      Placement fallback;
      fallback.granule = PageSize();
      auto default_info = platform::InspectShmDir("");
      if (default_info.ok()) fallback.info = *default_info;
      return fallback;
    }
    p.granule = info->block_size;
  } else if (info->huge_tmpfs() && options.huge_pages != HugePages::kOff) {
    // A tail shorter than a huge page would get small pages (within_size: none at all).
    p.granule = std::max(p.granule, platform::PmdPageSize());
  }
  p.info = *std::move(info);
  return p;
}

// After the prefault: what backs the mapping, against what `mode` demands.
Status VerifyHugePages(const std::string& name, const Placement& place, const SegmentCreateOptions& options,
                       std::byte* data, uint64_t size, uint64_t* page_size, uint64_t* huge_bytes) {
  auto pages = platform::InspectMapping(data);
  const uint64_t pmd = platform::PmdPageSize();
  // What a fully huge-paged mapping shows: all of it after a prefault, else the first page touched.
  const uint64_t expected = options.prefault ? size / pmd * pmd : std::min(size / pmd * pmd, pmd);
  const bool hugetlb = place.info && place.info->hugetlbfs();
  if (pages.ok() && !hugetlb && options.huge_pages != HugePages::kOff && pages->huge_bytes < expected && place.info &&
      (place.info->huge_tmpfs() || pages->huge_bytes > 0)) {
    // Part of the pool got small pages (free memory was fragmented when tmpfs allocated it):
    // collapse them into huge pages now, compacting as needed (what the fault path does not try).
    const auto start = std::chrono::steady_clock::now();
    const bool collapsed = platform::CollapseHugePages(data, options.prefault ? size : expected);
    auto again = platform::InspectMapping(data);
    if (again.ok()) {
      Log().info(
          "segment '{}': {} of {} in huge pages after the prefault, {} after MADV_COLLAPSE{} ({} ms)", name,
          FormatSize(pages->huge_bytes), FormatSize(expected), FormatSize(again->huge_bytes),
          collapsed ? "" : " (refused)",
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count());
      pages = again;
    }
  }
  if (!pages.ok()) {
    if (options.huge_pages == HugePages::kOn) return pages.status().WithContext("--huge-pages on: checking the pages");
    Log().debug("segment '{}': page sizes unknown: {}", name, pages.status().message());
    return Status::Ok();
  }
  *huge_bytes = pages->huge_bytes;
  if (hugetlb && pages->kernel_page_size > PageSize()) {
    *page_size = pages->kernel_page_size;
    *huge_bytes = size;  // a hugetlbfs mapping has no small pages
  } else {
    *page_size = pages->huge_bytes > 0 ? pmd : std::max<uint64_t>(pages->kernel_page_size, PageSize());
  }
  const bool complete = *huge_bytes >= expected && *huge_bytes > 0;
  if (options.huge_pages == HugePages::kOff) return Status::Ok();
  // A mount that gives huge pages but too few of them: memory is too fragmented; elsewhere, the
  // mount and the settings are why.
  std::string advice;
  if (place.info && (*huge_bytes > 0 || place.info->huge_tmpfs())) {
    advice = fmt::format(
        "free memory is too fragmented for 2 MiB pages even after compaction (see the order-9+ columns of "
        "/proc/buddyinfo; echo 1 > /proc/sys/vm/compact_memory, or dropping caches, may help), or use a hugetlbfs "
        "with pages reserved early: {}",
        platform::HugePageAdvice(*place.info, size));
  } else if (place.info) {
    advice = platform::HugePageAdvice(*place.info, size);
  }
  if (options.huge_pages == HugePages::kOn && !complete) {
    return Status::Unavailable(
        fmt::format("--huge-pages on: segment '{}' got {} of its {} in huge pages (/proc/self/smaps): {}", name,
                    FormatSize(*huge_bytes), FormatSize(size), advice));
  }
  if (*huge_bytes == 0) {
    Log().info("segment '{}': no huge pages, using {} KiB pages: {}", name, *page_size / 1024, advice);
  } else if (!complete) {
    Log().warn("segment '{}': only {} of {} in huge pages (memory too fragmented for more?)", name,
               FormatSize(*huge_bytes), FormatSize(expected));
  } else {
    Log().info("segment '{}': {} in {} KiB huge pages", name, FormatSize(*huge_bytes), *page_size / 1024);
  }
  return Status::Ok();
}

}  // namespace

std::string_view HugePagesName(HugePages mode) {
  switch (mode) {
    case HugePages::kOff: return "off";
    case HugePages::kAuto: return "auto";
    case HugePages::kOn: return "on";
  }
  return "?";
}

Result<HugePages> ParseHugePages(std::string_view text) {
  for (HugePages m : {HugePages::kOff, HugePages::kAuto, HugePages::kOn}) {
    if (text == HugePagesName(m)) return m;
  }
  return Status::InvalidArgument(fmt::format("'{}' is not off, auto or on", text));
}

Result<SharedSegment> SharedSegment::Create(const SegmentCreateOptions& options) {
  auto normalized = NormalizeSegmentName(options.name, static_cast<int>(::getpid()));
  if (!normalized.ok()) return normalized.status();
  const std::string name = std::move(normalized).value();
  if (options.size == 0) {
    return Status::InvalidArgument(fmt::format("segment '{}': pool size must be greater than 0", name));
  }
  if ((options.mode & ~mode_t{0660}) != 0) {
    return Status::InvalidArgument(fmt::format("segment '{}': mode {:o} grants more than 0660", name, options.mode));
  }
  auto placed = Place(name, options);
  if (!placed.ok()) return placed.status();
  const Placement& place = *placed;
  const std::string& dir = place.dir;
  const uint64_t size = RoundUp(options.size, place.granule);
  const bool hugetlb = place.info && place.info->hugetlbfs();
  if (options.check_capacity && !hugetlb) SHMKV_RETURN_IF_ERROR(platform::CheckCapacity(dir, name, size));

  // With a directory, the name is also held in the default place (a locked 1-byte file): no pool
  // of the same name can appear there, and an older client that attaches by name alone (it does
  // not read shm_path) finds a segment smaller than the pool and fails rather than mapping another
  // pool.
  sys::UniqueFd placeholder;
  std::optional<UnlinkGuard> unlink_placeholder_on_error;
  if (!dir.empty() && platform::kLinux) {
    auto held = platform::CreateExclusive("", name, options.mode);
    if (!held.ok()) {
      if (held.status().sys_errno() == EEXIST) return ExistsError("", name);
      return held.status().WithContext("holding the name in the default place");
    }
    placeholder = std::move(held).value();
    unlink_placeholder_on_error.emplace("", name);
    auto locked = platform::TryLockLiveness(placeholder.get(), name);
    if (!locked.ok()) return locked.status().WithContext("locking the name in the default place");
    // One byte (no memory: nothing is written): not empty, so if this process dies the next
    // start-up's stale cleanup removes it at once (empty files get a grace period), and an older
    // client's attach fails on its size.
    SHMKV_RETURN_IF_ERROR(sys::Call([&] {
                            return ::ftruncate(placeholder.get(), 1);
                          }).ToStatus(fmt::format("sizing the name '{}' held in the default place", name)));
  }

  auto opened = platform::CreateExclusive(dir, name, options.mode);
  if (!opened.ok()) {
    if (opened.status().sys_errno() == EEXIST) return ExistsError(dir, name);
    return opened.status();
  }
  sys::UniqueFd fd = std::move(opened).value();
  UnlinkGuard unlink_on_error(dir, name);
  // umask may have narrowed the mode; set exactly what was asked for.
  SHMKV_RETURN_IF_ERROR(
      sys::Call([&] { return ::fchmod(fd.get(), options.mode); }).ToStatus(fmt::format("fchmod segment '{}'", name)));

  auto lock = platform::TryLockLiveness(fd.get(), name);
  if (!lock.ok()) return lock.status().WithContext("taking the liveness lock");
  // A concurrent `shmkv gc` may have seen the segment between create and lock, found it
  // unlocked and unlinked it. Then this descriptor names nothing: refuse rather than serve a pool
  // nobody can attach to.
  if (!platform::StillNamed(fd.get(), dir, name)) {
    unlink_on_error.dismiss();  // the name is no longer ours to remove
    return Status::Busy(
        fmt::format("segment '{}' was removed by a concurrent cleanup while being created; retry", name));
  }

  SHMKV_RETURN_IF_ERROR(platform::ReserveSize(fd.get(), dir, name, size));
  void* mapped = Map(fd.get(), size);
  if (mapped == nullptr) {
    return Status::FromErrno(fmt::format("mapping {} of segment '{}'", FormatSize(size), name), errno);
  }
  MappingGuard unmap_on_error(mapped, size);
  auto* data = static_cast<std::byte*>(mapped);
  if (options.huge_pages == HugePages::kOff) {
    platform::AdviseNoHugePages(data, size);
  } else if (!hugetlb) {
    platform::AdviseHugePages(data, size);
  }
  // Without a prefault, the first huge page is faulted in so that the check below sees whether
  // the kernel hands out huge pages here at all.
  std::function<void(uint64_t)> progress;
  if (options.prefault && options.prefault_progress) {
    progress = [&options, size](uint64_t done) { options.prefault_progress(done, size); };
  }
  platform::Prefault(data, options.prefault ? size : std::min(size, platform::PmdPageSize()), progress);

  SharedSegment seg;
  SHMKV_RETURN_IF_ERROR(VerifyHugePages(name, place, options, data, size, &seg.page_size_, &seg.huge_bytes_));
  seg.pinned_ = options.pin_with_cuda && CudaHostPinner::Instance().Register(data, size).ok();
  seg.name_ = name;
  seg.dir_ = dir;
  seg.path_ = platform::SegmentPath(dir, name);
  seg.data_ = static_cast<std::byte*>(unmap_on_error.release());
  seg.size_ = size;
  seg.owner_ = true;
  seg.fd_ = fd.release();
  seg.lock_fd_ = lock->release();
  seg.placeholder_fd_ = placeholder.release();
  unlink_on_error.dismiss();
  if (unlink_placeholder_on_error) unlink_placeholder_on_error->dismiss();
  return seg;
}

Result<SharedSegment> SharedSegment::Attach(std::string_view requested, const SegmentAttachOptions& options) {
  if (requested.empty()) return Status::InvalidArgument("attach: a segment name is required");
  std::string name;
  if (options.exact_name) {
    name = std::string(requested.starts_with('/') ? requested.substr(1) : requested);
  } else {
    auto normalized = NormalizeSegmentName(requested, static_cast<int>(::getpid()));
    if (!normalized.ok()) return normalized.status();
    name = std::move(normalized).value();
  }

  auto fd = platform::OpenExisting(options.dir, name);
  if (!fd.ok()) {
    if (fd.status().code() == StatusCode::kNotFound) {
      // Only a shmkv pool has a server to blame; an exact name may be anyone's.
      return Status(
          StatusCode::kNotFound,
          fmt::format("segment '{}'{} does not exist{}", name, options.dir.empty() ? "" : " in " + options.dir,
                      options.exact_name ? "" : " (is the server running?)"),
          ENOENT);
    }
    return fd.status();
  }
  struct stat st {};
  SHMKV_RETURN_IF_ERROR(
      sys::Call([&] { return ::fstat(fd->get(), &st); }).ToStatus(fmt::format("fstat segment '{}'", name)));
  // A FIFO or directory planted in /dev/shm is no segment (mmap would fail less clearly).
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(fmt::format("'{}' is not a shared-memory segment", name));
  if (options.expected_owner) SHMKV_RETURN_IF_ERROR(CheckOwnership(name, st, *options.expected_owner));
  const auto actual = static_cast<uint64_t>(st.st_size);
  if (actual == 0) {
    return Status::NotFound(fmt::format("segment '{}' is empty (its owner is still creating it, or failed)", name));
  }
  if (options.size > actual) {
    return Status::InvalidArgument(
        fmt::format("segment '{}' holds {} bytes, fewer than the {} requested", name, actual, options.size));
  }
  const uint64_t size = options.size == 0 ? actual : options.size;
  void* mapped = Map(fd->get(), size);
  if (mapped == nullptr) {
    return Status::FromErrno(fmt::format("mapping {} of segment '{}'", FormatSize(size), name), errno);
  }
  // Huge pages where the segment's file system gives them (a huge tmpfs maps them by itself; this
  // covers /dev/shm where shmem_enabled is advise).
  platform::AdviseHugePages(static_cast<std::byte*>(mapped), size);
  // The descriptor closes here: an attacher keeps only its mapping and no lock, so it can never
  // make a dead owner's segment look live, nor unlink anything.
  SharedSegment seg;
  seg.name_ = name;
  seg.dir_ = options.dir;
  seg.path_ = platform::SegmentPath(options.dir, name);
  seg.data_ = static_cast<std::byte*>(mapped);
  seg.size_ = size;
  seg.pinned_ = options.pin_with_cuda && CudaHostPinner::Instance().Register(mapped, size).ok();
  return seg;
}

SharedSegment::SharedSegment(SharedSegment&& other) noexcept
    : name_(std::move(other.name_)),
      dir_(std::move(other.dir_)),
      path_(std::move(other.path_)),
      page_size_(std::exchange(other.page_size_, 0)),
      huge_bytes_(std::exchange(other.huge_bytes_, 0)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      fd_(std::exchange(other.fd_, -1)),
      lock_fd_(std::exchange(other.lock_fd_, -1)),
      placeholder_fd_(std::exchange(other.placeholder_fd_, -1)),
      owner_(std::exchange(other.owner_, false)),
      pinned_(std::exchange(other.pinned_, false)) {}

SharedSegment& SharedSegment::operator=(SharedSegment&& other) noexcept {
  if (this != &other) {
    Reset();
    name_ = std::move(other.name_);
    dir_ = std::move(other.dir_);
    path_ = std::move(other.path_);
    page_size_ = std::exchange(other.page_size_, 0);
    huge_bytes_ = std::exchange(other.huge_bytes_, 0);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    fd_ = std::exchange(other.fd_, -1);
    lock_fd_ = std::exchange(other.lock_fd_, -1);
    placeholder_fd_ = std::exchange(other.placeholder_fd_, -1);
    owner_ = std::exchange(other.owner_, false);
    pinned_ = std::exchange(other.pinned_, false);
  }
  return *this;
}

SharedSegment::~SharedSegment() {
  Reset();
}

void SharedSegment::Reset() noexcept {
  if (data_ != nullptr) {
    if (pinned_) (void)CudaHostPinner::Instance().Unregister(data_);
    ::munmap(data_, size_);
  }
  // Unlink while still holding the liveness lock, so no cleanup can race on a half-dead name.
  if (owner_) (void)platform::UnlinkSegment(dir_, name_);
  if (owner_ && placeholder_fd_ >= 0) (void)platform::UnlinkSegment("", name_);
  if (placeholder_fd_ >= 0) ::close(placeholder_fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
  if (fd_ >= 0) ::close(fd_);
  data_ = nullptr;
  size_ = 0;
  fd_ = lock_fd_ = placeholder_fd_ = -1;
  owner_ = pinned_ = false;
}

}  // namespace shmkv
