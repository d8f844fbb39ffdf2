// Listing and removing stale segments (docs/design.md §2): a segment is stale when its name carries
// the prefix and no process holds its liveness lock.
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <memory>

#include <fmt/format.h>

#include "common/log.h"
#include "shm/shm_platform.h"
#include "shmkv/segment.h"

namespace shmkv {
namespace {

constexpr time_t kCreationGraceSeconds = 10;

// Names of every prefixed segment on this machine.
Result<std::vector<std::string>> PrefixedNames() {
#if defined(__linux__)
  const char* dir_path = shm::kShmDir;
#else
  // macOS cannot enumerate shared memory; the lock files in TMPDIR stand for the segments.
  const char* tmp = std::getenv("TMPDIR");
  const std::string lock_dir = (tmp && *tmp) ? tmp : "/tmp";
  const char* dir_path = lock_dir.c_str();
  const std::string_view strip_suffix = ".lock";
#endif
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(dir_path), &::closedir);
  if (!dir) return Status::FromErrno(fmt::format("listing {}", dir_path), errno);
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(dir.get())) {
    std::string_view n = e->d_name;
#if !defined(__linux__)
    if (!n.starts_with("shmkv-") || !n.ends_with(strip_suffix)) continue;
    n.remove_prefix(6);
    n.remove_suffix(strip_suffix.size());
#endif
    if (n.starts_with(kSegmentPrefix) && n.size() > kSegmentPrefix.size()) names.emplace_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// What a scan does with the segments it finds.
enum class ScanMode {
  kList,         // probe every segment this process can open; remove nothing
  kFindStale,    // probe this euid's segments; set other users' aside unprobed
  kRemoveStale,  // as kFindStale, and unlink the stale ones
};

struct Probed {
  SegmentInfo info;
  bool foreign = false;  // owned by another uid: left alone (kFindStale, kRemoveStale)
};

// Probes one segment; in kRemoveStale mode, unlinks it when stale, while holding its lock.
// Returns nullopt when the segment vanished meanwhile.
Result<std::optional<Probed>> Probe(const std::string& name, ScanMode mode) {
  auto fd = shm::OpenExisting(name);
  if (!fd.ok()) {
    if (fd.status().code() == StatusCode::kNotFound) return std::optional<Probed>();
    if (fd.status().sys_errno() == EACCES) {  // another user's segment: not ours to judge
      Log().debug("skipping segment '{}': {}", name, fd.status().message());
      return std::optional<Probed>();
    }
    return fd.status();
  }
  Probed p{{name, 0, false, 0}, false};
  SegmentInfo& info = p.info;
  struct stat st {};
  SHMKV_RETURN_IF_ERROR(
      sys::Call([&] { return ::fstat(fd->get(), &st); }).ToStatus(fmt::format("fstat segment '{}'", name)));
  info.size = static_cast<uint64_t>(st.st_size);
  info.owner = st.st_uid;
  // Root can open every user's segment, but another user's pool is never ours to remove, and
  // even a moment's probe lock could make its owner's start-up fail: set it aside untouched.
  if (mode != ScanMode::kList && st.st_uid != ::geteuid()) {
    p.foreign = true;
    return std::optional<Probed>(p);
  }
  auto lock = shm::TryLockLiveness(fd->get(), name);
  if (!lock.ok()) {
    if (lock.status().code() != StatusCode::kBusy) return lock.status();
    info.live = true;
    return std::optional<Probed>(p);
  }
  // An empty, unlocked segment younger than a few seconds is most likely being created right now
  // (its owner locks it a moment after shm_open): leave it alone.
  if (info.size == 0 && ::time(nullptr) - st.st_ctime < kCreationGraceSeconds) {
    return std::optional<Probed>();
  }
  // We hold the lock, so no owner can be alive. Unlink only if the name still designates the
  // file we locked (another cleaner may have replaced it).
  if (mode == ScanMode::kRemoveStale && shm::StillNamed(fd->get(), name)) {
    if (::shm_unlink(shm::ShmOpenName(name).c_str()) != 0 && errno != ENOENT) {
      return Status::FromErrno(fmt::format("removing stale segment '{}'", name), errno);
    }
    shm::RemoveLivenessFile(name);
    Log().info("removed stale segment '{}' ({} bytes)", name, info.size);
  }
  return std::optional<Probed>(p);
}

// Lists the segments: all of them (kList), or the stale ones of this euid, with other users'
// segments appended to *foreign when given.
Result<std::vector<SegmentInfo>> Scan(ScanMode mode, std::vector<SegmentInfo>* foreign) {
  auto names = PrefixedNames();
  if (!names.ok()) return names.status();
  std::vector<SegmentInfo> out;
  for (const std::string& name : *names) {
    auto probed = Probe(name, mode);
    if (!probed.ok()) return probed.status();
    if (!probed->has_value()) continue;
    Probed& p = **probed;
    if (p.foreign) {
      Log().debug("not removing segment '{}': owned by {}, not by this user", name, shm::DescribeUid(p.info.owner));
      if (foreign != nullptr) foreign->push_back(std::move(p.info));
      continue;
    }
    if (mode != ScanMode::kList && p.info.live) continue;
    out.push_back(std::move(p.info));
  }
  return out;
}

}  // namespace

Result<std::vector<SegmentInfo>> ListSegments() {
  return Scan(ScanMode::kList, nullptr);
}

Result<std::vector<SegmentInfo>> RemoveStaleSegments(bool dry_run, std::vector<SegmentInfo>* foreign) {
  return Scan(dry_run ? ScanMode::kFindStale : ScanMode::kRemoveStale, foreign);
}

}  // namespace shmkv
