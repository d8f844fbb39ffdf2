// The library's logger: spdlog, one named logger "shmkv" writing to stderr.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string_view>

#include "shmkv/status.h"

namespace shmkv {

// The process-wide logger (created on first use). Thread-safe.
spdlog::logger& Log();

// Sets the level from "trace|debug|info|warn|error|off".
Status SetLogLevel(std::string_view level);

}  // namespace shmkv
