#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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
  explicit UnlinkGuard(std::string name) : name_(std::move(name)) {}
  ~UnlinkGuard() {
    if (!name_.empty()) (void)platform::UnlinkSegment(name_);
  }
  UnlinkGuard(const UnlinkGuard&) = delete;
  UnlinkGuard& operator=(const UnlinkGuard&) = delete;
  void dismiss() { name_.clear(); }

 private:
  std::string name_;
};

// Why Create found `name` taken: whose it is (another user may have created a predictable name
// first), its mode, and whether a live process holds it.
Status ExistsError(const std::string& name) {
  const std::optional<struct stat> st = platform::StatSegment(name);
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
  if (auto existing = platform::OpenExisting(name); existing.ok()) {
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

}  // namespace

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
  const uint64_t page = PageSize();
  const uint64_t size = (options.size + page - 1) / page * page;
  if (options.check_capacity) SHMKV_RETURN_IF_ERROR(platform::CheckCapacity(name, size));

  auto opened = platform::CreateExclusive(name, options.mode);
  if (!opened.ok()) {
    if (opened.status().sys_errno() == EEXIST) return ExistsError(name);
    return opened.status();
  }
  sys::UniqueFd fd = std::move(opened).value();
  UnlinkGuard unlink_on_error(name);
  // umask may have narrowed the mode; set exactly what was asked for.
  SHMKV_RETURN_IF_ERROR(
      sys::Call([&] { return ::fchmod(fd.get(), options.mode); }).ToStatus(fmt::format("fchmod segment '{}'", name)));

  auto lock = platform::TryLockLiveness(fd.get(), name);
  if (!lock.ok()) return lock.status().WithContext("taking the liveness lock");
  // A concurrent `shmkv gc` may have seen the segment between create and lock, found it
  // unlocked and unlinked it. Then this descriptor names nothing: refuse rather than serve a pool
  // nobody can attach to.
  if (!platform::StillNamed(fd.get(), name)) {
    unlink_on_error.dismiss();  // the name is no longer ours to remove
    return Status::Busy(
        fmt::format("segment '{}' was removed by a concurrent cleanup while being created; retry", name));
  }

  SHMKV_RETURN_IF_ERROR(platform::ReserveSize(fd.get(), name, size));
  void* mapped = Map(fd.get(), size);
  if (mapped == nullptr) {
    return Status::FromErrno(fmt::format("mapping {} of segment '{}'", FormatSize(size), name), errno);
  }
  MappingGuard unmap_on_error(mapped, size);
  auto* data = static_cast<std::byte*>(mapped);
  platform::AdviseHugePages(data, size);
  if (options.prefault) platform::Prefault(data, size);

  SharedSegment seg;
  seg.pinned_ = options.pin_with_cuda && CudaHostPinner::Instance().Register(data, size).ok();
  seg.name_ = name;
  seg.data_ = static_cast<std::byte*>(unmap_on_error.release());
  seg.size_ = size;
  seg.owner_ = true;
  seg.fd_ = fd.release();
  seg.lock_fd_ = lock->release();
  unlink_on_error.dismiss();
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

  auto fd = platform::OpenExisting(name);
  if (!fd.ok()) {
    if (fd.status().code() == StatusCode::kNotFound) {
      // Only a shmkv pool has a server to blame; an exact name may be anyone's.
      return Status(
          StatusCode::kNotFound,
          fmt::format("segment '{}' does not exist{}", name, options.exact_name ? "" : " (is the server running?)"),
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
  // The descriptor closes here: an attacher keeps only its mapping and no lock, so it can never
  // make a dead owner's segment look live, nor unlink anything.
  SharedSegment seg;
  seg.name_ = name;
  seg.data_ = static_cast<std::byte*>(mapped);
  seg.size_ = size;
  seg.pinned_ = options.pin_with_cuda && CudaHostPinner::Instance().Register(mapped, size).ok();
  return seg;
}

SharedSegment::SharedSegment(SharedSegment&& other) noexcept
    : name_(std::move(other.name_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      fd_(std::exchange(other.fd_, -1)),
      lock_fd_(std::exchange(other.lock_fd_, -1)),
      owner_(std::exchange(other.owner_, false)),
      pinned_(std::exchange(other.pinned_, false)) {}

SharedSegment& SharedSegment::operator=(SharedSegment&& other) noexcept {
  if (this != &other) {
    Reset();
    name_ = std::move(other.name_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    fd_ = std::exchange(other.fd_, -1);
    lock_fd_ = std::exchange(other.lock_fd_, -1);
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
  if (owner_) (void)platform::UnlinkSegment(name_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
  if (fd_ >= 0) ::close(fd_);
  data_ = nullptr;
  size_ = 0;
  fd_ = lock_fd_ = -1;
  owner_ = pinned_ = false;
}

}  // namespace shmkv
