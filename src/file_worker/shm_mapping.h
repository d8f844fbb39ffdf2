// ShmMapping: the file worker's read-write mapping of a POSIX shared-memory segment, attached by
// the name the client gives (after CheckSegmentName), exactly as LMCache's worker does
// (shm_open(name) + mmap). Unlike shmkv::SharedSegment::Attach it adds no "lmcache_l1_pool_"
// prefix, so LMCache's own segments (named by its shm_name setting) can be attached too.
//
// The descriptor is closed once the segment is mapped: the worker holds no lock and never unlinks.
//
// Thread-safety: a value owned by one thread (move-only); the mapped bytes are shared memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "shmkv/status.h"

namespace shmkv::file_worker {

class ShmMapping {
 public:
  // Maps the first `size` bytes (> 0) of the segment `name` (no leading '/'; CheckSegmentName's
  // output). Fails with kNotFound when it does not exist, kInvalidArgument when it is not a regular
  // shared-memory object or holds fewer than `size` bytes.
  static Result<ShmMapping> Attach(const std::string& name, uint64_t size);

  ShmMapping(ShmMapping&& other) noexcept;
  ShmMapping& operator=(ShmMapping&& other) noexcept;
  ShmMapping(const ShmMapping&) = delete;
  ShmMapping& operator=(const ShmMapping&) = delete;
  ~ShmMapping();

  const std::string& name() const { return name_; }
  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  ShmMapping() = default;
  void Reset() noexcept;

  std::string name_;
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace shmkv::file_worker
