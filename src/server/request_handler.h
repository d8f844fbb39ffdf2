// RequestHandler: one session's side of the control protocol (docs/protocol.md), without a
// socket. A request's body goes in; its reply frame is appended to an output string. It decodes
// the request into its typed message (src/protocol/messages.h), applies the session's state
// (registration, namespace, protocol version, the `chained` rule) and calls the KvService through
// a table of operations; the server's Connection does the framing, the socket I/O and the ordering
// of replies around it. Being free of sockets, it is also the seam the request-path fuzz target
// and the in-process tests drive.
//
// Session states: unregistered (register, stats and health only) -> registered (every operation,
// keys in the session's namespace). A request whose answer waits for a tier is deferred: Handle
// returns true, and the reply reaches the connection later through the Resume it provided.
//
// Thread-safety: none; a handler lives on the server's event loop, as its service does.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "metrics/request_metrics.h"
#include "protocol/messages.h"
#include "protocol/wire.h"
#include "server/kv_service.h"
#include "shmkv/status.h"

namespace shmkv {

class RequestHandler final : private Deferral {
 public:
  // Delivers a deferred reply frame to the connection, which then handles the frames that
  // queued up behind it. A Resume must keep the connection (and so this handler) alive.
  using Resume = std::function<void(std::string_view reply_frame)>;
  using MakeResume = std::function<Resume()>;

  // The session must be open in the service. `requests` (may be null) counts every operation
  // by outcome with its server-side latency (for /metrics); it must outlive the handler.
  RequestHandler(KvService& service, SessionId session, MakeResume make_resume,
                 metrics::RequestMetrics* requests = nullptr);

  // What RequestMetrics is built with: the protocol's operations, in protocol::Op order, and the
  // outcomes, in StatusCode order followed by "not_executed" (a chained request skipped).
  static std::vector<std::string> MetricsOps();
  static std::vector<std::string> MetricsOutcomes();
  RequestHandler(const RequestHandler&) = delete;
  RequestHandler& operator=(const RequestHandler&) = delete;

  // Handles one request body. Appends its reply frame to `out` and returns false, or returns
  // true (nothing appended) when the reply was deferred: it comes through Resume.
  bool Handle(std::string_view body, std::string& out);
  // An error reply not tied to a request's outcome (a bad frame length, full buffers).
  void AppendError(uint64_t id, const Status& status, std::string& out);

  bool registered() const { return registered_; }
  const std::string& instance() const { return instance_; }
  uint32_t protocol() const { return protocol_; }

 private:
  using OpHandler = Status (RequestHandler::*)(const wire::MapReader& request);
  static const OpHandler kOps[protocol::kOpCount];

  // One method per operation, in protocol::Op order.
  Status Register(const wire::MapReader& request);
  Status Stats(const wire::MapReader& request);
  Status Health(const wire::MapReader& request);
  Status Clear(const wire::MapReader& request);
  Status PrepareStore(const wire::MapReader& request);
  Status CommitStore(const wire::MapReader& request);
  Status AbortStore(const wire::MapReader& request);
  Status Lookup(const wire::MapReader& request);
  Status PrepareRetrieve(const wire::MapReader& request);
  Status CommitRetrieve(const wire::MapReader& request);
  Status Remove(const wire::MapReader& request);

  // Appends the success reply of the request being handled.
  template <typename Reply>
  void Answer(const Reply& reply) {
    prev_failed_ = false;
    out_->append(protocol::EncodeReply(reply_, current_id_, reply));
  }
  void AppendError(uint64_t id, std::string_view code, std::string_view message, std::span<const uint32_t> expired,
                   std::string& out);
  // Prefixes each key with the namespace into one reused buffer: no allocation per key.
  std::span<const std::string_view> Namespaced(std::span<const std::string_view> keys);
  // The answer of a deferred request: into the current output when it comes before Handle
  // returned, else through a Resume.
  template <typename Reply>
  void Complete(uint64_t id, const Reply& reply, const Resume& resume);

  // Deferral (called by the service).
  LookupDone DeferLookup() override;
  RetrieveDone DeferRetrieve() override;

  KvService& service_;
  SessionId session_;
  MakeResume make_resume_;
  std::string instance_;
  std::string prefix_;  // the namespace digest; empty until registered
  bool registered_ = false;
  uint32_t protocol_ = 1;     // agreed at registration
  bool prev_failed_ = false;  // the outcome of the previous request, for `chained` (protocol 2)
  bool deferred_ = false;     // the request being handled waits for a tier
  bool handling_ = false;     // inside Handle: a deferred answer arriving now goes to out_
  uint64_t current_id_ = 0;   // id of the request being handled
  metrics::RequestMetrics* requests_ = nullptr;
  size_t current_op_ = 0;  // protocol::Op of the request being handled, as an index
  std::chrono::steady_clock::time_point started_{};
  void Record(size_t op, const Status& outcome, std::chrono::steady_clock::time_point started);
  std::string* out_ = nullptr;
  // Per-request scratch, reused so a request allocates nothing in the steady state.
  msgpack::zone zone_;
  wire::FrameBuffer reply_;
  protocol::DecodeScratch scratch_;
  std::vector<std::string_view> full_keys_;
  std::string key_arena_;
  std::vector<SlotResult> slots_;
  std::vector<RemoveOutcome> removed_;
  std::vector<TierCounter> counters_;
  std::vector<uint32_t> expired_;  // indices of keys whose lease expired, for an Expired error
};

// Frames a session may send before it has registered: enough for any register, stats or
// health request, so an unregistered peer cannot make the server buffer more.
inline constexpr uint32_t kUnregisteredMaxFrame = 64 * 1024;

}  // namespace shmkv
