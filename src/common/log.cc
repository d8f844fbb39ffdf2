#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <fmt/format.h>

namespace shmkv {

spdlog::logger& Log() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_color_mt("shmkv");
    l->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%n] [%^%l%$] %v");
    return l;
  }();
  return *logger;
}

Status SetLogLevel(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  // from_str returns `off` for unknown names; accept "off" only when asked for.
  if (parsed == spdlog::level::off && level != "off") {
    return Status::InvalidArgument(
        fmt::format("unknown log level '{}' (use trace, debug, info, warn, error or off)", level));
  }
  Log().set_level(parsed);
  return Status::Ok();
}

}  // namespace shmkv
