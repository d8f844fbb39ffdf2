#include <fmt/format.h>

#include "platform/shm.h"
#include "shmkv/segment.h"

namespace shmkv {

SegmentNameRules SegmentNameRules::ForThisPlatform() {
  return platform::kShortShmNames ? MacOS() : Linux();
}

Result<std::string> NormalizeSegmentName(std::optional<std::string_view> requested, int pid,
                                         const SegmentNameRules& rules) {
  std::string name;
  if (!requested || requested->empty()) {
    name = fmt::format("{}{}", kSegmentPrefix, pid);
  } else {
    std::string_view bare = *requested;
    const std::string_view original = bare;
    if (bare.front() == '/') bare.remove_prefix(1);
    auto invalid = [&](std::string_view why) {
      return Status::InvalidArgument(fmt::format("invalid shared-memory name '{}': {}", original, why));
    };
    if (bare.find('/') != std::string_view::npos) {
      return invalid("it contains '/' (only one leading '/' is allowed)");
    }
    if (bare.find('\\') != std::string_view::npos) return invalid("it contains '\\'");
    if (bare.find('\0') != std::string_view::npos) return invalid("it contains a NUL byte");
    if (bare.starts_with(kSegmentPrefix)) {
      name = std::string(bare);
    } else {
      name = fmt::format("{}{}", kSegmentPrefix, bare);
    }
    if (name.size() == kSegmentPrefix.size()) {
      return invalid(fmt::format("nothing is left after the prefix '{}'", kSegmentPrefix));
    }
    if (name.size() + 1 > rules.max_bytes_with_slash) {
      return invalid(
          fmt::format("'/{}' is {} bytes, longer than the {} bytes (with the leading '/') this "
                      "platform allows",
                      name, name.size() + 1, rules.max_bytes_with_slash));
    }
  }
  if (name.size() + 1 > rules.max_bytes_with_slash) {
    return Status::InvalidArgument(
        fmt::format("shared-memory name '/{}' is longer than the {} bytes (with the leading '/') this platform allows",
                    name, rules.max_bytes_with_slash));
  }
  return name;
}

}  // namespace shmkv
