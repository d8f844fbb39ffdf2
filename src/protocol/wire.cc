#include "protocol/wire.h"

#include <fmt/format.h>

namespace shmkv::wire {

std::optional<std::string_view> AsBytes(const msgpack::object& o) {
  if (o.type == msgpack::type::STR) return std::string_view(o.via.str.ptr, o.via.str.size);
  if (o.type == msgpack::type::BIN) return std::string_view(o.via.bin.ptr, o.via.bin.size);
  return std::nullopt;
}

msgpack::object UnpackReferenced(msgpack::zone& zone, std::string_view data, const msgpack::unpack_limit& limits,
                                 size_t* used) {
  zone.clear();
  size_t off = 0;
  // Referencing every str/bin saves a copy per key; the caller keeps `data` alive.
  auto reference_all = [](msgpack::type::object_type, size_t, void*) { return true; };
  msgpack::object obj = msgpack::unpack(zone, data.data(), data.size(), off, reference_all, nullptr, limits);
  if (used != nullptr) *used = off;
  return obj;
}

Result<MapReader> MapReader::From(const msgpack::object& obj) {
  if (obj.type != msgpack::type::MAP) return Status::Protocol("message is not a msgpack map");
  for (uint32_t i = 0; i < obj.via.map.size; ++i) {
    if (obj.via.map.ptr[i].key.type != msgpack::type::STR) return Status::Protocol("map key is not a string");
  }
  return MapReader(obj.via.map);
}

const msgpack::object* MapReader::Find(std::string_view field) const {
  for (uint32_t i = 0; i < map_.size; ++i) {
    const auto& kv = map_.ptr[i];
    if (std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == field) return &kv.val;
  }
  return nullptr;
}

namespace {
Status Missing(std::string_view field) {
  return Status::Protocol(fmt::format("field '{}' is missing", field));
}
Status WrongType(std::string_view field, std::string_view want) {
  return Status::Protocol(fmt::format("field '{}' must be {}", field, want));
}
}  // namespace

Result<uint64_t> MapReader::U64(std::string_view field) const {
  const msgpack::object* o = Find(field);
  if (o == nullptr) return Missing(field);
  if (o->type != msgpack::type::POSITIVE_INTEGER) return WrongType(field, "a non-negative integer");
  return o->via.u64;
}

Result<std::string_view> MapReader::Str(std::string_view field) const {
  const msgpack::object* o = Find(field);
  if (o == nullptr) return Missing(field);
  auto s = AsBytes(*o);
  if (!s) return WrongType(field, "a string");
  return *s;
}

Result<bool> MapReader::Bool(std::string_view field, std::optional<bool> fallback) const {
  const msgpack::object* o = Find(field);
  if (o == nullptr) {
    if (fallback) return *fallback;
    return Missing(field);
  }
  if (o->type != msgpack::type::BOOLEAN) return WrongType(field, "a boolean");
  return o->via.boolean;
}

Result<std::vector<std::string_view>> MapReader::Bytes(std::string_view field, size_t max_bytes) const {
  std::vector<std::string_view> out;
  SHMKV_RETURN_IF_ERROR(BytesInto(field, max_bytes, out));
  return out;
}

Status MapReader::BytesInto(std::string_view field, size_t max_bytes, std::vector<std::string_view>& out) const {
  out.clear();
  const msgpack::object* o = Find(field);
  if (o == nullptr) return Missing(field);
  if (o->type != msgpack::type::ARRAY) return WrongType(field, "an array of byte strings");
  out.reserve(o->via.array.size);
  for (uint32_t i = 0; i < o->via.array.size; ++i) {
    auto s = AsBytes(o->via.array.ptr[i]);
    if (!s) return WrongType(fmt::format("{}[{}]", field, i), "a byte string");
    if (s->empty() || s->size() > max_bytes) {
      return Status::InvalidArgument(
          fmt::format("{}[{}] is {} bytes; keys must be 1..{} bytes", field, i, s->size(), max_bytes));
    }
    out.push_back(*s);
  }
  return Status::Ok();
}

Result<std::vector<uint64_t>> MapReader::U64s(std::string_view field) const {
  std::vector<uint64_t> out;
  SHMKV_RETURN_IF_ERROR(U64sInto(field, out));
  return out;
}

Status MapReader::U64sInto(std::string_view field, std::vector<uint64_t>& out) const {
  out.clear();
  const msgpack::object* o = Find(field);
  if (o == nullptr) return Missing(field);
  if (o->type != msgpack::type::ARRAY) return WrongType(field, "an array of integers");
  out.reserve(o->via.array.size);
  for (uint32_t i = 0; i < o->via.array.size; ++i) {
    const msgpack::object& e = o->via.array.ptr[i];
    if (e.type != msgpack::type::POSITIVE_INTEGER) {
      return WrongType(fmt::format("{}[{}]", field, i), "a non-negative integer");
    }
    out.push_back(e.via.u64);
  }
  return Status::Ok();
}

Result<MapReader> MapReader::Map(std::string_view field) const {
  const msgpack::object* o = Find(field);
  if (o == nullptr) return Missing(field);
  auto m = From(*o);
  if (!m.ok()) return WrongType(field, "a map with string keys");
  return m;
}

}  // namespace shmkv::wire
