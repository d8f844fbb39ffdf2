#pragma once

namespace shmkv {
inline constexpr const char* kVersionString = "0.1.0";
}  // namespace shmkv
