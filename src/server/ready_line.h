// The line shmkv-server prints on stdout once it serves (docs/operations in README):
//   shmkv-server ready: segment=<name> pool_size=<bytes> socket=<path> generation=<n>
// Supervisors and tests wait for it; this is the one place that writes and reads its format (the
// Python twin is shmkv.server.parse_ready_line).
//
// Thread-safety: free functions; re-entrant.
#pragma once

#include <cstdint>
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
};

// The line, without its newline.
std::string FormatReadyLine(const ReadyLine& ready);
// kInvalidArgument naming what is missing or malformed when `line` is not a ready line (a
// trailing newline is allowed).
Result<ReadyLine> ParseReadyLine(std::string_view line);

}  // namespace shmkv
