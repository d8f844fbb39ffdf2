// `shmkv gc [--dry-run]`: removes the shared-memory segments that dead servers left behind.
#include <fmt/format.h>

#include "cli/commands.h"
#include "shmkv/segment.h"

namespace shmkv::cli {

void AddGcCommand(CLI::App& app, int* exit_code) {
  auto* gc = app.add_subcommand("gc", "Remove stale shared-memory segments (prefix lmcache_l1_pool_, no live owner)");
  auto dry_run = std::make_shared<bool>(false);
  gc->add_flag("--dry-run,-n", *dry_run, "List the stale segments without removing them");
  gc->callback([dry_run, exit_code] {
    std::vector<SegmentInfo> foreign;  // other users' segments: never touched
    auto stale = RemoveStaleSegments(*dry_run, &foreign);
    if (!stale.ok()) {
      fmt::print(stderr, "shmkv gc: {}\n", stale.status().ToString());
      *exit_code = 1;
      return;
    }
    for (const SegmentInfo& s : foreign) fmt::print("skipped\t{}\t{}\towner uid {}\n", s.name, s.size, s.owner);
    uint64_t total = 0;
    for (const SegmentInfo& s : *stale) {
      fmt::print("{}\t{}\t{}\n", *dry_run ? "stale" : "removed", s.name, s.size);
      total += s.size;
    }
    fmt::print(stderr, "{} {} stale segment(s), {} bytes\n", *dry_run ? "found" : "removed", stale->size(), total);
    *exit_code = 0;
  });
}

}  // namespace shmkv::cli
