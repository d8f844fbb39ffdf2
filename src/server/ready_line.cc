#include "server/ready_line.h"

#include <charconv>

#include <fmt/format.h>

namespace shmkv {

std::string FormatReadyLine(const ReadyLine& ready) {
  return fmt::format("{} segment={} pool_size={} socket={} generation={}", kReadyPrefix, ready.segment, ready.pool_size,
                     ready.socket, ready.generation);
}

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
  ReadyLine out;
  auto segment = value("segment", " pool_size=");
  if (!segment.ok()) return segment.status();
  auto pool = number("pool_size", " socket=");
  if (!pool.ok()) return pool.status();
  auto socket = value("socket", " generation=");
  if (!socket.ok()) return socket.status();
  auto generation = number("generation", "");
  if (!generation.ok()) return generation.status();
  return ReadyLine{std::string(*segment), *pool, std::string(*socket), *generation};
}

}  // namespace shmkv
