// The POSIX shared-memory segment that holds the L1 pool (docs/design.md §2).
//
// One server process creates and owns the segment; workers and the file worker attach to it.
// The segment holds payload bytes only: no metadata, no pointers, nothing a writer could corrupt
// that the server relies on.
//
// Naming: every segment shmkv creates or removes carries the prefix "lmcache_l1_pool_"; that
// prefix is what makes a segment ours, and nothing without it is ever touched.
//
// Liveness: the owner holds an exclusive flock(2) on the segment's own descriptor for its whole
// life (on macOS, where a shared-memory descriptor cannot be locked, on a lock file named after
// the segment). A prefixed segment that nobody holds locked is stale: its owner died without
// unlinking it, and RemoveStaleSegments() may delete it.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmkv/export.h"
#include "shmkv/status.h"

namespace shmkv {

inline constexpr std::string_view kSegmentPrefix = "lmcache_l1_pool_";

// Limits a platform puts on shared-memory names.
struct SHMKV_EXPORT SegmentNameRules {
  // Longest name shm_open accepts, counting the leading '/'. Linux: the file name in /dev/shm
  // may have NAME_MAX (255) bytes, so 256 with the '/'; macOS: 31 bytes with the '/'.
  size_t max_bytes_with_slash;

  static SegmentNameRules Linux() { return {256}; }
  static SegmentNameRules MacOS() { return {31}; }
  static SegmentNameRules ForThisPlatform();
};

// The name rules of docs/design.md §2 as one pure function. Returns the full segment name without a
// leading slash (e.g. "lmcache_l1_pool_foo"), which is what registration reports and what
// Python's multiprocessing.shared_memory expects.
//   nullopt or ""          -> "lmcache_l1_pool_<pid>"
//   "foo", "/foo"          -> "lmcache_l1_pool_foo"
//   "lmcache_l1_pool_foo"  -> unchanged (never prefixed twice), also with one leading '/'
// Errors (kInvalidArgument, each saying why): nothing left after the prefix, a '/' after the one
// leading '/' is stripped, a '\', a NUL byte, or longer than the platform allows.
SHMKV_EXPORT Result<std::string> NormalizeSegmentName(
    std::optional<std::string_view> requested, int pid,
    const SegmentNameRules& rules = SegmentNameRules::ForThisPlatform());

// Whether the pool asks for huge pages and what happens without them (docs/huge-pages.md).
enum class HugePages {
  kOff,   // 4 KiB pages (MADV_NOHUGEPAGE, also on a huge=always tmpfs); refused on a hugetlbfs
  kAuto,  // ask for them (MADV_HUGEPAGE; a huge tmpfs or hugetlbfs directory); without them, or with
          // too few free hugetlbfs pages, use 4 KiB pages (in /dev/shm) and log why
  kOn,    // Create fails, naming the mount and the nr_hugepages needed, unless the whole pool got them
};
SHMKV_EXPORT std::string_view HugePagesName(HugePages mode);
// "off", "auto", "on"; kInvalidArgument otherwise.
SHMKV_EXPORT Result<HugePages> ParseHugePages(std::string_view text);

struct SegmentCreateOptions {
  // Requested name, normalised with NormalizeSegmentName (nullopt: derived from this pid).
  std::optional<std::string> name;
  // Pool size in bytes, > 0. Rounded up to the system page size.
  uint64_t size = 0;
  // Linux: before creating, fail when /dev/shm has less free space than `size`.
  bool check_capacity = true;
  // Fault every page in at create (MADV_POPULATE_WRITE, or touching pages where the kernel lacks
  // it), so the data path never takes a first-touch fault. Without it only the first 2 MiB are
  // faulted in, for the huge-page check.
  bool prefault = true;
  // Called during the prefault after each gigabyte (and at the end) with the bytes faulted in so
  // far and the total, on the creating thread: a large pool takes seconds. May be empty.
  std::function<void(uint64_t done, uint64_t total)> prefault_progress;
  // Permission bits of the segment: 0600 (only this uid) or 0660 (this group too).
  mode_t mode = 0600;
  // Register the mapping with cudaHostRegister when a CUDA runtime and a device are present.
  bool pin_with_cuda = true;
  // Directory to create the segment file in (Linux); empty: /dev/shm. A hugetlbfs mount or a
  // tmpfs mounted huge=always|within_size gives the pool huge pages; it must be owned by this user
  // or root and not writable by others unless sticky. The name keeps its lmcache_l1_pool_ prefix.
  std::string dir;
  // Huge pages for the mapping (docs/huge-pages.md). Checked in /proc/self/smaps after the
  // prefault (or after touching the first huge page when not prefaulting).
  HugePages huge_pages = HugePages::kAuto;
};

struct SegmentAttachOptions {
  // Bytes to map; 0 maps the whole segment. Attaching fails when the segment is smaller.
  uint64_t size = 0;
  // The uid that must own the segment (a client passes its server's uid). When set, Attach
  // refuses (kInvalidArgument, naming the segment, its owner and mode) a segment owned by anyone
  // else or accessible to all users (mode & 0007): another local user may have created the name
  // first, and a worker must not write KV bytes into a pool others can read or swap.
  std::optional<uid_t> expected_owner;
  // Register the mapping with cudaHostRegister when a CUDA runtime and a device are present.
  bool pin_with_cuda = true;
  // Attach the name exactly as given (one leading '/' allowed), without the lmcache_l1_pool_
  // normalisation: the file worker attaches segments other programs named (LMCache's own). The
  // caller has validated the name.
  bool exact_name = false;
  // Directory of the segment file (Linux; what the server reported as its path); empty: /dev/shm.
  std::string dir;
};

// A mapped shared-memory segment: move-only RAII over the descriptor, the mapping, the liveness
// lock and (for the owner) the name.
//
// The owner (Create) unlinks the segment when destroyed. An attacher (Attach) never unlinks it,
// also not when its process dies: an attacher holds nothing but its mapping.
//
// Thread-safety: the object itself is not synchronised (one owner thread); the bytes it maps are
// shared memory and their use is governed by the slot protocol, not by this class.
class SHMKV_EXPORT SharedSegment {
 public:
  // Creates, sizes, maps, prefaults and locks a new segment. Fails if the name exists.
  static Result<SharedSegment> Create(const SegmentCreateOptions& options);
  // Maps an existing segment read-write without owning it. `name` is normalised as above.
  static Result<SharedSegment> Attach(std::string_view name, const SegmentAttachOptions& options = {});

  SharedSegment(SharedSegment&& other) noexcept;
  SharedSegment& operator=(SharedSegment&& other) noexcept;
  SharedSegment(const SharedSegment&) = delete;
  SharedSegment& operator=(const SharedSegment&) = delete;
  ~SharedSegment();

  const std::string& name() const { return name_; }
  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  std::span<std::byte> bytes() const { return {data_, static_cast<size_t>(size_)}; }
  bool is_owner() const { return owner_; }
  // True when the mapping is registered with CUDA (page-locked for DMA).
  bool pinned() const { return pinned_; }
  // The directory given at create/attach (empty: the platform's default) and the segment's file
  // (Linux: e.g. /dev/shm/lmcache_l1_pool_7; empty on the portable platform).
  const std::string& dir() const { return dir_; }
  const std::string& path() const { return path_; }
  // Owner only: the largest page size backing the mapping as found in /proc/self/smaps at create
  // (4096 without huge pages; 0 where unknown), and how many bytes huge pages backed then.
  uint64_t page_size() const { return page_size_; }
  uint64_t huge_page_bytes() const { return huge_bytes_; }

 private:
  SharedSegment() = default;
  void Reset() noexcept;

  std::string name_;
  std::string dir_;
  std::string path_;
  uint64_t page_size_ = 0;
  uint64_t huge_bytes_ = 0;
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  int fd_ = -1;       // owner: held open for the liveness lock; attacher: -1
  int lock_fd_ = -1;  // macOS only: the lock file
  // Owner with a segment directory: the locked 1-byte file of the same name in /dev/shm that keeps
  // the name taken there, so that a client too old to read shm_path fails on its size instead of
  // mapping another pool of that name; -1 otherwise.
  int placeholder_fd_ = -1;
  bool owner_ = false;
  bool pinned_ = false;
};

struct SegmentInfo {
  std::string name;  // full name, no leading slash
  std::string dir;   // the directory scanned (empty: the platform's default, /dev/shm)
  uint64_t size = 0;
  bool live = false;  // some process holds its liveness lock (not probed for other users' segments)
  uid_t owner = 0;    // the uid that owns the segment file
};

// Every segment whose name carries the prefix, live or stale, sorted by name: those of the
// platform's default place, then those of each of `dirs` (segment directories, Linux).
SHMKV_EXPORT Result<std::vector<SegmentInfo>> ListSegments(std::span<const std::string> dirs = {});

// Removes every stale prefixed segment owned by this process's effective uid (dry_run: removes
// nothing). Returns the segments removed, or that would be removed. A live segment and a name
// without the prefix are never touched, and neither is a segment of another user, also when the
// caller is root (a root server's start-up must not delete other users' pools): those are not
// even probed, and are appended to *foreign when given (their `live` is not known).
// `dirs`: segment directories (--shm-dir) scanned after the default place.
SHMKV_EXPORT Result<std::vector<SegmentInfo>> RemoveStaleSegments(bool dry_run,
                                                                  std::vector<SegmentInfo>* foreign = nullptr,
                                                                  std::span<const std::string> dirs = {});

}  // namespace shmkv
