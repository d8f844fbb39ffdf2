#include "server/request_handler.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/log.h"
#include "server/disk_index.h"
#include "server/disk_tier.h"
#include "shmkv/version.h"

namespace shmkv {

namespace {

// Namespace fields are bounded so a registration cannot make the server keep or log much.
constexpr size_t kMaxNameBytes = 256;  // model, dtype, layout, instance_id
constexpr size_t kMaxSaltBytes = 256;  // tenant salt

// Renders client text for an error message: printable ASCII as is, every other byte as \xNN,
// at most 64 bytes, so a reply is always valid UTF-8 and short.
std::string Printable(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < 64; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (text.size() > 64) out += "...";
  return out;
}

void PackSlots(wire::Packer& pk, const std::vector<SlotResult>& slots) {
  pk.pack_array(static_cast<uint32_t>(slots.size()));
  for (const SlotResult& r : slots) {
    pk.pack_array(3);
    wire::PackStr(pk, SlotStatusName(r.status));
    pk.pack_uint64(r.offset);
    pk.pack_uint64(r.length);
  }
}

enum class Op : uint8_t {
  kUnknown,
  kRegister,
  kStats,
  kHealth,
  kClear,
  kPrepareStore,
  kCommitStore,
  kAbortStore,
  kLookup,
  kPrepareRetrieve,
  kCommitRetrieve,
  kRemove,
};

// Direct dispatch on the name: one switch on the length, then at most two compares.
Op ParseOp(std::string_view op) {
  switch (op.size()) {
    case 5: return op == "stats" ? Op::kStats : op == "clear" ? Op::kClear : Op::kUnknown;
    case 6:
      return op == "health" ? Op::kHealth : op == "lookup" ? Op::kLookup : op == "remove" ? Op::kRemove : Op::kUnknown;
    case 8: return op == "register" ? Op::kRegister : Op::kUnknown;
    case 11: return op == "abort_store" ? Op::kAbortStore : Op::kUnknown;
    case 12: return op == "commit_store" ? Op::kCommitStore : Op::kUnknown;
    case 13: return op == "prepare_store" ? Op::kPrepareStore : Op::kUnknown;
    case 15: return op == "commit_retrieve" ? Op::kCommitRetrieve : Op::kUnknown;
    case 16: return op == "prepare_retrieve" ? Op::kPrepareRetrieve : Op::kUnknown;
    default: return Op::kUnknown;
  }
}

}  // namespace

RequestHandler::RequestHandler(ServiceContext& context, SessionId session, DeferLoad defer_load)
    : ctx_(context), session_(session), defer_load_(std::move(defer_load)) {}

bool RequestHandler::Handle(std::string_view body, std::string& out) {
  deferred_ = false;
  auto Fail = [&](uint64_t reply_id, const Status& error, std::span<const uint32_t> expired = {}) {
    AppendError(reply_id, StatusCodeName(error.code()), error.message(), expired, out);
    return false;
  };
  msgpack::object obj;
  // Every container count is bounded before the unpacker allocates for it: by the frame (each
  // element takes at least one byte) and by the protocol's limits.
  const msgpack::unpack_limit limits = wire::FrameLimits(body.size());
  try {
    size_t used = 0;
    obj = wire::UnpackReferenced(zone_, body, limits, &used);  // points into body, alive until Handle returns
    if (used != body.size()) {
      return Fail(0, Status::Protocol(
                         fmt::format("{} bytes follow the request's msgpack value in its frame", body.size() - used)));
    }
  } catch (const msgpack::size_overflow& e) {
    return Fail(0, Status::Protocol(fmt::format(
                       "request exceeds a protocol limit ({}): arrays of at most {} elements, maps of at most {} "
                       "fields, nesting of at most {} levels",
                       e.what(), wire::kMaxBatchKeys, wire::kMaxMapFields, wire::kMaxNesting)));
  } catch (const std::exception& e) {
    return Fail(0, Status::Protocol(fmt::format("request is not valid msgpack: {}", e.what())));
  }
  auto req = wire::MapReader::From(obj);
  if (!req.ok()) return Fail(0, req.status());
  // The id is required: a reply to a guessed id could be taken for another request's answer.
  auto id_field = req->U64("id");
  if (!id_field.ok()) return Fail(0, id_field.status());
  const uint64_t id = *id_field;
  auto op = req->Str("op");
  if (!op.ok()) return Fail(id, op.status());
  if (protocol_ >= 2) {
    auto chained = req->Bool("chained", false);
    if (!chained.ok()) return Fail(id, chained.status().WithContext(Printable(*op)));
    if (*chained && prev_failed_) {
      // Stays failed: every later chained request is skipped as well.
      AppendError(id, wire::kNotExecutedCode,
                  fmt::format("{} was not executed: an earlier request of this connection failed", Printable(*op)), {},
                  out);
      return false;
    }
  }

  // Reply: {"id", "ok": true, ...fields}, packed straight into the reused reply buffer.
  const size_t map_at = StartReply(id);
  wire::Packer pk(reply_.sbuf());
  int n_fields = 0;
  Status s;
  current_id_ = id;
  expired_.clear();
  try {
    s = Dispatch(*op, *req, pk, &n_fields);
  } catch (const std::exception& e) {  // msgpack or allocation failures: answer, keep serving
    s = Status::Internal(fmt::format("failed: {}", e.what()));
  }
  if (!s.ok()) return Fail(id, s.WithContext(Printable(*op)), expired_);
  if (deferred_) return true;  // answered by AnswerDeferredRetrieve; what Dispatch packed is dropped
  EndReply(map_at, n_fields, out);
  return false;
}

size_t RequestHandler::StartReply(uint64_t id) {
  // The map header is a map32 whose count EndReply patches once the fields are packed (map32 is
  // valid msgpack for any count; it saves packing the fields into a side buffer first).
  reply_.Reset();
  msgpack::sbuffer& out = reply_.sbuf();
  const size_t map_at = out.size();
  out.write("\xdf\0\0\0\0", 5);
  wire::Packer pk(out);
  wire::PackStr(pk, "id");
  pk.pack_uint64(id);
  wire::PackStr(pk, "ok");
  pk.pack_true();
  return map_at;
}

void RequestHandler::EndReply(size_t map_at, int n_fields, std::string& out) {
  const auto count = static_cast<uint32_t>(2 + n_fields);
  auto* m = reinterpret_cast<uint8_t*>(reply_.sbuf().data() + map_at + 1);  // big-endian, as msgpack wants
  m[0] = static_cast<uint8_t>(count >> 24);
  m[1] = static_cast<uint8_t>(count >> 16);
  m[2] = static_cast<uint8_t>(count >> 8);
  m[3] = static_cast<uint8_t>(count);
  prev_failed_ = false;
  out.append(reply_.Finish());
}

Status RequestHandler::Dispatch(std::string_view op, const wire::MapReader& req, wire::Packer& pk, int* fields) {
  auto field = [&](std::string_view name) {
    wire::PackStr(pk, name);
    ++*fields;
  };
  const auto now = Clock::now();
  ServiceContext& srv = ctx_;
  const Op kind = ParseOp(op);
  if (kind == Op::kUnknown) return Status::InvalidArgument("unknown operation");

  if (kind == Op::kRegister) {
    if (registered_) return Status::InvalidArgument("this connection is registered already; open another one");
    auto instance = req.Str("instance_id");
    if (!instance.ok()) return instance.status();
    if (instance->size() > kMaxNameBytes) {
      return Status::InvalidArgument(
          fmt::format("instance_id is {} bytes; at most {}", instance->size(), kMaxNameBytes));
    }
    auto ns = req.Map("namespace");
    if (!ns.ok()) return ns.status();
    // Canonical namespace: every field that changes the bytes of a chunk, plus the tenant salt.
    std::string canonical;
    std::string shown;  // for the log: the salt only by its length
    for (std::string_view f : {"model", "dtype", "layout", "salt"}) {
      std::string_view v;
      if (ns->Has(f)) {
        auto s = ns->Str(f);
        if (!s.ok()) return s.status().WithContext("namespace");
        v = *s;
      }
      const size_t limit = f == "salt" ? kMaxSaltBytes : kMaxNameBytes;
      if (v.size() > limit) {
        return Status::InvalidArgument(fmt::format("namespace.{} is {} bytes; at most {}", f, v.size(), limit));
      }
      canonical += fmt::format("{}={};", f, v);
      if (f != "salt") shown += fmt::format("{}={};", f, Printable(v));
    }
    for (std::string_view f : {"world_size", "rank"}) {
      uint64_t v = 0;
      if (ns->Has(f)) {
        auto u = ns->U64(f);
        if (!u.ok()) return u.status().WithContext("namespace");
        v = *u;
      }
      canonical += fmt::format("{}={};", f, v);
      shown += fmt::format("{}={};", f, v);
    }
    if (ns->Has("world_size") && ns->Has("rank") && *ns->U64("rank") >= *ns->U64("world_size")) {
      return Status::InvalidArgument("namespace rank must be below world_size");
    }
    // Version negotiation: the client offers the highest version it speaks (absent: 1); the
    // reply carries the lower of that and ours, and both sides speak it from here on.
    uint64_t offered = 1;
    if (req.Has("protocol")) {
      auto p = req.U64("protocol");
      if (!p.ok()) return p.status();
      offered = *p;
    }
    if (offered < wire::kMinProtocolVersion) {
      return Status::InvalidArgument(fmt::format("client offers protocol {}; this server speaks {}..{}", offered,
                                                 wire::kMinProtocolVersion, wire::kProtocolVersion));
    }
    protocol_ = static_cast<uint32_t>(std::min<uint64_t>(offered, wire::kProtocolVersion));
    instance_ = std::string(*instance);
    // The key prefix is the namespace's digest: nothing per namespace is kept, so namespaces
    // cost the server no memory, and L1 and L2 name an object the same way.
    prefix_ = NamespaceDigest(canonical);
    registered_ = true;
    Log().info("session {} registered: instance '{}', namespace {}salt={} bytes (digest {})", session_,
               Printable(instance_), shown, ns->Has("salt") ? ns->Str("salt")->size() : 0, HexEncode(prefix_));
    field("session");
    pk.pack_uint64(session_);
    field("shm_name");
    wire::PackStr(pk, srv.shm_name);
    field("pool_size");
    pk.pack_uint64(srv.pool_size);
    field("alignment");
    pk.pack_uint64(kSlotAlignment);
    field("server_version");
    wire::PackStr(pk, kVersionString);
    field("protocol");
    pk.pack_uint32(protocol_);
    field("generation");
    pk.pack_uint64(srv.generation);
    return Status::Ok();
  }
  if (kind == Op::kStats) {
    const StoreStats s = srv.store.stats();
    const std::pair<std::string_view, uint64_t> items[] = {
        {"objects", s.objects},
        {"used_bytes", s.used_bytes},
        {"pool_size", s.pool_size},
        {"reserved_objects", s.reserved_objects},
        {"pinned_objects", s.pinned_objects},
        {"sessions", s.sessions},
        {"evictions", s.evictions},
        {"evicted_bytes", s.evicted_bytes},
        {"stores", s.stores},
        {"lookups", s.lookups},
        {"lookup_hits", s.lookup_hits},
        {"retrieves", s.retrieves},
        {"expired_leases", s.expired_leases},
        {"quarantined_slots", s.quarantined_slots},
        {"quarantined_bytes", s.quarantined_bytes},
        {"generation", srv.generation},
    };
    std::vector<std::pair<std::string_view, uint64_t>> l2;
    if (srv.disk) {
      l2 = srv.disk->Stats();
      l2.insert(l2.end(), {{"l2_dirty_objects", s.dirty_objects},
                           {"l2_dirty_bytes", s.dirty_bytes},
                           {"l2_evicted_dirty", s.evicted_dirty}});
    }
    field("stats");
    pk.pack_map(static_cast<uint32_t>(std::size(items) + l2.size() + 1));
    for (auto [k, v] : items) {
      wire::PackStr(pk, k);
      pk.pack_uint64(v);
    }
    for (auto [k, v] : l2) {
      wire::PackStr(pk, k);
      pk.pack_uint64(v);
    }
    wire::PackStr(pk, "shm_name");
    wire::PackStr(pk, srv.shm_name);
    return Status::Ok();
  }
  if (kind == Op::kHealth) {
    field("status");
    wire::PackStr(pk, "serving");
    field("generation");
    pk.pack_uint64(srv.generation);
    return Status::Ok();
  }
  if (!registered_) return Status::InvalidArgument("the session is not registered (send 'register' first)");

  if (kind == Op::kClear) {
    field("removed");
    // Disk first: it counts only what L1 does not hold, so an object in both counts once.
    const size_t disk_only = srv.disk ? srv.disk->ClearNamespace(prefix_) : 0;
    pk.pack_uint64(srv.store.Clear(prefix_) + disk_only);
    return Status::Ok();
  }
  SHMKV_RETURN_IF_ERROR(req.BytesInto("keys", wire::kMaxKeyBytes, raw_keys_));
  const std::vector<std::string_view>& keys = Namespaced(raw_keys_);

  if (kind == Op::kPrepareStore) {
    SHMKV_RETURN_IF_ERROR(req.U64sInto("sizes", sizes_));
    auto slots = srv.disk ? srv.disk->PrepareStore(session_, keys, sizes_, now)
                          : srv.store.PrepareStore(session_, keys, sizes_, now);
    if (!slots.ok()) return slots.status();
    field("slots");
    PackSlots(pk, *slots);
    return Status::Ok();
  }
  if (kind == Op::kCommitStore) {
    Status st = srv.store.CommitStore(session_, keys, now, &expired_);
    if (srv.disk) srv.disk->Pump();
    return st;
  }
  if (kind == Op::kAbortStore) {
    field("aborted");
    pk.pack_uint64(srv.store.AbortStore(session_, keys));
    return Status::Ok();
  }
  if (kind == Op::kLookup) {
    auto pin = req.Bool("pin", false);
    if (!pin.ok()) return pin.status();
    field("count");
    size_t n = srv.store.Lookup(session_, keys, *pin, now);
    // L2 continues the prefix: keys on disk count as hits (they are loaded by prepare_retrieve).
    if (srv.disk && n < keys.size()) n += srv.disk->CountOnDisk(std::span(keys).subspan(n));
    pk.pack_uint64(n);
    return Status::Ok();
  }
  if (kind == Op::kPrepareRetrieve) {
    if (srv.disk && srv.disk->NeedsLoad(keys)) {
      deferred_ = true;
      defer_load_(current_id_, std::vector<std::string>(keys.begin(), keys.end()));
      return Status::Ok();
    }
    field("slots");
    PackSlots(pk, srv.store.PrepareRetrieve(session_, keys, now));
    return Status::Ok();
  }
  if (kind == Op::kCommitRetrieve) return srv.store.CommitRetrieve(session_, keys, &expired_);
  if (kind == Op::kRemove) {
    auto out = srv.store.Remove(keys);
    if (srv.disk) {
      for (size_t i = 0; i < out.size(); ++i) {
        if (out[i] != RemoveOutcome::kBusy && srv.disk->Remove(keys[i])) out[i] = RemoveOutcome::kRemoved;
      }
    }
    field("results");
    pk.pack_array(static_cast<uint32_t>(out.size()));
    for (RemoveOutcome o : out) wire::PackStr(pk, RemoveOutcomeName(o));
    return Status::Ok();
  }
  return Status::InvalidArgument("unknown operation");
}

void RequestHandler::AnswerDeferredRetrieve(uint64_t id, std::span<const std::string> keys, std::string& out) {
  std::vector<std::string_view> views(keys.begin(), keys.end());
  const size_t map_at = StartReply(id);
  wire::Packer pk(reply_.sbuf());
  wire::PackStr(pk, "slots");
  PackSlots(pk, ctx_.store.PrepareRetrieve(session_, views, Clock::now()));
  EndReply(map_at, 1, out);
}

void RequestHandler::AppendError(uint64_t id, const Status& status, std::string& out) {
  AppendError(id, StatusCodeName(status.code()), status.message(), {}, out);
}

void RequestHandler::AppendError(uint64_t id, std::string_view code, std::string_view message,
                                 std::span<const uint32_t> expired, std::string& out) {
  prev_failed_ = true;
  reply_.Reset();
  wire::Packer pk(reply_.sbuf());
  pk.pack_map(3);
  wire::PackStr(pk, "id");
  pk.pack_uint64(id);
  wire::PackStr(pk, "ok");
  pk.pack_false();
  wire::PackStr(pk, "error");
  pk.pack_map(expired.empty() ? 2 : 3);
  wire::PackStr(pk, "code");
  wire::PackStr(pk, code);
  wire::PackStr(pk, "message");
  wire::PackStr(pk, message);
  if (!expired.empty()) {
    wire::PackStr(pk, "expired");
    pk.pack_array(static_cast<uint32_t>(expired.size()));
    for (uint32_t i : expired) pk.pack_uint32(i);
  }
  out.append(reply_.Finish());
}

const std::vector<std::string_view>& RequestHandler::Namespaced(const std::vector<std::string_view>& keys) {
  size_t total = 0;
  for (std::string_view k : keys) total += prefix_.size() + k.size();
  key_arena_.clear();
  key_arena_.reserve(total);  // no reallocation below: the views stay valid
  full_keys_.clear();
  for (std::string_view k : keys) {
    const size_t at = key_arena_.size();
    key_arena_.append(prefix_);
    key_arena_.append(k);
    full_keys_.emplace_back(key_arena_.data() + at, prefix_.size() + k.size());
  }
  return full_keys_;
}

}  // namespace shmkv
