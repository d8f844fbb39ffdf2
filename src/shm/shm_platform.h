// Platform details of POSIX shared memory that segment.cc and stale.cc share.
#pragma once

#include <sys/stat.h>

#include <optional>
#include <string>
#include <string_view>

#include "common/syscall.h"
#include "shmkv/status.h"

namespace shmkv::shm {

// shm_open wants one leading '/'.
inline std::string ShmOpenName(std::string_view name) {
  return "/" + std::string(name);
}

#if defined(__linux__)
// Where Linux exposes POSIX shared memory as files.
inline constexpr const char* kShmDir = "/dev/shm";
#endif

// "uid 1000 (alice)", or "uid 1000" when no user name resolves.
std::string DescribeUid(uid_t uid);

// Owner and mode of an existing segment, without opening it where the platform allows (Linux:
// stat of its file, so it works for segments this user may not open). nullopt when unknown.
std::optional<struct stat> StatSegment(std::string_view name);

// Opens an existing segment read-write (never creates).
Result<sys::UniqueFd> OpenExisting(std::string_view name);

// The liveness lock (docs/design.md §2). Linux: flock on the segment's own descriptor, so `lock_fd`
// is the segment fd and nothing new is opened. macOS: a lock file named after the segment in
// the runtime directory; the returned descriptor holds it.
// Non-blocking: kBusy when another process holds it.
Result<sys::UniqueFd> TryLockLiveness(int segment_fd, std::string_view name);

// macOS: removes the lock file of a segment that is being unlinked; elsewhere a no-op.
void RemoveLivenessFile(std::string_view name);

// Linux: true when `fd` is still the file that `name` names (nobody unlinked and replaced it).
// Other platforms: true.
bool StillNamed(int fd, std::string_view name);

}  // namespace shmkv::shm
