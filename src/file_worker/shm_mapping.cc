#include "file_worker/shm_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <utility>

#include <fmt/format.h>

#include "common/syscall.h"

namespace shmkv::file_worker {

Result<ShmMapping> ShmMapping::Attach(const std::string& name, uint64_t size) {
  if (size == 0) return Status::InvalidArgument(fmt::format("segment '{}': size must be greater than 0", name));
  const std::string path = "/" + name;
  // glibc's shm_open adds O_NOFOLLOW and O_CLOEXEC: a symlink planted in /dev/shm is not followed.
  auto fd = sys::Call([&] { return ::shm_open(path.c_str(), O_RDWR, 0); });
  if (!fd.ok()) {
    if (fd.err == ENOENT) {
      return Status(StatusCode::kNotFound, fmt::format("segment '{}' does not exist", name), fd.err);
    }
    return Status::FromErrno(fmt::format("shm_open of segment '{}'", name), fd.err);
  }
  sys::UniqueFd owned(fd.value);
  struct stat st {};
  SHMKV_RETURN_IF_ERROR(
      sys::Call([&] { return ::fstat(owned.get(), &st); }).ToStatus(fmt::format("fstat of segment '{}'", name)));
  // A FIFO or directory someone planted in /dev/shm is no segment (mmap would fail less clearly).
  if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument(fmt::format("'{}' is not a shared-memory segment", name));
  }
  const auto actual = static_cast<uint64_t>(st.st_size);
  if (size > actual) {
    return Status::InvalidArgument(
        fmt::format("segment '{}' holds {} bytes, fewer than the {} requested", name, actual, size));
  }
  void* p = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ | PROT_WRITE, MAP_SHARED, owned.get(), 0);
  if (p == MAP_FAILED) return Status::FromErrno(fmt::format("mapping {} bytes of segment '{}'", size, name), errno);
  ShmMapping m;
  m.name_ = name;
  m.data_ = static_cast<std::byte*>(p);
  m.size_ = size;
  return m;
}

ShmMapping::ShmMapping(ShmMapping&& other) noexcept
    : name_(std::move(other.name_)), data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

ShmMapping& ShmMapping::operator=(ShmMapping&& other) noexcept {
  if (this != &other) {
    Reset();
    name_ = std::move(other.name_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

ShmMapping::~ShmMapping() {
  Reset();
}

void ShmMapping::Reset() noexcept {
  if (data_ != nullptr) ::munmap(data_, static_cast<size_t>(size_));
  data_ = nullptr;
  size_ = 0;
}

}  // namespace shmkv::file_worker
