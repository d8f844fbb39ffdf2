// `shmkv gc [--dry-run] [--shm-dir DIR]...`: removes the shared-memory segments that dead servers
// left behind, in /dev/shm, in every huge-page mount (hugetlbfs, tmpfs huge=always|within_size) and
// in each --shm-dir.
#include <fmt/format.h>

#include "cli/commands.h"
#include "platform/shm.h"
#include "shmkv/segment.h"

namespace shmkv::cli {

void AddGcCommand(CLI::App& app, int* exit_code) {
  auto* gc = app.add_subcommand("gc", "Remove stale shared-memory segments (prefix lmcache_l1_pool_, no live owner)");
  auto dry_run = std::make_shared<bool>(false);
  auto dirs = std::make_shared<std::vector<std::string>>();
  gc->add_flag("--dry-run,-n", *dry_run, "List the stale segments without removing them");
  gc->add_option("--shm-dir", *dirs,
                 "Also scan DIR (a server's --shm-dir; huge-page mounts are scanned without it); repeatable");
  gc->callback([dry_run, dirs, exit_code] {
    std::vector<std::string> scan = platform::HugePageMounts();
    for (std::string d : *dirs) {
      while (d.size() > 1 && d.back() == '/') d.pop_back();
      scan.push_back(std::move(d));
    }
    std::vector<SegmentInfo> foreign;  // other users' segments: never touched
    auto stale = RemoveStaleSegments(*dry_run, &foreign, scan);
    if (!stale.ok()) {
      fmt::print(stderr, "shmkv gc: {}\n", stale.status().ToString());
      *exit_code = 1;
      return;
    }
    // Segments of /dev/shm by name (as before), the others by their path.
    auto shown = [](const SegmentInfo& s) { return s.dir.empty() ? s.name : platform::SegmentPath(s.dir, s.name); };
    for (const SegmentInfo& s : foreign) fmt::print("skipped\t{}\t{}\towner uid {}\n", shown(s), s.size, s.owner);
    uint64_t total = 0;
    for (const SegmentInfo& s : *stale) {
      fmt::print("{}\t{}\t{}\n", *dry_run ? "stale" : "removed", shown(s), s.size);
      total += s.size;
    }
    fmt::print(stderr, "{} {} stale segment(s), {} bytes\n", *dry_run ? "found" : "removed", stale->size(), total);
    *exit_code = 0;
  });
}

}  // namespace shmkv::cli
