#include "protocol/messages.h"

#include <fmt/format.h>

namespace shmkv::protocol {

namespace {

constexpr std::string_view kOpNames[kOpCount] = {
    "register",    "stats",  "health",           "clear",           "prepare_store", "commit_store",
    "abort_store", "lookup", "prepare_retrieve", "commit_retrieve", "remove",
};

void PackKeys(wire::Packer& pk, std::span<const std::string_view> keys) {
  wire::PackStr(pk, "keys");
  pk.pack_array(static_cast<uint32_t>(keys.size()));
  for (std::string_view k : keys) wire::PackBin(pk, k);
}

void PackU64(wire::Packer& pk, std::string_view name, uint64_t v) {
  wire::PackStr(pk, name);
  pk.pack_uint64(v);
}

void PackString(wire::Packer& pk, std::string_view name, std::string_view v) {
  wire::PackStr(pk, name);
  wire::PackStr(pk, v);
}

// A field that may be absent (older peers): its default then.
Result<uint64_t> OptionalU64(const wire::MapReader& m, std::string_view name, uint64_t fallback) {
  if (!m.Has(name)) return fallback;
  return m.U64(name);
}

// Status names by code, for parsing the wire's error codes.
constexpr int kLastStatusCode = static_cast<int>(StatusCode::kExpired);

}  // namespace

std::string_view OpName(Op op) {
  return kOpNames[static_cast<size_t>(op)];
}

std::optional<Op> ParseOp(std::string_view name) {
  // One switch on the length, then at most three compares: dispatch costs nothing measurable.
  switch (name.size()) {
    case 5:
      if (name == "stats") return Op::kStats;
      if (name == "clear") return Op::kClear;
      break;
    case 6:
      if (name == "health") return Op::kHealth;
      if (name == "lookup") return Op::kLookup;
      if (name == "remove") return Op::kRemove;
      break;
    case 8:
      if (name == "register") return Op::kRegister;
      break;
    case 11:
      if (name == "abort_store") return Op::kAbortStore;
      break;
    case 12:
      if (name == "commit_store") return Op::kCommitStore;
      break;
    case 13:
      if (name == "prepare_store") return Op::kPrepareStore;
      break;
    case 15:
      if (name == "commit_retrieve") return Op::kCommitRetrieve;
      break;
    case 16:
      if (name == "prepare_retrieve") return Op::kPrepareRetrieve;
      break;
    default: break;
  }
  return std::nullopt;
}

StatusCode ParseStatusCode(std::string_view name) {
  for (int c = 0; c <= kLastStatusCode; ++c) {
    if (StatusCodeName(static_cast<StatusCode>(c)) == name) return static_cast<StatusCode>(c);
  }
  return StatusCode::kInternal;
}

// ---- requests ---------------------------------------------------------------------------------

uint32_t Pack(wire::Packer& pk, const RegisterRequest& m) {
  PackString(pk, "instance_id", m.instance_id);
  PackString(pk, "client_version", m.client_version);
  wire::PackStr(pk, "protocol");
  pk.pack_uint32(m.protocol);
  wire::PackStr(pk, "namespace");
  const NamespaceFields& ns = m.ns;
  pk.pack_map(4 + (ns.world_size ? 1 : 0) + (ns.rank ? 1 : 0));
  PackString(pk, "model", ns.model);
  if (ns.world_size) PackU64(pk, "world_size", *ns.world_size);
  if (ns.rank) PackU64(pk, "rank", *ns.rank);
  PackString(pk, "dtype", ns.dtype);
  PackString(pk, "layout", ns.layout);
  PackString(pk, "salt", ns.salt);
  return 4;
}
uint32_t Pack(wire::Packer&, const StatsRequest&) {
  return 0;
}
uint32_t Pack(wire::Packer&, const HealthRequest&) {
  return 0;
}
uint32_t Pack(wire::Packer&, const ClearRequest&) {
  return 0;
}
uint32_t Pack(wire::Packer& pk, const PrepareStoreRequest& m) {
  PackKeys(pk, m.keys);
  wire::PackStr(pk, "sizes");
  pk.pack_array(static_cast<uint32_t>(m.sizes.size()));
  for (uint64_t s : m.sizes) pk.pack_uint64(s);
  return 2;
}
uint32_t Pack(wire::Packer& pk, const CommitStoreRequest& m) {
  PackKeys(pk, m.keys);
  return 1;
}
uint32_t Pack(wire::Packer& pk, const AbortStoreRequest& m) {
  PackKeys(pk, m.keys);
  return 1;
}
uint32_t Pack(wire::Packer& pk, const LookupRequest& m) {
  PackKeys(pk, m.keys);
  wire::PackStr(pk, "pin");
  pk.pack(m.pin);
  return 2;
}
uint32_t Pack(wire::Packer& pk, const PrepareRetrieveRequest& m) {
  PackKeys(pk, m.keys);
  return 1;
}
uint32_t Pack(wire::Packer& pk, const CommitRetrieveRequest& m) {
  PackKeys(pk, m.keys);
  return 1;
}
uint32_t Pack(wire::Packer& pk, const RemoveRequest& m) {
  PackKeys(pk, m.keys);
  return 1;
}

// ---- replies ----------------------------------------------------------------------------------

uint32_t Pack(wire::Packer& pk, const RegisterReply& m) {
  PackU64(pk, "session", m.session);
  PackString(pk, "shm_name", m.shm_name);
  PackU64(pk, "pool_size", m.pool_size);
  PackU64(pk, "alignment", m.alignment);
  PackString(pk, "server_version", m.server_version);
  PackU64(pk, "protocol", m.protocol);
  PackU64(pk, "generation", m.generation);
  if (m.shm_path.empty()) return 7;
  PackString(pk, "shm_path", m.shm_path);
  return 8;
}
uint32_t Pack(wire::Packer& pk, const StatsReply& m) {
  wire::PackStr(pk, "stats");
  pk.pack_map(static_cast<uint32_t>(m.counters.size() + 1));
  for (const auto& [name, value] : m.counters) PackU64(pk, name, value);
  PackString(pk, "shm_name", m.shm_name);
  return 1;
}
uint32_t Pack(wire::Packer& pk, const HealthReply& m) {
  PackString(pk, "status", m.status);
  PackU64(pk, "generation", m.generation);
  return 2;
}
uint32_t Pack(wire::Packer& pk, const ClearReply& m) {
  PackU64(pk, "removed", m.removed);
  return 1;
}
uint32_t Pack(wire::Packer& pk, const SlotsReply& m) {
  wire::PackStr(pk, "slots");
  pk.pack_array(static_cast<uint32_t>(m.slots.size()));
  for (const SlotResult& r : m.slots) {
    pk.pack_array(3);
    wire::PackStr(pk, SlotStatusName(r.status));
    pk.pack_uint64(r.offset);
    pk.pack_uint64(r.length);
  }
  return 1;
}
uint32_t Pack(wire::Packer&, const EmptyReply&) {
  return 0;
}
uint32_t Pack(wire::Packer& pk, const AbortStoreReply& m) {
  PackU64(pk, "aborted", m.aborted);
  return 1;
}
uint32_t Pack(wire::Packer& pk, const LookupReply& m) {
  PackU64(pk, "count", m.count);
  return 1;
}
uint32_t Pack(wire::Packer& pk, const RemoveReply& m) {
  wire::PackStr(pk, "results");
  pk.pack_array(static_cast<uint32_t>(m.results.size()));
  for (RemoveOutcome o : m.results) wire::PackStr(pk, RemoveOutcomeName(o));
  return 1;
}

namespace detail {

size_t BeginMap(wire::FrameBuffer& frame) {
  msgpack::sbuffer& out = frame.sbuf();
  const size_t at = out.size();
  out.write("\xdf\0\0\0\0", 5);  // map32; valid msgpack for any count
  return at;
}

void EndMap(wire::FrameBuffer& frame, size_t at, uint32_t count) {
  auto* m = reinterpret_cast<uint8_t*>(frame.sbuf().data() + at + 1);  // big-endian, as msgpack wants
  m[0] = static_cast<uint8_t>(count >> 24);
  m[1] = static_cast<uint8_t>(count >> 16);
  m[2] = static_cast<uint8_t>(count >> 8);
  m[3] = static_cast<uint8_t>(count);
}

void PackRequestHead(wire::Packer& pk, uint64_t id, Op op, bool chained) {
  PackU64(pk, "id", id);
  PackString(pk, "op", OpName(op));
  if (chained) {
    wire::PackStr(pk, "chained");
    pk.pack_true();
  }
}

void PackReplyHead(wire::Packer& pk, uint64_t id) {
  PackU64(pk, "id", id);
  wire::PackStr(pk, "ok");
  pk.pack_true();
}

}  // namespace detail

std::string_view EncodeError(wire::FrameBuffer& frame, uint64_t id, const ErrorReply& m) {
  frame.Reset();
  wire::Packer pk(frame.sbuf());
  pk.pack_map(3);
  PackU64(pk, "id", id);
  wire::PackStr(pk, "ok");
  pk.pack_false();
  wire::PackStr(pk, "error");
  pk.pack_map(m.expired.empty() ? 2 : 3);
  PackString(pk, "code", m.code);
  PackString(pk, "message", m.message);
  if (!m.expired.empty()) {
    wire::PackStr(pk, "expired");
    pk.pack_array(static_cast<uint32_t>(m.expired.size()));
    for (uint32_t i : m.expired) pk.pack_uint32(i);
  }
  return frame.Finish();
}

// ---- decoding ---------------------------------------------------------------------------------

Status UnpackFrame(msgpack::zone& zone, std::string_view body, std::string_view what, msgpack::object* obj,
                   uint32_t max_map_fields) {
  try {
    size_t used = 0;
    *obj = wire::UnpackReferenced(zone, body, wire::FrameLimits(body.size(), max_map_fields), &used);
    if (used != body.size()) {
      return Status::Protocol(
          fmt::format("{} bytes follow the {}'s msgpack value in its frame", body.size() - used, what));
    }
  } catch (const msgpack::size_overflow& e) {
    return Status::Protocol(fmt::format(
        "{} exceeds a protocol limit ({}): arrays of at most {} elements, maps of at most {} fields, nesting "
        "of at most {} levels",
        what, e.what(), wire::kMaxBatchKeys, max_map_fields, wire::kMaxNesting));
  } catch (const std::exception& e) {
    return Status::Protocol(fmt::format("{} is not valid msgpack: {}", what, e.what()));
  }
  return Status::Ok();
}

Status DecodeRequestHead(const wire::MapReader& m, RequestHead* head) {
  // The id is required: a reply to a guessed id could be taken for another request's answer.
  auto id = m.U64("id");
  if (!id.ok()) return id.status();
  head->id = *id;
  auto op = m.Str("op");
  if (!op.ok()) return op.status();
  head->op_name = *op;
  head->op = ParseOp(*op);
  return Status::Ok();
}

Result<bool> DecodeChained(const wire::MapReader& m) {
  return m.Bool("chained", false);
}

Status DecodeReplyHead(const wire::MapReader& m, uint64_t id, ReplyHead* head) {
  auto got_id = m.U64("id");
  if (!got_id.ok() || *got_id != id) return Status::Protocol("reply does not answer this request");
  auto ok = m.Bool("ok");
  if (!ok.ok()) return ok.status();
  head->answered = true;
  if (*ok) return Status::Ok();
  auto err = m.Map("error");
  if (!err.ok()) return Status::Protocol("error reply without an error map");
  auto code = err->Str("code");
  auto msg = err->Str("message");
  const StatusCode parsed = code.ok() ? ParseStatusCode(*code) : StatusCode::kInternal;
  // A failure must never read as a success, whatever code a broken server sends with it.
  if (parsed == StatusCode::kOk) return Status::Protocol("an error reply with code OK");
  head->not_executed = code.ok() && *code == wire::kNotExecutedCode;
  if (parsed == StatusCode::kExpired) {
    auto idx = err->U64s("expired");
    if (!idx.ok()) return Status::Protocol("an Expired reply without its 'expired' indices");
    for (uint64_t i : *idx) {
      if (i >= wire::kMaxBatchKeys) {
        return Status::Protocol(
            fmt::format("an Expired reply's expired indices name key #{}, which no request has", i));
      }
    }
    head->expired.assign(idx->begin(), idx->end());
  }
  return Status(parsed, msg.ok() ? std::string(*msg) : std::string("(no message)"));
}

Status Unpack(const wire::MapReader& m, RegisterRequest& out) {
  auto instance = m.Str("instance_id");
  if (!instance.ok()) return instance.status();
  out.instance_id = *instance;
  // Informative only: a malformed one is ignored, as servers before this field was read did.
  out.client_version = m.Has("client_version") && m.Str("client_version").ok() ? *m.Str("client_version") : "";
  auto protocol = OptionalU64(m, "protocol", 1);
  if (!protocol.ok()) return protocol.status();
  out.protocol = static_cast<uint32_t>(std::min<uint64_t>(*protocol, UINT32_MAX));
  auto ns = m.Map("namespace");
  if (!ns.ok()) return ns.status();
  out.ns = {};
  for (auto [name, field] : {std::pair{"model", &out.ns.model}, std::pair{"dtype", &out.ns.dtype},
                             std::pair{"layout", &out.ns.layout}, std::pair{"salt", &out.ns.salt}}) {
    if (!ns->Has(name)) continue;
    auto s = ns->Str(name);
    if (!s.ok()) return s.status().WithContext("namespace");
    *field = *s;
  }
  for (auto [name, field] : {std::pair{"world_size", &out.ns.world_size}, std::pair{"rank", &out.ns.rank}}) {
    if (!ns->Has(name)) continue;
    auto u = ns->U64(name);
    if (!u.ok()) return u.status().WithContext("namespace");
    *field = *u;
  }
  return Status::Ok();
}

Status Unpack(const wire::MapReader& m, PrepareStoreRequest& out, DecodeScratch& scratch) {
  SHMKV_RETURN_IF_ERROR(m.BytesInto("keys", wire::kMaxKeyBytes, scratch.keys));
  SHMKV_RETURN_IF_ERROR(m.U64sInto("sizes", scratch.sizes));
  out.keys = scratch.keys;
  out.sizes = scratch.sizes;
  return Status::Ok();
}

Status Unpack(const wire::MapReader& m, LookupRequest& out, DecodeScratch& scratch) {
  SHMKV_RETURN_IF_ERROR(m.BytesInto("keys", wire::kMaxKeyBytes, scratch.keys));
  auto pin = m.Bool("pin", false);
  if (!pin.ok()) return pin.status();
  out.keys = scratch.keys;
  out.pin = *pin;
  return Status::Ok();
}

Status Unpack(const wire::MapReader& m, RegisterReply& out) {
  auto session = m.U64("session");
  auto shm = m.Str("shm_name");
  auto pool = m.U64("pool_size");
  auto align = m.U64("alignment");
  auto gen = m.U64("generation");
  auto proto = m.U64("protocol");
  auto ver = m.Str("server_version");
  for (const Status& s :
       {session.status(), shm.status(), pool.status(), align.status(), gen.status(), proto.status(), ver.status()}) {
    if (!s.ok()) return s.WithContext("register reply");
  }
  std::string_view path;
  if (m.Has("shm_path")) {  // optional: older servers do not send it
    auto p = m.Str("shm_path");
    if (!p.ok()) return p.status().WithContext("register reply");
    path = *p;
  }
  out = {*session, *shm, *pool, *align, *ver, static_cast<uint32_t>(std::min<uint64_t>(*proto, UINT32_MAX)),
         *gen,     path};
  return Status::Ok();
}

Status Unpack(const wire::MapReader& m, StatsReply& out, DecodeScratch& scratch) {
  const msgpack::object* stats = m.Find("stats");
  if (stats == nullptr || stats->type != msgpack::type::MAP) return Status::Protocol("field 'stats' must be a map");
  scratch.counters.clear();
  out.shm_name = {};
  for (uint32_t i = 0; i < stats->via.map.size; ++i) {
    const auto& kv = stats->via.map.ptr[i];
    auto name = wire::AsBytes(kv.key);
    if (!name) return Status::Protocol("a stats name is not a string");
    if (kv.val.type == msgpack::type::POSITIVE_INTEGER) {
      scratch.counters.emplace_back(*name, kv.val.via.u64);
    } else if (*name == "shm_name") {
      out.shm_name = wire::AsBytes(kv.val).value_or("");
    }  // other kinds of values come from newer servers: skipped
  }
  out.counters = scratch.counters;
  return Status::Ok();
}

Status Unpack(const wire::MapReader& m, HealthReply& out) {
  auto status = m.Str("status");
  if (!status.ok()) return status.status();
  auto gen = OptionalU64(m, "generation", 0);
  if (!gen.ok()) return gen.status();
  out = {*status, *gen};
  return Status::Ok();
}

Status Unpack(const wire::MapReader& m, ClearReply& out) {
  auto n = m.U64("removed");
  if (!n.ok()) return n.status();
  out.removed = *n;
  return Status::Ok();
}

Status Unpack(const wire::MapReader& m, SlotsReply& out, DecodeScratch& scratch) {
  const msgpack::object* arr = m.Find("slots");
  if (arr == nullptr || arr->type != msgpack::type::ARRAY) return Status::Protocol("field 'slots' must be an array");
  scratch.slots.clear();
  scratch.slots.reserve(arr->via.array.size);
  for (uint32_t i = 0; i < arr->via.array.size; ++i) {
    const msgpack::object& e = arr->via.array.ptr[i];
    if (e.type != msgpack::type::ARRAY || e.via.array.size != 3) {
      return Status::Protocol(fmt::format("slot #{} is not [status, offset, length]", i));
    }
    auto status = wire::AsBytes(e.via.array.ptr[0]);
    const msgpack::object& off = e.via.array.ptr[1];
    const msgpack::object& len = e.via.array.ptr[2];
    if (!status || off.type != msgpack::type::POSITIVE_INTEGER || len.type != msgpack::type::POSITIVE_INTEGER) {
      return Status::Protocol(fmt::format("slot #{} is not [status, offset, length]", i));
    }
    // A status this version does not know (a newer server's) grants nothing: read as missing.
    SlotStatus parsed = SlotStatus::kMissing;
    for (SlotStatus s : {SlotStatus::kOk, SlotStatus::kExists, SlotStatus::kBusy, SlotStatus::kFull}) {
      if (SlotStatusName(s) == *status) parsed = s;
    }
    scratch.slots.push_back({parsed, off.via.u64, len.via.u64});
  }
  out.slots = scratch.slots;
  return Status::Ok();
}

Status Unpack(const wire::MapReader& m, AbortStoreReply& out) {
  auto n = m.U64("aborted");
  if (!n.ok()) return n.status();
  out.aborted = *n;
  return Status::Ok();
}

Status Unpack(const wire::MapReader& m, LookupReply& out) {
  auto n = m.U64("count");
  if (!n.ok()) return n.status();
  out.count = *n;
  return Status::Ok();
}

Status Unpack(const wire::MapReader& m, RemoveReply& out, DecodeScratch& scratch) {
  auto results = m.Bytes("results", 16);
  if (!results.ok()) return results.status();
  scratch.removed.clear();
  for (size_t i = 0; i < results->size(); ++i) {
    std::optional<RemoveOutcome> parsed;
    for (RemoveOutcome o : {RemoveOutcome::kRemoved, RemoveOutcome::kMissing, RemoveOutcome::kBusy}) {
      if (RemoveOutcomeName(o) == (*results)[i]) parsed = o;
    }
    if (!parsed) return Status::Protocol(fmt::format("remove result #{} is unknown", i));
    scratch.removed.push_back(*parsed);
  }
  out.results = scratch.removed;
  return Status::Ok();
}

}  // namespace shmkv::protocol
