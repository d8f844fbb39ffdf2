#include "redis/value.h"

#include <xxhash.h>

#include <cstring>

#include "fmt/format.h"

namespace shmkv::redis {

namespace {

constexpr char kMagic[8] = {'S', 'H', 'M', 'K', 'V', 'L', '3', '\0'};

template <typename T>
void PutLe(std::string& out, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

template <typename T>
T GetLe(std::span<const std::byte> in, size_t at) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v = static_cast<T>(v | (static_cast<T>(in[at + i]) << (8 * i)));
  return v;
}

std::string Hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    const auto b = static_cast<uint8_t>(bytes[i]);
    out[2 * i] = kDigits[b >> 4];
    out[2 * i + 1] = kDigits[b & 0xf];
  }
  return out;
}

uint64_t Checksum(std::span<const std::byte> payload) {
  return XXH3_64bits(payload.data(), payload.size());
}

}  // namespace

std::string RedisKey(std::string_view store_key) {
  const std::string_view ns = store_key.substr(0, kNamespaceDigestBytes);
  const std::string_view key = store_key.size() > kNamespaceDigestBytes ? store_key.substr(kNamespaceDigestBytes) : "";
  return fmt::format("shmkv:{}:{}", Hex(ns), Hex(key));
}

std::string RedisKeyPattern(std::string_view namespace_digest) {
  return fmt::format("shmkv:{}:*", Hex(namespace_digest));
}

size_t ValueHeaderSize(std::string_view store_key) {
  return kValueFixedHeader + (store_key.size() - std::min(store_key.size(), kNamespaceDigestBytes));
}

std::string EncodeValueHeader(std::string_view store_key, std::span<const std::byte> payload) {
  const std::string_view ns = store_key.substr(0, kNamespaceDigestBytes);
  const std::string_view key = store_key.substr(ns.size());
  std::string h(kMagic, sizeof(kMagic));
  h.reserve(ValueHeaderSize(store_key));
  PutLe<uint16_t>(h, kValueVersion);
  PutLe<uint16_t>(h, static_cast<uint16_t>(kValueFixedHeader + key.size()));
  PutLe<uint32_t>(h, static_cast<uint32_t>(key.size()));
  PutLe<uint64_t>(h, payload.size());
  PutLe<uint64_t>(h, Checksum(payload));
  h.append(ns);
  h.append(kNamespaceDigestBytes - ns.size(), '\0');
  h.append(key);
  return h;
}

Status VerifyValue(std::string_view store_key, std::span<const std::byte> header, std::span<const std::byte> payload) {
  const std::string_view ns = store_key.substr(0, kNamespaceDigestBytes);
  const std::string_view key = store_key.substr(ns.size());
  if (header.size() != ValueHeaderSize(store_key) || header.size() < kValueFixedHeader) {
    return Status::Protocol(
        fmt::format("L3 value header is {} bytes, expected {}", header.size(), ValueHeaderSize(store_key)));
  }
  if (std::memcmp(header.data(), kMagic, sizeof(kMagic)) != 0) return Status::Protocol("L3 value has no shmkv magic");
  if (GetLe<uint16_t>(header, 8) != kValueVersion) {
    return Status::Protocol(
        fmt::format("L3 value format version {} is not {}", GetLe<uint16_t>(header, 8), kValueVersion));
  }
  if (GetLe<uint16_t>(header, 10) != header.size() || GetLe<uint32_t>(header, 12) != key.size()) {
    return Status::Protocol("L3 value header length fields do not match its key");
  }
  if (GetLe<uint64_t>(header, 16) != payload.size()) {
    return Status::Protocol(fmt::format("L3 value payload length {} is not the {} bytes loaded",
                                        GetLe<uint64_t>(header, 16), payload.size()));
  }
  if (std::memcmp(header.data() + 32, ns.data(), ns.size()) != 0 ||
      std::memcmp(header.data() + kValueFixedHeader, key.data(), key.size()) != 0) {
    return Status::Protocol("L3 value belongs to another key");
  }
  if (GetLe<uint64_t>(header, 24) != Checksum(payload)) return Status::Protocol("L3 value checksum mismatch");
  return Status::Ok();
}

}  // namespace shmkv::redis
