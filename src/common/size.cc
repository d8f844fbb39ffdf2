#include "shmkv/size.h"

#include <array>
#include <cctype>
#include <charconv>
#include <limits>

#include <fmt/format.h>

namespace shmkv {
namespace {

bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument(fmt::format("invalid size '{}': {}", text, why));
  };
  size_t digits_end = 0;
  while (digits_end < text.size() && std::isdigit(static_cast<unsigned char>(text[digits_end]))) ++digits_end;
  if (digits_end == 0) return bad("expected a number such as 4GiB, 512MiB or 1048576");
  uint64_t whole = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + digits_end, whole);
  if (ec != std::errc()) return bad("number out of range");
  (void)p;
  // Optional fraction, kept as numerator/denominator to stay exact.
  uint64_t frac_num = 0, frac_den = 1;
  size_t pos = digits_end;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    size_t start = pos;
    while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) {
      if (pos - start >= 9) return bad("too many fractional digits");
      frac_num = frac_num * 10 + static_cast<uint64_t>(text[pos] - '0');
      frac_den *= 10;
      ++pos;
    }
    if (pos == start) return bad("expected digits after '.'");
  }
  std::string_view suffix = text.substr(pos);
  uint64_t unit = 0;
  static constexpr std::array<std::pair<std::string_view, int>, 4> kUnits = {
      {{"K", 10}, {"M", 20}, {"G", 30}, {"T", 40}}};
  if (suffix.empty() || IEquals(suffix, "B")) unit = 1;
  for (auto [letter, shift] : kUnits) {
    // "1GB" means 10^9 bytes to some readers and 2^30 to others: refused, not guessed.
    if (suffix.size() == 2 && IEquals(suffix.substr(0, 1), letter) && IEquals(suffix.substr(1), "B")) {
      return bad(fmt::format("'{}' is ambiguous (decimal or binary?): write {}{}iB for binary units or the byte count",
                             suffix, text.substr(0, pos), letter));
    }
    for (std::string_view tail : {"", "i", "iB"}) {
      if (suffix.size() == letter.size() + tail.size() && IEquals(suffix.substr(0, 1), letter) &&
          IEquals(suffix.substr(1), tail)) {
        unit = uint64_t{1} << shift;
      }
    }
  }
  if (unit == 0) return bad("unknown unit (use B, KiB, MiB, GiB or TiB; K, M, G, T are binary too)");
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  if (whole > kMax / unit) return bad("too large");
  uint64_t bytes = whole * unit;
  if (frac_num != 0) {
    // unit <= 2^40 and frac_num < 10^9 < 2^30: the product fits in 64 bits.
    if ((frac_num * unit) % frac_den != 0) return bad("not a whole number of bytes");
    uint64_t extra = frac_num * unit / frac_den;
    if (bytes > kMax - extra) return bad("too large");
    bytes += extra;
  }
  return bytes;
}

std::string FormatSize(uint64_t bytes) {
  static constexpr std::array<std::string_view, 5> kNames = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  size_t i = 0;
  while (v >= 1024.0 && i + 1 < kNames.size()) {
    v /= 1024.0;
    ++i;
  }
  if (i == 0) return fmt::format("{} bytes", bytes);
  return fmt::format("{:.1f} {} ({} bytes)", v, kNames[i], bytes);
}

}  // namespace shmkv
