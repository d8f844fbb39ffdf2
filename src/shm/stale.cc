// Listing and removing stale segments (docs/design.md §2): a segment is stale when its name carries
// the prefix and no process holds its liveness lock.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>

#include <fmt/format.h>

#include "common/log.h"
#include "platform/process.h"
#include "platform/shm.h"
#include "shmkv/segment.h"

namespace shmkv {
namespace {

constexpr time_t kCreationGraceSeconds = 10;

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
Result<std::optional<Probed>> Probe(const std::string& dir, const std::string& name, ScanMode mode) {
  auto fd = platform::OpenExisting(dir, name);
  if (!fd.ok()) {
    if (fd.status().code() == StatusCode::kNotFound) return std::optional<Probed>();
    if (fd.status().sys_errno() == EACCES) {  // another user's segment: not ours to judge
      Log().debug("skipping segment '{}': {}", name, fd.status().message());
      return std::optional<Probed>();
    }
    return fd.status();
  }
  Probed p{{name, dir, 0, false, 0}, false};
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
  auto lock = platform::TryLockLiveness(fd->get(), name);
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
  if (mode == ScanMode::kRemoveStale && platform::StillNamed(fd->get(), dir, name)) {
    SHMKV_RETURN_IF_ERROR(platform::UnlinkSegment(dir, name));
    Log().info("removed stale segment '{}'{} ({} bytes)", name, dir.empty() ? "" : " in " + dir, info.size);
  }
  return std::optional<Probed>(p);
}

// Lists the segments: all of them (kList), or the stale ones of this euid, with other users'
// segments appended to *foreign when given.
Status ScanDir(const std::string& dir, ScanMode mode, std::vector<SegmentInfo>* foreign,
               std::vector<SegmentInfo>& out) {
  auto names = platform::ListSegmentNames(dir, kSegmentPrefix);
  if (!names.ok()) return names.status();
  for (const std::string& name : *names) {
    auto probed = Probe(dir, name, mode);
    if (!probed.ok()) return probed.status();
    if (!probed->has_value()) continue;
    Probed& p = **probed;
    if (p.foreign) {
      Log().debug("not removing segment '{}': owned by {}, not by this user", name,
                  platform::DescribeUid(p.info.owner));
      if (foreign != nullptr) foreign->push_back(std::move(p.info));
      continue;
    }
    if (mode != ScanMode::kList && p.info.live) continue;
    out.push_back(std::move(p.info));
  }
  return Status::Ok();
}

// The default place, then each of `dirs` once (a directory given twice, or the default named
// explicitly, is scanned once).
Result<std::vector<SegmentInfo>> Scan(ScanMode mode, std::vector<SegmentInfo>* foreign,
                                      std::span<const std::string> dirs) {
  std::vector<SegmentInfo> out;
  SHMKV_RETURN_IF_ERROR(ScanDir("", mode, foreign, out));
  std::vector<std::string> seen = {platform::SegmentPath("", "")};
  for (const std::string& dir : dirs) {
    if (dir.empty()) continue;
    const std::string key = platform::SegmentPath(dir, "");
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
    seen.push_back(key);
    SHMKV_RETURN_IF_ERROR(ScanDir(dir, mode, foreign, out).WithContext(fmt::format("segment directory {}", dir)));
  }
  return out;
}

}  // namespace

Result<std::vector<SegmentInfo>> ListSegments(std::span<const std::string> dirs) {
  return Scan(ScanMode::kList, nullptr, dirs);
}

Result<std::vector<SegmentInfo>> RemoveStaleSegments(bool dry_run, std::vector<SegmentInfo>* foreign,
                                                     std::span<const std::string> dirs) {
  return Scan(dry_run ? ScanMode::kFindStale : ScanMode::kRemoveStale, foreign, dirs);
}

}  // namespace shmkv
