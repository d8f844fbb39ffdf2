#include "file_worker/protocol.h"

#include <array>
#include <vector>

#include <fmt/format.h>

namespace shmkv::file_worker {
namespace {

constexpr size_t kMaxReasonBytes = 1024;

bool IsControl(unsigned char c) {
  return c < 0x20 || c == 0x7f;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

struct VerbSpec {
  std::string_view name;
  Verb verb;
  size_t min_args;
  size_t max_args;
  std::string_view usage;
};

constexpr std::array<VerbSpec, 9> kVerbs = {{
    {"ATTACH", Verb::kAttach, 3, 3, "ATTACH <shm_name> <size> <base_addr>"},
    {"WRITE", Verb::kWrite, 3, 3, "WRITE <path> <data_ptr> <len>"},
    {"READ", Verb::kRead, 3, 3, "READ <path> <data_ptr> <len>"},
    {"EXISTS", Verb::kExists, 1, 1, "EXISTS <path>"},
    {"DELETE", Verb::kDelete, 1, 1, "DELETE <path>"},
    {"LIST", Verb::kList, 0, 1, "LIST [dir]"},
    {"STAT", Verb::kStat, 1, 1, "STAT <path>"},
    {"QUIT", Verb::kQuit, 0, 0, "QUIT"},
    {"AUTH", Verb::kAuth, 1, 1, "AUTH <token>"},
}};

}  // namespace

std::string_view VerbName(Verb verb) {
  for (const auto& spec : kVerbs) {
    if (spec.verb == verb) return spec.name;
  }
  return "?";
}

std::string Quote(std::string_view text, size_t max) {
  std::string out;
  out.reserve(std::min(text.size(), max) + 5);
  out.push_back('\'');
  for (size_t i = 0; i < text.size() && i < max; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    out.push_back(IsControl(c) ? '?' : static_cast<char>(c));
  }
  if (text.size() > max) out += "...";
  out.push_back('\'');
  return out;
}

Result<uint64_t> ParseUnsigned(std::string_view text, bool allow_hex, std::string_view field) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument(fmt::format("bad {} {}: {}", field, Quote(text, 32), why));
  };
  if (text.empty()) return bad("empty");
  if (text.size() > kMaxNumberChars) return bad(fmt::format("longer than {} characters", kMaxNumberChars));
  if (text[0] == '-' || text[0] == '+') return bad("a sign is not allowed");
  uint64_t value = 0;
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    if (!allow_hex) return bad("hex is accepted for addresses only");
    for (char c : text.substr(2)) {
      const int d = HexValue(c);
      if (d < 0) return bad("not a hex number");
      if (value > (UINT64_MAX >> 4)) return bad("does not fit in 64 bits");
      value = (value << 4) | static_cast<uint64_t>(d);
    }
    return value;
  }
  for (char c : text) {
    if (c < '0' || c > '9') return bad(allow_hex ? "not a decimal or 0x hex number" : "not a decimal number");
    const auto d = static_cast<uint64_t>(c - '0');
    if (value > (UINT64_MAX - d) / 10) return bad("does not fit in 64 bits");
    value = value * 10 + d;
  }
  return value;
}

Result<Command> ParseCommand(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.size() > kMaxLineBytes) {
    return Status::InvalidArgument(fmt::format("line too long (more than {} bytes)", kMaxLineBytes));
  }
  for (size_t i = 0; i < line.size(); ++i) {
    const auto c = static_cast<unsigned char>(line[i]);
    if (IsControl(c)) {
      return Status::InvalidArgument(fmt::format("control byte 0x{:02x} at column {} (not allowed)", c, i + 1));
    }
  }
  std::vector<std::string_view> tokens;
  size_t pos = 0;
  while (pos < line.size()) {
    while (pos < line.size() && line[pos] == ' ') ++pos;
    if (pos == line.size()) break;
    const size_t end = std::min(line.find(' ', pos), line.size());
    tokens.push_back(line.substr(pos, end - pos));
    pos = end;
  }
  if (tokens.empty()) return Status::InvalidArgument("empty command");

  const VerbSpec* spec = nullptr;
  for (const auto& s : kVerbs) {
    if (s.name == tokens[0]) spec = &s;
  }
  if (spec == nullptr) return Status::InvalidArgument(fmt::format("unknown command: {}", Quote(tokens[0], 32)));
  const size_t nargs = tokens.size() - 1;
  if (nargs < spec->min_args || nargs > spec->max_args) {
    const bool takes_path = spec->verb != Verb::kQuit && spec->verb != Verb::kAuth && spec->verb != Verb::kAttach;
    return Status::InvalidArgument(fmt::format("{} takes {}{} argument{}, got {} (usage: {}{})", spec->name,
                                               spec->min_args, spec->max_args != spec->min_args ? " or 1" : "",
                                               spec->max_args == 1 ? "" : "s", nargs, spec->usage,
                                               takes_path ? "; paths may not contain spaces" : ""));
  }

  Command cmd;
  cmd.verb = spec->verb;
  if (nargs >= 1) cmd.text = std::string(tokens[1]);
  switch (cmd.verb) {
    case Verb::kAttach: {
      auto size = ParseUnsigned(tokens[2], /*allow_hex=*/false, "size");
      if (!size.ok()) return size.status();
      if (*size == 0) return Status::InvalidArgument("bad size '0': must be greater than 0");
      auto base = ParseUnsigned(tokens[3], /*allow_hex=*/true, "base_addr");
      if (!base.ok()) return base.status();
      cmd.size = *size;
      cmd.base_addr = *base;
      break;
    }
    case Verb::kWrite:
    case Verb::kRead: {
      auto ptr = ParseUnsigned(tokens[2], /*allow_hex=*/true, "data_ptr");
      if (!ptr.ok()) return ptr.status();
      auto len = ParseUnsigned(tokens[3], /*allow_hex=*/false, "len");
      if (!len.ok()) return len.status();
      cmd.data_ptr = *ptr;
      cmd.len = *len;
      break;
    }
    default: break;
  }
  return cmd;
}

Result<std::string> CheckSegmentName(std::string_view name, std::string_view prefix) {
  const std::string_view given = name;
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument(fmt::format("segment name {} {}", Quote(given, 64), why));
  };
  if (!name.empty() && name.front() == '/') name.remove_prefix(1);
  if (name.empty()) return bad("is empty");
  if (name.size() > kMaxSegmentNameBytes) {
    return bad(fmt::format("is longer than {} bytes", kMaxSegmentNameBytes));
  }
  if (name.find('/') != std::string_view::npos) return bad("has a '/' (only one leading '/' is allowed)");
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (IsControl(u) || u == ' ') return bad("has a space or control byte");
  }
  if (name == "." || name == "..") return bad("is '.' or '..'");
  if (!name.starts_with(prefix)) {
    return Status::InvalidArgument(
        fmt::format("segment name {} does not start with --attach-prefix {}", Quote(name, 64), Quote(prefix, 64)));
  }
  return std::string(name);
}

Result<Region> CheckRegion(uint64_t base_addr, uint64_t size, uint64_t data_ptr, uint64_t len) {
  if (data_ptr < base_addr) {
    return Status::InvalidArgument(fmt::format("data_ptr {:#x} is below base_addr {:#x}", data_ptr, base_addr));
  }
  const uint64_t offset = data_ptr - base_addr;
  if (len > size) return Status::InvalidArgument(fmt::format("len {} exceeds the segment size {}", len, size));
  if (offset > size - len) {
    return Status::InvalidArgument(
        fmt::format("offset {} + len {} exceeds the segment size {} (offset+length out of bounds)", offset, len, size));
  }
  return Region{offset, len};
}

Status CheckDirectAlignment(const Region& region) {
  if (region.offset % kDirectAlignment != 0 || region.len % kDirectAlignment != 0) {
    return Status::InvalidArgument(fmt::format(
        "--direct (O_DIRECT) needs the pool offset (data_ptr - base_addr) and len to be multiples of {}; got "
        "offset {} (remainder {}), len {} (remainder {})",
        kDirectAlignment, region.offset, region.offset % kDirectAlignment, region.len, region.len % kDirectAlignment));
  }
  return Status::Ok();
}

std::string OkReply() {
  return "OK\n";
}

std::string OkReply(uint64_t n) {
  return fmt::format("OK {}\n", n);
}

std::string ErrorReply(std::string_view reason) {
  std::string out = "ERROR ";
  const size_t n = std::min(reason.size(), kMaxReasonBytes);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(reason[i]);
    out.push_back(IsControl(c) ? '?' : static_cast<char>(c));
  }
  if (reason.size() > kMaxReasonBytes) out += "...";
  if (reason.empty()) out += "unknown error";
  out.push_back('\n');
  return out;
}

}  // namespace shmkv::file_worker
