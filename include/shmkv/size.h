// Byte sizes as people write them: "4GiB", "512MiB", "64k", "1073741824".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "shmkv/export.h"
#include "shmkv/status.h"

namespace shmkv {

// Parses a size. Accepted suffixes (case-insensitive): B, K/KB/KiB, M/MB/MiB, G/GB/GiB,
// T/TB/TiB; all are powers of 1024. No suffix means bytes. Fractions ("1.5GiB") are accepted
// when the result is a whole number of bytes. Overflow, negatives and junk are errors.
SHMKV_EXPORT Result<uint64_t> ParseSize(std::string_view text);

// "4.0 GiB (4294967296 bytes)" style: a short human figure plus the exact count.
SHMKV_EXPORT std::string FormatSize(uint64_t bytes);

}  // namespace shmkv
