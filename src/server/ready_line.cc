#include "server/ready_line.h"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

namespace shmkv {

std::string HugePagesField(uint64_t page_size) {
  if (page_size == 0) return "unknown";
  if (page_size <= 4096) return "no";
  if (page_size % (1ULL << 30) == 0) return fmt::format("{}GiB", page_size >> 30);
  if (page_size % (1ULL << 20) == 0) return fmt::format("{}MiB", page_size >> 20);
  return fmt::format("{}KiB", page_size >> 10);
}

std::string FormatReadyLine(const ReadyLine& ready) {
  const std::string huge =
      !ready.huge_page_size ? "unknown" : (*ready.huge_page_size == 0 ? "no" : HugePagesField(*ready.huge_page_size));
  return fmt::format("{} segment={} pool_size={} socket={} generation={} huge_pages={}", kReadyPrefix, ready.segment,
                     ready.pool_size, ready.socket, ready.generation, huge);
}

namespace {

// "no" -> 0, "2MiB" -> 2 MiB, "unknown" -> nullopt.
Result<std::optional<uint64_t>> ParseHugePagesField(std::string_view text) {
  if (text == "no") return std::optional<uint64_t>(0);
  if (text == "unknown") return std::optional<uint64_t>();
  uint64_t n = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  const std::string_view unit = text.substr(static_cast<size_t>(ptr - text.data()));
  int shift = -1;
  if (unit == "KiB") shift = 10;
  if (unit == "MiB") shift = 20;
  if (unit == "GiB") shift = 30;
  if (ec != std::errc() || n == 0 || shift < 0 || n > (UINT64_MAX >> shift)) {
    return Status::InvalidArgument(
        fmt::format("ready line: huge_pages='{}' is not no, unknown or a size such as 2MiB", text));
  }
  return std::optional<uint64_t>(n << shift);
}

}  // namespace

Result<ReadyLine> ParseReadyLine(std::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  if (!line.starts_with(kReadyPrefix)) {
    return Status::InvalidArgument(
        fmt::format("not a ready line (it starts with '{}'): '{}'", kReadyPrefix, line.substr(0, 80)));
  }
  // Fields are space-separated key=value; the socket path is the only one that may hold spaces,
  // so it runs up to " generation=".
  auto value = [&](std::string_view key, std::string_view until) -> Result<std::string_view> {
    const std::string needle = fmt::format(" {}=", key);
    const size_t at = line.find(needle);
    if (at == std::string_view::npos) return Status::InvalidArgument(fmt::format("ready line lacks '{}='", key));
    const size_t from = at + needle.size();
    const size_t end = until.empty() ? line.size() : line.find(until, from);
    if (end == std::string_view::npos) return Status::InvalidArgument(fmt::format("ready line lacks '{}'", until));
    return line.substr(from, end - from);
  };
  auto number = [&](std::string_view key, std::string_view until) -> Result<uint64_t> {
    auto text = value(key, until);
    if (!text.ok()) return text.status();
    uint64_t n = 0;
    auto [ptr, ec] = std::from_chars(text->data(), text->data() + text->size(), n);
    if (ec != std::errc() || ptr != text->data() + text->size()) {
      return Status::InvalidArgument(fmt::format("ready line: {}='{}' is not a number", key, *text));
    }
    return n;
  };
  auto segment = value("segment", " pool_size=");
  if (!segment.ok()) return segment.status();
  auto pool = number("pool_size", " socket=");
  if (!pool.ok()) return pool.status();
  auto socket = value("socket", " generation=");
  if (!socket.ok()) return socket.status();
  // generation= ended the line of older servers; newer ones add space-separated key=value fields
  // after it (those this version does not know are skipped).
  auto tail = value("generation", "");
  if (!tail.ok()) return tail.status();
  const size_t space = tail->find(' ');
  const std::string_view gen_text = tail->substr(0, space);
  uint64_t generation = 0;
  auto [ptr, ec] = std::from_chars(gen_text.data(), gen_text.data() + gen_text.size(), generation);
  if (ec != std::errc() || ptr != gen_text.data() + gen_text.size()) {
    return Status::InvalidArgument(fmt::format("ready line: generation='{}' is not a number", gen_text));
  }
  ReadyLine out{std::string(*segment), *pool, std::string(*socket), generation, std::nullopt};
  std::string_view rest = space == std::string_view::npos ? std::string_view() : tail->substr(space + 1);
  while (!rest.empty()) {
    const std::string_view field = rest.substr(0, rest.find(' '));
    rest.remove_prefix(std::min(rest.size(), field.size() + 1));
    if (!field.starts_with("huge_pages=")) continue;
    auto huge = ParseHugePagesField(field.substr(std::string_view("huge_pages=").size()));
    if (!huge.ok()) return huge.status();
    out.huge_page_size = *huge;
  }
  return out;
}

}  // namespace shmkv
