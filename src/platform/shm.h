// Platform layer, shared memory (src/platform/platform.h): how a segment is opened, sized,
// locked, listed and removed, the capacity check and the page advice. SharedSegment
// (src/shm/segment.cc) and the stale-segment scan (src/shm/stale.cc) are the callers.
//
//                     Linux (SHMKV_LINUX_PLATFORM)          portable (macOS; Linux with
//                                                           SHMKV_PORTABLE_PLATFORM)
//   liveness lock     flock on the segment's own fd         flock on a lock file
//                                                           $TMPDIR/shmkv-<name>.lock
//   list segments     the files of /dev/shm                 the lock files in $TMPDIR
//   capacity check    free space of /dev/shm (statvfs)      none (no file system to ask)
//   reserve pages     posix_fallocate (ENOSPC at start)     ftruncate
//   still named?      inode of the fd == inode of the name  assumed (no path to compare)
//   huge pages        madvise(MADV_HUGEPAGE)                none
//   prefault          madvise(MADV_POPULATE_WRITE), else    touching every page
//                     touching every page
//
// Thread-safety: free functions without shared state; safe from any thread.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/syscall.h"
#include "platform/platform.h"
#include "shmkv/status.h"

namespace shmkv::platform {

// macOS limits shared-memory names to 31 bytes with the leading '/' (PSHMNAMLEN); Linux only to
// a file name in /dev/shm. A kernel limit: selected by the operating system, so a portable build
// on Linux keeps Linux's (SegmentNameRules::ForThisPlatform).
#if defined(__APPLE__)
inline constexpr bool kShortShmNames = true;
#else
inline constexpr bool kShortShmNames = false;
#endif

// shm_open wants one leading '/'.
std::string ShmOpenName(std::string_view name);

// Creates segment `name` exclusively (O_CREAT | O_EXCL), read-write, with `mode` before umask.
// kAlreadyExists (errno EEXIST) when the name is taken.
Result<sys::UniqueFd> CreateExclusive(std::string_view name, mode_t mode);

// Opens an existing segment read-write (never creates). kNotFound when it does not exist.
Result<sys::UniqueFd> OpenExisting(std::string_view name);

// Owner and mode of an existing segment, without opening it where the platform allows (Linux:
// stat of its file, so it works for segments this user may not open). nullopt when unknown.
std::optional<struct stat> StatSegment(std::string_view name);

// The liveness lock (docs/design.md §2), non-blocking: kBusy when another process holds it.
// Linux: flock on `segment_fd` itself; the returned descriptor is empty (the lock lives as long as
// segment_fd). Portable: flock on the lock file of `name`, which the returned descriptor holds; on
// Linux the portable build also takes the Linux lock on `segment_fd`, so a Linux-platform build on
// the same machine (its `shmkv gc`) sees the segment as live too.
Result<sys::UniqueFd> TryLockLiveness(int segment_fd, std::string_view name);

// The lock file of segment `name` on the portable platform; empty on Linux (the lock is taken on
// the segment itself).
std::string LivenessLockPath(std::string_view name);

// Removes segment `name` (shm_unlink) and, portable, its lock file. OK when it was already gone.
Status UnlinkSegment(std::string_view name);

// Linux: true when `fd` is still the file that `name` names (nobody unlinked and replaced it).
// Portable: true (shared memory has no path to compare with).
bool StillNamed(int fd, std::string_view name);

// Names of every segment whose name starts with `prefix` and is longer than it, sorted. Linux:
// the files of /dev/shm. Portable (shared memory cannot be enumerated there): the segments that
// have a lock file in $TMPDIR (or /tmp), i.e. those created by shmkv as this user.
Result<std::vector<std::string>> ListSegmentNames(std::string_view prefix);

// Linux: kFull when /dev/shm has less free space than `size` bytes, with the hint to enlarge it.
// Portable: OK (there is no file system to ask).
Status CheckCapacity(std::string_view name, uint64_t size);

// Sizes a new segment to `size` bytes. Linux: posix_fallocate, so a too-small /dev/shm fails here
// (kFull) and not with SIGBUS on a later store. Portable: ftruncate.
Status ReserveSize(int fd, std::string_view name, uint64_t size);

// Asks for transparent huge pages for a fresh mapping (Linux; ignored where the host does not
// allow them for shared memory). Portable: nothing.
void AdviseHugePages(std::byte* data, uint64_t size);

// Faults every page of a fresh mapping in, writable.
void Prefault(std::byte* data, uint64_t size);

}  // namespace shmkv::platform
