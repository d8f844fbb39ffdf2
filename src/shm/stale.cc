// Listing and removing stale segments (DESIGN.md §2): a segment is stale when its name carries
// the prefix and no process holds its liveness lock.
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>

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
  const std::string_view strip_suffix;
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

// Probes one segment; when stale and !dry_run, unlinks it while holding its lock.
// Returns nullopt when the segment vanished meanwhile.
Result<std::optional<SegmentInfo>> Probe(const std::string& name, bool remove_if_stale) {
  auto fd = shm::OpenExisting(name);
  if (!fd.ok()) {
    if (fd.status().code() == StatusCode::kNotFound) return std::optional<SegmentInfo>();
    if (fd.status().sys_errno() == EACCES) {  // another user's segment: not ours to judge
      Log().debug("skipping segment '{}': {}", name, fd.status().message());
      return std::optional<SegmentInfo>();
    }
    return fd.status();
  }
  SegmentInfo info{name, 0, false};
  struct stat st {};
  if (::fstat(fd->get(), &st) == 0) info.size = static_cast<uint64_t>(st.st_size);
  auto lock = shm::TryLockLiveness(fd->get(), name);
  if (!lock.ok()) {
    if (lock.status().code() != StatusCode::kBusy) return lock.status();
    info.live = true;
    return std::optional<SegmentInfo>(info);
  }
  // An empty, unlocked segment younger than a few seconds is most likely being created right now
  // (its owner locks it a moment after shm_open): leave it alone.
  if (info.size == 0 && ::time(nullptr) - st.st_ctime < kCreationGraceSeconds) {
    return std::optional<SegmentInfo>();
  }
  // We hold the lock, so no owner can be alive. Unlink only if the name still designates the
  // file we locked (another cleaner may have replaced it).
  if (remove_if_stale && shm::StillNamed(fd->get(), name)) {
    if (::shm_unlink(shm::ShmOpenName(name).c_str()) != 0 && errno != ENOENT) {
      return Status::FromErrno(fmt::format("removing stale segment '{}'", name), errno);
    }
    shm::RemoveLivenessFile(name);
    Log().info("removed stale segment '{}' ({} bytes)", name, info.size);
  }
  return std::optional<SegmentInfo>(info);
}

Result<std::vector<SegmentInfo>> Scan(bool only_stale, bool remove) {
  auto names = PrefixedNames();
  if (!names.ok()) return names.status();
  std::vector<SegmentInfo> out;
  for (const std::string& name : *names) {
    auto info = Probe(name, remove);
    if (!info.ok()) return info.status();
    if (!info->has_value()) continue;
    if (only_stale && (*info)->live) continue;
    out.push_back(std::move(**info));
  }
  return out;
}

}  // namespace

Result<std::vector<SegmentInfo>> ListSegments() {
  return Scan(/*only_stale=*/false, /*remove=*/false);
}

Result<std::vector<SegmentInfo>> RemoveStaleSegments(bool dry_run) {
  return Scan(/*only_stale=*/true, /*remove=*/!dry_run);
}

}  // namespace shmkv
