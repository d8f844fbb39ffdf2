// The wire format shared by the server and the C++ client (docs/protocol.md is the contract):
// each message is a 4-byte little-endian length followed by one msgpack map.
//
// Thread-safety: free functions and MapReader are re-entrant; a MapReader reads one message.
#pragma once

#include <msgpack.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmkv/status.h"

namespace shmkv::wire {

// The highest protocol version this build speaks, and the lowest it still serves. A client
// offers its highest version at registration; the server answers with the lower of the two
// (docs/protocol.md, "Versioning"), so clients that offer nothing keep getting version 1.
inline constexpr uint32_t kProtocolVersion = 2;
inline constexpr uint32_t kMinProtocolVersion = 1;
// Version 2: a request with `chained: true` runs only if the previous request of the connection
// succeeded; otherwise it is answered with this error code and changes nothing.
inline constexpr std::string_view kNotExecutedCode = "NotExecuted";
inline constexpr size_t kHeaderBytes = 4;
inline constexpr uint32_t kDefaultMaxFrame = 64u << 20;
inline constexpr size_t kMaxKeyBytes = 64;
// The most keys (and elements of any array) one request may carry.
inline constexpr uint32_t kMaxBatchKeys = 65536;
// The most fields of a request's map, and the deepest nesting of a message.
inline constexpr uint32_t kMaxMapFields = 64;
inline constexpr uint32_t kMaxNesting = 8;

// Container limits for unpacking one frame of `frame_bytes`: no array or map may declare more
// elements than the frame has bytes (each takes at least one), nor more than the protocol's
// limits, so the unpacker never reserves memory for elements that cannot be there.
inline msgpack::unpack_limit FrameLimits(size_t frame_bytes, uint32_t max_map_fields = kMaxMapFields) {
  const size_t bytes = frame_bytes;
  return msgpack::unpack_limit(std::min<size_t>(bytes, kMaxBatchKeys), std::min<size_t>(bytes, max_map_fields), bytes,
                               bytes, 0, kMaxNesting);
}

inline uint32_t ReadLength(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
inline void WriteLength(uint32_t n, uint8_t* p) {
  p[0] = static_cast<uint8_t>(n);
  p[1] = static_cast<uint8_t>(n >> 8);
  p[2] = static_cast<uint8_t>(n >> 16);
  p[3] = static_cast<uint8_t>(n >> 24);
}

// A msgpack buffer that starts with room for the length header; Finish() fills it in. Reset()
// starts the next frame in the same memory, so a connection reuses one buffer for every frame.
class FrameBuffer {
 public:
  FrameBuffer() { buf_.write("\0\0\0\0", kHeaderBytes); }
  msgpack::sbuffer& sbuf() { return buf_; }
  void Reset() {
    buf_.clear();
    buf_.write("\0\0\0\0", kHeaderBytes);
  }
  // Returns the whole frame (header + body).
  std::string_view Finish() {
    WriteLength(static_cast<uint32_t>(buf_.size() - kHeaderBytes), reinterpret_cast<uint8_t*>(buf_.data()));
    return {buf_.data(), buf_.size()};
  }

 private:
  msgpack::sbuffer buf_;
};

using Packer = msgpack::packer<msgpack::sbuffer>;
inline void PackStr(Packer& pk, std::string_view s) {
  pk.pack_str(static_cast<uint32_t>(s.size()));
  pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}
inline void PackBin(Packer& pk, std::string_view s) {
  pk.pack_bin(static_cast<uint32_t>(s.size()));
  pk.pack_bin_body(s.data(), static_cast<uint32_t>(s.size()));
}

// Typed access to the fields of one msgpack map, with errors that name the field.
class MapReader {
 public:
  // Fails unless `obj` is a map whose keys are strings.
  static Result<MapReader> From(const msgpack::object& obj);
  // A reader of an empty map (every field missing).
  static MapReader Empty() { return MapReader(msgpack::object_map{0, nullptr}); }

  bool Has(std::string_view field) const { return Find(field) != nullptr; }
  const msgpack::object* Find(std::string_view field) const;

  Result<uint64_t> U64(std::string_view field) const;
  Result<std::string_view> Str(std::string_view field) const;  // str or bin
  Result<bool> Bool(std::string_view field, std::optional<bool> fallback = std::nullopt) const;
  // An array of str/bin, each at most `max_bytes` long.
  Result<std::vector<std::string_view>> Bytes(std::string_view field, size_t max_bytes) const;
  Result<std::vector<uint64_t>> U64s(std::string_view field) const;
  // The same two, into a caller's vector (cleared first), so a connection can reuse its memory.
  Status BytesInto(std::string_view field, size_t max_bytes, std::vector<std::string_view>& out) const;
  Status U64sInto(std::string_view field, std::vector<uint64_t>& out) const;
  Result<MapReader> Map(std::string_view field) const;

 private:
  // A copy of the map header (size and pointer into the msgpack zone), so a reader stays valid
  // when the object_handle that owns the zone is moved.
  explicit MapReader(const msgpack::object_map& m) : map_(m) {}
  msgpack::object_map map_;
};

// Reads a string-or-binary msgpack object.
std::optional<std::string_view> AsBytes(const msgpack::object& o);

// Unpacks one message into `zone` (cleared first). Strings and binaries are not copied: the
// object points into `data`, which must outlive it. Throws msgpack's exceptions on bad input,
// msgpack::size_overflow when a container exceeds `limits` (checked before it is allocated).
// `used`, when given, receives the bytes the value took (the rest of `data` was not read).
msgpack::object UnpackReferenced(msgpack::zone& zone, std::string_view data,
                                 const msgpack::unpack_limit& limits = msgpack::unpack_limit(), size_t* used = nullptr);

}  // namespace shmkv::wire
