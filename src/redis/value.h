// The L3 value format: what shmkv stores under one Redis key (docs/l3-redis.md).
//
//   offset size  field
//   0      8     magic "SHMKVL3\0"
//   8      2     format version (1), little-endian
//   10     2     header length in bytes (48 + key length), little-endian
//   12     4     key length in bytes, little-endian
//   16     8     payload length in bytes, little-endian
//   24     8     xxh3-64 of the payload, little-endian
//   32     16    namespace digest
//   48     n     the client's key
//   48+n   ...   the payload (the chunk's bytes)
//
// The Redis key is "shmkv:<namespace digest hex>:<key hex>". On load the whole header must match
// what the loader expects (magic, version, lengths, namespace, key) and the checksum the payload;
// anything else is a miss, never bytes in a slot.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "shmkv/status.h"

namespace shmkv::redis {

inline constexpr size_t kNamespaceDigestBytes = 16;
inline constexpr size_t kValueFixedHeader = 48;
inline constexpr uint16_t kValueVersion = 1;

// `store_key` is the Store's key: the 16-byte namespace digest followed by the client's key.
std::string RedisKey(std::string_view store_key);
// The prefix of every Redis key of a namespace (`namespace_digest`: 16 bytes), for SCAN MATCH.
std::string RedisKeyPattern(std::string_view namespace_digest);
size_t ValueHeaderSize(std::string_view store_key);
// The header of `payload` stored under `store_key` (checksum computed over the payload).
std::string EncodeValueHeader(std::string_view store_key, std::span<const std::byte> payload);
// Checks a loaded header against the key it was loaded for and the payload it came with.
Status VerifyValue(std::string_view store_key, std::span<const std::byte> header, std::span<const std::byte> payload);

}  // namespace shmkv::redis
