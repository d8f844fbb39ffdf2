// The line shmkv-server prints on stdout once it serves (docs/operations in README):
//   shmkv-server ready: segment=<name> pool_size=<bytes> socket=<path> generation=<n> huge_pages=<size|no>
// Supervisors and tests wait for it; this is the one place that writes and reads its format (the
// Python twin is shmkv.server.parse_ready_line). Servers before huge_pages= ended the line at
// generation=; such lines still parse (huge_page_size unset). Fields after generation= are
// space-separated key=value pairs, and fields this version does not know are skipped.
//
// Thread-safety: free functions; re-entrant.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "shmkv/status.h"

namespace shmkv {

inline constexpr std::string_view kReadyPrefix = "shmkv-server ready:";

struct ReadyLine {
  std::string segment;  // the segment's name, as created
  uint64_t pool_size = 0;
  std::string socket;  // the control socket's path
  uint64_t generation = 0;
  // The huge page size backing the pool as checked at start (/proc/self/smaps): e.g. 2 MiB; 0: no
  // huge pages (4 KiB pages). Unset: not known (written "unknown"), or a line of an older server.
  std::optional<uint64_t> huge_page_size;
};

// The line, without its newline.
std::string FormatReadyLine(const ReadyLine& ready);
// kInvalidArgument naming what is missing or malformed when `line` is not a ready line (a
// trailing newline is allowed).
Result<ReadyLine> ParseReadyLine(std::string_view line);

// huge_pages= of a ready line for the largest page size backing a pool: "2MiB", "1GiB", "no" for
// 4 KiB pages (<= 4096), "unknown" for 0.
std::string HugePagesField(uint64_t page_size);

}  // namespace shmkv
