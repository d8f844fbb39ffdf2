// Platform layer, shared memory (src/platform/platform.h): how a segment is opened, sized,
// locked, listed and removed, the capacity check and the page advice. SharedSegment
// (src/shm/segment.cc) and the stale-segment scan (src/shm/stale.cc) are the callers.
//
//                     Linux (SHMKV_LINUX_PLATFORM)          portable (macOS; Linux with
//                                                           SHMKV_PORTABLE_PLATFORM)
//   liveness lock     flock on the segment's own fd         flock on a lock file
//                                                           $TMPDIR/shmkv-<name>.lock
//   segment directory /dev/shm, or any tmpfs/hugetlbfs      shm_open's namespace only
//                     directory (open(2) of DIR/name)
//   list segments     the files of the directory            the lock files in $TMPDIR
//   capacity check    free space of /dev/shm (statvfs)      none (no file system to ask)
//   reserve pages     posix_fallocate (ENOSPC at start)     ftruncate
//   still named?      inode of the fd == inode of the name  assumed (no path to compare)
//   huge pages        madvise(MADV_HUGEPAGE), a segment     none (no --shm-dir)
//                     directory on hugetlbfs or a huge=
//                     tmpfs, /proc/self/smaps to verify
//   prefault          madvise(MADV_POPULATE_WRITE), else    touching every page
//                     touching every page
//
// Every function that names a segment takes `dir` first: the directory the segment file lives in
// (Linux), empty for the platform's default (Linux: /dev/shm, where shm_open puts it). The portable
// platform has only the default and refuses another (kUnavailable).
//
// Thread-safety: free functions without shared state; safe from any thread.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
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

// The directory whose files are shm_open's segments: /dev/shm on Linux (either build: the portable
// one's shm_open puts them there too); empty where there is none (macOS). A segment reported in it
// is attached as a default one.
std::string_view DefaultSegmentDir();

// Linux: the file of segment `name` in `dir` (default /dev/shm), e.g. /dev/shm/lmcache_l1_pool_7.
// Portable: empty (shared memory has no path there).
std::string SegmentPath(std::string_view dir, std::string_view name);

// Creates segment `name` exclusively (O_CREAT | O_EXCL), read-write, with `mode` before umask.
// kAlreadyExists (errno EEXIST) when the name is taken.
Result<sys::UniqueFd> CreateExclusive(std::string_view dir, std::string_view name, mode_t mode);

// Opens an existing segment read-write (never creates). kNotFound when it does not exist.
Result<sys::UniqueFd> OpenExisting(std::string_view dir, std::string_view name);

// Owner and mode of an existing segment, without opening it where the platform allows (Linux:
// stat of its file, so it works for segments this user may not open). nullopt when unknown.
std::optional<struct stat> StatSegment(std::string_view dir, std::string_view name);

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
Status UnlinkSegment(std::string_view dir, std::string_view name);

// Linux: true when `fd` is still the file that `name` names (nobody unlinked and replaced it).
// Portable: true (shared memory has no path to compare with).
bool StillNamed(int fd, std::string_view dir, std::string_view name);

// Names of every segment whose name starts with `prefix` and is longer than it, sorted. Linux:
// the files of `dir` (default /dev/shm). Portable (shared memory cannot be enumerated there): the segments that
// have a lock file in $TMPDIR (or /tmp), i.e. those created by shmkv as this user.
Result<std::vector<std::string>> ListSegmentNames(std::string_view dir, std::string_view prefix);

// Linux: kFull when `dir` (default /dev/shm) has less free space than `size` bytes, with the hint
// to enlarge it. Portable: OK (there is no file system to ask).
Status CheckCapacity(std::string_view dir, std::string_view name, uint64_t size);

// Sizes a new segment to `size` bytes. Linux: posix_fallocate, so a too-small /dev/shm (or too few
// free hugetlbfs pages) fails here (kFull) and not with SIGBUS on a later store. Portable:
// ftruncate.
Status ReserveSize(int fd, std::string_view dir, std::string_view name, uint64_t size);

// Asks for transparent huge pages for a mapping (Linux; ignored where the host does not allow
// them for shared memory). Portable: nothing.
void AdviseHugePages(std::byte* data, uint64_t size);
// Asks the kernel not to use transparent huge pages for a mapping (--huge-pages off), also on a
// tmpfs mounted huge=always. Portable: nothing.
void AdviseNoHugePages(std::byte* data, uint64_t size);

// ---- huge pages (docs/huge-pages.md) -------------------------------------------------------------

// Collapses the small pages of a mapping into transparent huge pages now, compacting memory as
// needed (MADV_COLLAPSE, Linux 6.1+): for a pool that got only part of its huge pages because free
// memory was fragmented when it was allocated. False where the kernel refused or lacks it.
bool CollapseHugePages(std::byte* data, uint64_t size);

// What backs a segment directory: the mount that holds it.
struct ShmDirInfo {
  std::string dir;          // the directory asked about (default: /dev/shm)
  std::string mount_point;  // the mount holding it
  std::string fs_type;      // "tmpfs", "hugetlbfs", "ext4", ...
  std::string huge_option;  // tmpfs: its huge= option ("never" when the mount has none)
  uint64_t block_size = 0;  // statfs f_bsize: hugetlbfs's page size
  bool hugetlbfs() const { return fs_type == "hugetlbfs"; }
  bool memory() const { return fs_type == "tmpfs" || fs_type == "hugetlbfs"; }
  // A tmpfs that hands out transparent huge pages (huge=always or within_size).
  bool huge_tmpfs() const { return fs_type == "tmpfs" && (huge_option == "always" || huge_option == "within_size"); }
};
// Linux: the mount of `dir` from /proc/self/mounts and statfs. Portable: kUnavailable.
Result<ShmDirInfo> InspectShmDir(std::string_view dir);

// The size of a PMD-mapped transparent huge page (Linux: hpage_pmd_size, normally 2 MiB).
uint64_t PmdPageSize();

// What really backs the mapping that starts at `data`, from /proc/self/smaps: its KernelPageSize
// (a hugetlbfs mapping: the huge page size) and the bytes mapped by huge pages (AnonHugePages +
// ShmemPmdMapped + FilePmdMapped, or the whole hugetlb size). Portable: kUnavailable.
struct MappingPages {
  uint64_t kernel_page_size = 0;
  uint64_t huge_bytes = 0;
};
Result<MappingPages> InspectMapping(const std::byte* data);

// Why a segment of `size` bytes in `info` has no huge pages, and what gives it some: names the
// mount, its huge= option or its hugetlbfs page pool, /sys/kernel/mm/transparent_hugepage/
// shmem_enabled, and the nr_hugepages a hugetlbfs pool of that size needs. For error messages.
std::string HugePageAdvice(const ShmDirInfo& info, uint64_t size);

// hugetlbfs: kFull with HugePageAdvice when the pool of `page_size` pages has fewer than
// size / page_size free (unreserved) pages. OK elsewhere.
Status CheckHugetlbPages(const ShmDirInfo& info, uint64_t size);

// Mount points that give huge pages (hugetlbfs mounts, tmpfs mounted huge=always|within_size),
// from /proc/self/mounts; `shmkv gc` scans them besides /dev/shm. Portable: none.
std::vector<std::string> HugePageMounts();

// A --shm-dir must be an absolute path of a directory that no other user can plant or remove
// files in: owned by this euid or root, and not writable by others unless sticky (as /dev/shm).
Status CheckSegmentDir(std::string_view dir);

// Faults every page of a fresh mapping in, writable; `progress` (may be empty) hears the bytes
// done after each gigabyte.
void Prefault(std::byte* data, uint64_t size, const std::function<void(uint64_t done)>& progress = {});

}  // namespace shmkv::platform
