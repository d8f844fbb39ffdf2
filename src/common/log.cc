#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>
#include <string_view>

#include <fmt/format.h>

namespace shmkv {

spdlog::logger& Log() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_color_mt("shmkv");
    l->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%n] [%^%l%$] %v");
    // Processes that embed the client (inference workers) have no --log-level flag: the
    // environment sets their level. An unknown name keeps the default rather than failing.
    if (const char* env = std::getenv("SHMKV_LOG_LEVEL"); env != nullptr) {
      auto parsed = spdlog::level::from_str(env);
      if (parsed != spdlog::level::off || std::string_view(env) == "off") l->set_level(parsed);
    }
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
