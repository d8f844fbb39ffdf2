// RequestHandler: one session's side of the control protocol (docs/protocol.md), without a
// socket. A request's body goes in; its reply frame is appended to an output string. The
// server's Connection does the framing, the socket I/O and the ordering of replies around it;
// the handler decodes the request (with every container count bounded before anything is
// allocated), runs the operation on the Store and the disk tier, and encodes the reply. Being
// free of sockets, it is also the seam the request-path fuzz target drives.
//
// Thread-safety: none; a handler lives on the server's event loop, as its Store does.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/wire.h"
#include "server/store.h"
#include "shmkv/status.h"

namespace shmkv {

class DiskTier;

// What every session of one server shares.
struct ServiceContext {
  Store& store;
  DiskTier* disk = nullptr;  // the L2 tier, or null
  std::string shm_name;      // the segment, as registration reports it
  uint64_t pool_size = 0;
  uint64_t generation = 0;
};

class RequestHandler {
 public:
  // Starts the L2 loads of a prepare_retrieve (namespaced keys); its reply is deferred until
  // the caller passes the result to AnswerDeferredRetrieve. Only called with a disk tier.
  using DeferLoad = std::function<void(uint64_t id, std::vector<std::string> keys)>;

  // The session must be open in the Store.
  RequestHandler(ServiceContext& context, SessionId session, DeferLoad defer_load);
  RequestHandler(const RequestHandler&) = delete;
  RequestHandler& operator=(const RequestHandler&) = delete;

  // Handles one request body. Appends its reply frame to `out` and returns false, or returns
  // true (nothing appended) when the reply was deferred through DeferLoad.
  bool Handle(std::string_view body, std::string& out);
  // The reply to a deferred prepare_retrieve, once its loads have settled: pins what L1 holds.
  void AnswerDeferredRetrieve(uint64_t id, std::span<const std::string> keys, std::string& out);
  // An error reply not tied to a request's outcome (a bad frame length, full buffers).
  void AppendError(uint64_t id, const Status& status, std::string& out);

  bool registered() const { return registered_; }
  const std::string& instance() const { return instance_; }

 private:
  // A reply {"id", "ok": true, ...fields} is built in reply_: StartReply packs the head and
  // returns where the map header is; EndReply patches the field count and appends the frame.
  size_t StartReply(uint64_t id);
  void EndReply(size_t map_at, int n_fields, std::string& out);
  Status Dispatch(std::string_view op, const wire::MapReader& req, wire::Packer& pk, int* fields);
  // `expired`: with code Expired, the indices of the request's keys whose lease had expired.
  void AppendError(uint64_t id, std::string_view code, std::string_view message, std::span<const uint32_t> expired,
                   std::string& out);
  // Prefixes each key with the namespace into one reused buffer: no allocation per key.
  const std::vector<std::string_view>& Namespaced(const std::vector<std::string_view>& keys);

  ServiceContext& ctx_;
  SessionId session_;
  DeferLoad defer_load_;
  std::string instance_;
  std::string prefix_;  // the namespace digest; empty until registered
  bool registered_ = false;
  uint32_t protocol_ = 1;     // agreed at registration
  bool prev_failed_ = false;  // the outcome of the previous request, for `chained` (protocol 2)
  bool deferred_ = false;     // the request being handled was deferred
  uint64_t current_id_ = 0;   // id of the request being dispatched
  // Per-request scratch, reused so a request allocates nothing in the steady state.
  msgpack::zone zone_;
  wire::FrameBuffer reply_;
  std::vector<std::string_view> raw_keys_, full_keys_;
  std::vector<uint64_t> sizes_;
  std::string key_arena_;
  std::vector<uint32_t> expired_;  // indices of keys whose lease expired, for an Expired error
};

// Frames a session may send before it has registered: enough for any register, stats or
// health request, so an unregistered peer cannot make the server buffer more.
inline constexpr uint32_t kUnregisteredMaxFrame = 64 * 1024;

}  // namespace shmkv
