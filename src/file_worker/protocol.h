// The file worker's line protocol (docs/design.md §6, docs/file-worker.md): parsing one command line,
// strict number parsing, the pool bounds check and the reply formats.
//
// Everything here is a pure function of its arguments: no I/O, no state, thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "shmkv/status.h"

namespace shmkv::file_worker {

// A command line longer than this (without its '\n') is refused: a path is at most 4096 bytes and
// the numbers add well under 100, so anything longer is garbage or an attack on our memory.
inline constexpr size_t kMaxLineBytes = 8192;
// A number token longer than this is refused before any arithmetic ("overlong numbers").
inline constexpr size_t kMaxNumberChars = 24;
// O_DIRECT transfers must start at a pool offset and have a length that are multiples of this.
// 4096 covers every block size Linux file systems use; the server allocates slots 4096-aligned.
inline constexpr uint64_t kDirectAlignment = 4096;

enum class Verb { kAttach, kWrite, kRead, kExists, kDelete, kList, kStat, kQuit, kAuth };

std::string_view VerbName(Verb verb);

// One parsed command. Which fields are set depends on the verb:
//   ATTACH: text = segment name, size, base_addr       WRITE/READ: text = path, data_ptr, len
//   EXISTS/DELETE/STAT: text = path                    LIST: text = directory ("" = the root)
//   AUTH: text = token                                 QUIT: nothing
// Paths are not yet checked against the root here; FileStore::Normalize does that.
struct Command {
  Verb verb = Verb::kQuit;
  std::string text;
  uint64_t size = 0;
  uint64_t base_addr = 0;
  uint64_t data_ptr = 0;
  uint64_t len = 0;
};

// Parses an unsigned 64-bit number: decimal digits only, or (when allow_hex) "0x"/"0X" followed
// by hex digits. Refuses an empty token, signs, whitespace, junk, overlong tokens and overflow.
// `field` names the number in the error ("bad len '12x': ...").
Result<uint64_t> ParseUnsigned(std::string_view text, bool allow_hex, std::string_view field);

// Parses one line (its '\n' already removed; one trailing '\r' is tolerated). Tokens are
// separated by runs of spaces; any other control byte (tab included) or DEL is refused, so no
// path can carry one. The verb is case-sensitive, as in LMCache's worker. Addresses (base_addr,
// data_ptr) are decimal, as LMCache sends them (tensor.data_ptr()), or 0x hex.
Result<Command> ParseCommand(std::string_view line);

// The longest segment name ATTACH accepts (without the optional leading '/'): NAME_MAX, the
// longest file name in /dev/shm, where Linux keeps POSIX shared memory.
inline constexpr size_t kMaxSegmentNameBytes = 255;

// ATTACH's name rule. The name is taken as given, as LMCache's worker does (shm_open(name)), so
// LMCache's own segments can be attached: one optional leading '/', then 1..kMaxSegmentNameBytes
// bytes with no '/', no control byte or space, and not "." or "..". With a non-empty `prefix`
// (--attach-prefix) the name must also start with it. Returns the name without the leading '/'.
Result<std::string> CheckSegmentName(std::string_view name, std::string_view prefix);

// A byte range of the pool: [offset, offset + len).
struct Region {
  uint64_t offset = 0;
  uint64_t len = 0;
};

// The overflow-safe bounds rule: data_ptr >= base_addr, len <= size, offset <= size - len,
// with offset = data_ptr - base_addr. No sum is ever formed, so nothing can wrap.
Result<Region> CheckRegion(uint64_t base_addr, uint64_t size, uint64_t data_ptr, uint64_t len);

// --direct: the pool offset and the length must be multiples of kDirectAlignment.
Status CheckDirectAlignment(const Region& region);

// Reply lines, each ending in '\n'. An error reason is made single-line and printable (control
// bytes become '?') and capped in length, so a reply can never break the framing.
std::string OkReply();
std::string OkReply(uint64_t n);
std::string ErrorReply(std::string_view reason);

// Quotes client text for an error message: printable, at most `max` bytes, then "...".
std::string Quote(std::string_view text, size_t max = 64);

}  // namespace shmkv::file_worker
