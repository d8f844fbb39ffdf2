// The control protocol's messages (docs/protocol.md): one struct per request and per reply, each
// with one Pack and one Unpack that the server and the C++ client both use, so every field name,
// field count and default is written here once.
//
// A request frame is the map {"id", "op", ["chained"], ...the request's fields}; a success reply
// is {"id", "ok": true, ...the reply's fields}; a failure {"id", "ok": false, "error": {...}}.
// EncodeRequest / EncodeReply / EncodeError build whole frames; DecodeRequestHead and
// DecodeReplyHead read the envelope, Unpack the fields of one message.
//
// Byte fields are views. When encoding they point into the caller's memory; when decoding, into
// the frame being decoded (and key lists into a DecodeScratch): a decoded message is valid while
// both are.
//
// Thread-safety: free functions on caller-owned values; re-entrant.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/wire.h"
#include "shmkv/status.h"
#include "shmkv/types.h"

namespace shmkv::protocol {

enum class Op : uint8_t {
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
inline constexpr size_t kOpCount = 11;

std::string_view OpName(Op op);
std::optional<Op> ParseOp(std::string_view name);
// Every operation but register, stats and health needs a registered session (its namespace).
constexpr bool NeedsRegistration(Op op) {
  return op != Op::kRegister && op != Op::kStats && op != Op::kHealth;
}

// Limits the server applies to a registration, so it cannot make the server keep or log much.
inline constexpr size_t kMaxNameBytes = 256;  // instance_id, model, dtype, layout
inline constexpr size_t kMaxSaltBytes = 256;  // the tenant salt

// Reused memory for decoding the key and size lists of requests.
struct DecodeScratch {
  std::vector<std::string_view> keys;
  std::vector<uint64_t> sizes;
  std::vector<SlotResult> slots;
  std::vector<RemoveOutcome> removed;
  std::vector<uint32_t> expired;
  std::vector<std::pair<std::string_view, uint64_t>> counters;
};

// ---- requests ---------------------------------------------------------------------------------

// The namespace of a registration as sent. The server's digest covers absent fields as 0 / empty,
// so presence is kept for world_size and rank (absent and 0 name different namespaces from 1).
struct NamespaceFields {
  std::string_view model, dtype, layout, salt;
  std::optional<uint64_t> world_size, rank;
};

struct RegisterRequest {
  static constexpr Op kOp = Op::kRegister;
  std::string_view instance_id;
  std::string_view client_version;  // informative; absent from old clients
  uint32_t protocol = 1;            // the highest version the client offers; absent: 1
  NamespaceFields ns;
};
struct StatsRequest {
  static constexpr Op kOp = Op::kStats;
};
struct HealthRequest {
  static constexpr Op kOp = Op::kHealth;
};
struct ClearRequest {
  static constexpr Op kOp = Op::kClear;
};
struct PrepareStoreRequest {
  static constexpr Op kOp = Op::kPrepareStore;
  std::span<const std::string_view> keys;
  std::span<const uint64_t> sizes;  // one per key
};
struct CommitStoreRequest {
  static constexpr Op kOp = Op::kCommitStore;
  std::span<const std::string_view> keys;
};
struct AbortStoreRequest {
  static constexpr Op kOp = Op::kAbortStore;
  std::span<const std::string_view> keys;
};
struct LookupRequest {
  static constexpr Op kOp = Op::kLookup;
  std::span<const std::string_view> keys;
  bool pin = false;
};
struct PrepareRetrieveRequest {
  static constexpr Op kOp = Op::kPrepareRetrieve;
  std::span<const std::string_view> keys;
};
struct CommitRetrieveRequest {
  static constexpr Op kOp = Op::kCommitRetrieve;
  std::span<const std::string_view> keys;
};
struct RemoveRequest {
  static constexpr Op kOp = Op::kRemove;
  std::span<const std::string_view> keys;
};

// ---- replies ----------------------------------------------------------------------------------

struct RegisterReply {
  uint64_t session = 0;
  std::string_view shm_name;
  uint64_t pool_size = 0;
  uint64_t alignment = 0;
  std::string_view server_version;
  uint32_t protocol = 1;  // the version both sides speak from here on
  uint64_t generation = 0;
  // The segment's file, absolute (e.g. /mnt/huge/lmcache_l1_pool_7 with --shm-dir); its last
  // component is shm_name. Optional: sent when non-empty; absent from older servers, whose
  // segment is shm_name in /dev/shm. Older clients ignore it.
  std::string_view shm_path;
};
struct StatsReply {
  std::span<const std::pair<std::string_view, uint64_t>> counters;
  std::string_view shm_name;  // sent inside the stats map, as a string
};
struct HealthReply {
  std::string_view status;  // "serving"
  uint64_t generation = 0;
};
struct ClearReply {
  uint64_t removed = 0;
};
struct SlotsReply {  // prepare_store and prepare_retrieve
  std::span<const SlotResult> slots;
};
struct EmptyReply {};  // commit_store and commit_retrieve
struct AbortStoreReply {
  uint64_t aborted = 0;
};
struct LookupReply {
  uint64_t count = 0;
};
struct RemoveReply {
  std::span<const RemoveOutcome> results;
};
struct ErrorReply {
  std::string_view code;              // a StatusCodeName, or kNotExecutedCode
  std::string_view message;           // names the operation and the problem
  std::span<const uint32_t> expired;  // code Expired: indices into the request's keys
};

// ---- encoding ---------------------------------------------------------------------------------

// Each Pack packs a message's fields (name, value pairs) and returns how many it packed.
uint32_t Pack(wire::Packer& pk, const RegisterRequest& m);
uint32_t Pack(wire::Packer& pk, const StatsRequest& m);
uint32_t Pack(wire::Packer& pk, const HealthRequest& m);
uint32_t Pack(wire::Packer& pk, const ClearRequest& m);
uint32_t Pack(wire::Packer& pk, const PrepareStoreRequest& m);
uint32_t Pack(wire::Packer& pk, const CommitStoreRequest& m);
uint32_t Pack(wire::Packer& pk, const AbortStoreRequest& m);
uint32_t Pack(wire::Packer& pk, const LookupRequest& m);
uint32_t Pack(wire::Packer& pk, const PrepareRetrieveRequest& m);
uint32_t Pack(wire::Packer& pk, const CommitRetrieveRequest& m);
uint32_t Pack(wire::Packer& pk, const RemoveRequest& m);
uint32_t Pack(wire::Packer& pk, const RegisterReply& m);
uint32_t Pack(wire::Packer& pk, const StatsReply& m);
uint32_t Pack(wire::Packer& pk, const HealthReply& m);
uint32_t Pack(wire::Packer& pk, const ClearReply& m);
uint32_t Pack(wire::Packer& pk, const SlotsReply& m);
uint32_t Pack(wire::Packer& pk, const EmptyReply& m);
uint32_t Pack(wire::Packer& pk, const AbortStoreReply& m);
uint32_t Pack(wire::Packer& pk, const LookupReply& m);
uint32_t Pack(wire::Packer& pk, const RemoveReply& m);

namespace detail {
// The envelope's map header is a map32 whose count is patched once the fields are packed.
size_t BeginMap(wire::FrameBuffer& frame);
void EndMap(wire::FrameBuffer& frame, size_t at, uint32_t count);
void PackRequestHead(wire::Packer& pk, uint64_t id, Op op, bool chained);
void PackReplyHead(wire::Packer& pk, uint64_t id);
}  // namespace detail

// Builds a whole request frame in `frame` (reset first); the result views `frame`.
template <typename Request>
std::string_view EncodeRequest(wire::FrameBuffer& frame, uint64_t id, const Request& m, bool chained = false) {
  frame.Reset();
  const size_t at = detail::BeginMap(frame);
  wire::Packer pk(frame.sbuf());
  detail::PackRequestHead(pk, id, Request::kOp, chained);
  const uint32_t n = Pack(pk, m);
  detail::EndMap(frame, at, n + (chained ? 3 : 2));
  return frame.Finish();
}

// Builds a whole success reply frame in `frame` (reset first); the result views `frame`.
template <typename Reply>
std::string_view EncodeReply(wire::FrameBuffer& frame, uint64_t id, const Reply& m) {
  frame.Reset();
  const size_t at = detail::BeginMap(frame);
  wire::Packer pk(frame.sbuf());
  detail::PackReplyHead(pk, id);
  detail::EndMap(frame, at, 2 + Pack(pk, m));
  return frame.Finish();
}

std::string_view EncodeError(wire::FrameBuffer& frame, uint64_t id, const ErrorReply& m);

// ---- decoding ---------------------------------------------------------------------------------

// Unpacks one frame body into `zone` with every container bounded before allocation (by the
// frame's size and the protocol's limits); a map of more than `max_map_fields` fields, too deep
// a nesting or invalid msgpack is a kProtocol error naming the limit and `what` ("request",
// "reply"). `obj` points into `body`.
Status UnpackFrame(msgpack::zone& zone, std::string_view body, std::string_view what, msgpack::object* obj,
                   uint32_t max_map_fields = wire::kMaxMapFields);

// The envelope of a request. `id` is read first, so an error about the rest can still answer it
// (0 when the id itself is missing or malformed).
struct RequestHead {
  uint64_t id = 0;
  std::string_view op_name;
  std::optional<Op> op;  // unset: an operation this version does not know
};
Status DecodeRequestHead(const wire::MapReader& m, RequestHead* head);
// The `chained` flag of a request (protocol 2 on; a version-1 session never reads it).
Result<bool> DecodeChained(const wire::MapReader& m);

// The envelope of a reply to request `id`: an error reply becomes its Status (with `expired`
// filled for an Expired error, `not_executed` set for a NotExecuted one); a reply to another id
// is kProtocol.
struct ReplyHead {
  bool answered = false;      // a well-formed reply to this request, ok or not: the stream is in step
  bool not_executed = false;  // the NotExecuted error of a chained request (protocol 2)
  std::vector<uint32_t> expired;
};
Status DecodeReplyHead(const wire::MapReader& m, uint64_t id, ReplyHead* head);

// Each Unpack reads one message's fields from the envelope's map; missing optional fields take
// their defaults, a missing required or mistyped field is an error naming it.
Status Unpack(const wire::MapReader& m, RegisterRequest& out);
Status Unpack(const wire::MapReader& m, PrepareStoreRequest& out, DecodeScratch& scratch);
Status Unpack(const wire::MapReader& m, LookupRequest& out, DecodeScratch& scratch);
// commit_store, abort_store, prepare_retrieve, commit_retrieve and remove carry only keys.
template <typename KeysOnly>
requires requires(KeysOnly k) {
  k.keys;
}
Status UnpackKeys(const wire::MapReader& m, KeysOnly& out, DecodeScratch& scratch) {
  SHMKV_RETURN_IF_ERROR(m.BytesInto("keys", wire::kMaxKeyBytes, scratch.keys));
  out.keys = scratch.keys;
  return Status::Ok();
}
Status Unpack(const wire::MapReader& m, RegisterReply& out);
Status Unpack(const wire::MapReader& m, StatsReply& out, DecodeScratch& scratch);
Status Unpack(const wire::MapReader& m, HealthReply& out);
Status Unpack(const wire::MapReader& m, ClearReply& out);
Status Unpack(const wire::MapReader& m, SlotsReply& out, DecodeScratch& scratch);
Status Unpack(const wire::MapReader& m, AbortStoreReply& out);
Status Unpack(const wire::MapReader& m, LookupReply& out);
Status Unpack(const wire::MapReader& m, RemoveReply& out, DecodeScratch& scratch);

// The StatusCode a wire error code names (kInternal for a code this version does not know).
StatusCode ParseStatusCode(std::string_view name);

}  // namespace shmkv::protocol
