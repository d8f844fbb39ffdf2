#include "server/request_handler.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/log.h"
#include "server/disk_index.h"
#include "shmkv/version.h"

namespace shmkv {

namespace {

using protocol::Op;

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

}  // namespace

// Indexed by protocol::Op: the dispatch is this table.
const RequestHandler::OpHandler RequestHandler::kOps[protocol::kOpCount] = {
    &RequestHandler::Register,       &RequestHandler::Stats,        &RequestHandler::Health,
    &RequestHandler::Clear,          &RequestHandler::PrepareStore, &RequestHandler::CommitStore,
    &RequestHandler::AbortStore,     &RequestHandler::Lookup,       &RequestHandler::PrepareRetrieve,
    &RequestHandler::CommitRetrieve, &RequestHandler::Remove,
};

RequestHandler::RequestHandler(KvService& service, SessionId session, MakeResume make_resume,
                               metrics::RequestMetrics* requests)
    : service_(service), session_(session), make_resume_(std::move(make_resume)), requests_(requests) {}

std::vector<std::string> RequestHandler::MetricsOps() {
  std::vector<std::string> ops;
  for (size_t i = 0; i < protocol::kOpCount; ++i) ops.emplace_back(protocol::OpName(static_cast<protocol::Op>(i)));
  return ops;
}

std::vector<std::string> RequestHandler::MetricsOutcomes() {
  std::vector<std::string> outcomes;
  for (int c = 0; c <= static_cast<int>(StatusCode::kExpired); ++c) {
    outcomes.emplace_back(StatusCodeName(static_cast<StatusCode>(c)));
  }
  outcomes.emplace_back("not_executed");
  return outcomes;
}

void RequestHandler::Record(size_t op, const Status& outcome, std::chrono::steady_clock::time_point started) {
  if (requests_ == nullptr) return;
  requests_->Record(op, static_cast<size_t>(outcome.code()), std::chrono::steady_clock::now() - started);
}

bool RequestHandler::Handle(std::string_view body, std::string& out) {
  deferred_ = false;
  auto Fail = [&](uint64_t reply_id, const Status& error, std::span<const uint32_t> expired = {}) {
    AppendError(reply_id, StatusCodeName(error.code()), error.message(), expired, out);
    return false;
  };
  msgpack::object obj;
  // Every container count is bounded before the unpacker allocates for it.
  if (Status s = protocol::UnpackFrame(zone_, body, "request", &obj); !s.ok()) return Fail(0, s);
  auto req = wire::MapReader::From(obj);
  if (!req.ok()) return Fail(0, req.status());
  protocol::RequestHead head;
  if (Status s = protocol::DecodeRequestHead(*req, &head); !s.ok()) return Fail(head.id, s);
  // Errors name the operation; client text is made printable only on that path.
  auto op_name = [&] { return Printable(head.op_name); };
  const auto started = requests_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
  const size_t op_index = head.op ? static_cast<size_t>(*head.op) : protocol::kOpCount;  // none: not recorded
  if (protocol_ >= 2) {
    auto chained = protocol::DecodeChained(*req);
    if (!chained.ok()) {
      Record(op_index, chained.status(), started);
      return Fail(head.id, chained.status().WithContext(op_name()));
    }
    if (*chained && prev_failed_) {
      // Stays failed: every later chained request is skipped as well.
      if (requests_) {
        requests_->Record(op_index, static_cast<size_t>(StatusCode::kExpired) + 1,
                          std::chrono::steady_clock::now() - started);
      }
      AppendError(head.id, wire::kNotExecutedCode,
                  fmt::format("{} was not executed: an earlier request of this connection failed", op_name()), {}, out);
      return false;
    }
  }
  if (!head.op) return Fail(head.id, Status::InvalidArgument("unknown operation").WithContext(op_name()));
  if (protocol::NeedsRegistration(*head.op) && !registered_) {
    const Status s = Status::InvalidArgument("the session is not registered (send 'register' first)");
    Record(op_index, s, started);
    return Fail(head.id, s.WithContext(op_name()));
  }
  current_op_ = op_index;
  started_ = started;

  current_id_ = head.id;
  out_ = &out;
  expired_.clear();
  handling_ = true;
  Status s;
  try {
    s = (this->*kOps[static_cast<size_t>(*head.op)])(*req);
  } catch (const std::exception& e) {  // msgpack or allocation failures: answer, keep serving
    s = Status::Internal(fmt::format("failed: {}", e.what()));
  }
  handling_ = false;
  out_ = nullptr;
  if (!deferred_) Record(op_index, s, started);  // a deferred one is recorded when it is answered
  if (!s.ok()) return Fail(head.id, s.WithContext(op_name()), expired_);
  return deferred_;
}

// ---- operations -------------------------------------------------------------------------------

Status RequestHandler::Register(const wire::MapReader& request) {
  if (registered_) return Status::InvalidArgument("this connection is registered already; open another one");
  protocol::RegisterRequest req;
  SHMKV_RETURN_IF_ERROR(protocol::Unpack(request, req));
  if (req.instance_id.size() > protocol::kMaxNameBytes) {
    return Status::InvalidArgument(
        fmt::format("instance_id is {} bytes; at most {}", req.instance_id.size(), protocol::kMaxNameBytes));
  }
  // Canonical namespace: every field that changes the bytes of a chunk, plus the tenant salt.
  // Its digest names the namespace in L1 and on disk: this spelling must never change.
  std::string canonical;
  std::string shown;  // for the log: the salt only by its length
  const protocol::NamespaceFields& ns = req.ns;
  for (auto [name, value] : {std::pair{"model", ns.model}, std::pair{"dtype", ns.dtype}, std::pair{"layout", ns.layout},
                             std::pair{"salt", ns.salt}}) {
    const bool salt = std::string_view(name) == "salt";
    const size_t limit = salt ? protocol::kMaxSaltBytes : protocol::kMaxNameBytes;
    if (value.size() > limit) {
      return Status::InvalidArgument(fmt::format("namespace.{} is {} bytes; at most {}", name, value.size(), limit));
    }
    canonical += fmt::format("{}={};", name, value);
    if (!salt) shown += fmt::format("{}={};", name, Printable(value));
  }
  for (auto [name, value] : {std::pair{"world_size", ns.world_size}, std::pair{"rank", ns.rank}}) {
    canonical += fmt::format("{}={};", name, value.value_or(0));
    shown += fmt::format("{}={};", name, value.value_or(0));
  }
  if (ns.world_size && ns.rank && *ns.rank >= *ns.world_size) {
    return Status::InvalidArgument("namespace rank must be below world_size");
  }
  // Version negotiation: the client offers the highest version it speaks (absent: 1); the reply
  // carries the lower of that and ours, and both sides speak it from here on.
  if (req.protocol < wire::kMinProtocolVersion) {
    return Status::InvalidArgument(fmt::format("client offers protocol {}; this server speaks {}..{}", req.protocol,
                                               wire::kMinProtocolVersion, wire::kProtocolVersion));
  }
  protocol_ = std::min(req.protocol, wire::kProtocolVersion);
  instance_ = std::string(req.instance_id);
  // The key prefix is the namespace's digest: nothing per namespace is kept, so namespaces cost
  // the server no memory, and L1 and L2 name an object the same way.
  prefix_ = NamespaceDigest(canonical);
  registered_ = true;
  Log().info("session {} registered: instance '{}', namespace {}salt={} bytes (digest {})", session_,
             Printable(instance_), shown, ns.salt.size(), HexEncode(prefix_));
  const ServiceIdentity& id = service_.identity();
  Answer(protocol::RegisterReply{session_, id.shm_name, id.pool_size, kSlotAlignment, kVersionString, protocol_,
                                 id.generation, id.shm_path});
  return Status::Ok();
}

Status RequestHandler::Stats(const wire::MapReader&) {
  counters_.clear();
  service_.Stats(counters_);
  Answer(protocol::StatsReply{counters_, service_.identity().shm_name});
  return Status::Ok();
}

Status RequestHandler::Health(const wire::MapReader&) {
  Answer(protocol::HealthReply{"serving", service_.identity().generation});
  return Status::Ok();
}

Status RequestHandler::Clear(const wire::MapReader&) {
  Answer(protocol::ClearReply{service_.Clear(prefix_)});
  return Status::Ok();
}

Status RequestHandler::PrepareStore(const wire::MapReader& request) {
  protocol::PrepareStoreRequest req;
  SHMKV_RETURN_IF_ERROR(protocol::Unpack(request, req, scratch_));
  SHMKV_RETURN_IF_ERROR(service_.PrepareStore(session_, Namespaced(req.keys), req.sizes, Clock::now(), slots_));
  Answer(protocol::SlotsReply{slots_});
  return Status::Ok();
}

Status RequestHandler::CommitStore(const wire::MapReader& request) {
  protocol::CommitStoreRequest req;
  SHMKV_RETURN_IF_ERROR(protocol::UnpackKeys(request, req, scratch_));
  SHMKV_RETURN_IF_ERROR(service_.CommitStore(session_, Namespaced(req.keys), Clock::now(), &expired_));
  Answer(protocol::EmptyReply{});
  return Status::Ok();
}

Status RequestHandler::AbortStore(const wire::MapReader& request) {
  protocol::AbortStoreRequest req;
  SHMKV_RETURN_IF_ERROR(protocol::UnpackKeys(request, req, scratch_));
  Answer(protocol::AbortStoreReply{service_.AbortStore(session_, Namespaced(req.keys))});
  return Status::Ok();
}

Status RequestHandler::Lookup(const wire::MapReader& request) {
  protocol::LookupRequest req;
  SHMKV_RETURN_IF_ERROR(protocol::Unpack(request, req, scratch_));
  const auto count = service_.Lookup(session_, Namespaced(req.keys), req.pin, Clock::now(), *this);
  if (count) Answer(protocol::LookupReply{*count});
  return Status::Ok();
}

Status RequestHandler::PrepareRetrieve(const wire::MapReader& request) {
  protocol::PrepareRetrieveRequest req;
  SHMKV_RETURN_IF_ERROR(protocol::UnpackKeys(request, req, scratch_));
  if (service_.PrepareRetrieve(session_, Namespaced(req.keys), Clock::now(), slots_, *this)) {
    Answer(protocol::SlotsReply{slots_});
  }
  return Status::Ok();
}

Status RequestHandler::CommitRetrieve(const wire::MapReader& request) {
  protocol::CommitRetrieveRequest req;
  SHMKV_RETURN_IF_ERROR(protocol::UnpackKeys(request, req, scratch_));
  SHMKV_RETURN_IF_ERROR(service_.CommitRetrieve(session_, Namespaced(req.keys), &expired_));
  Answer(protocol::EmptyReply{});
  return Status::Ok();
}

Status RequestHandler::Remove(const wire::MapReader& request) {
  protocol::RemoveRequest req;
  SHMKV_RETURN_IF_ERROR(protocol::UnpackKeys(request, req, scratch_));
  service_.Remove(Namespaced(req.keys), removed_);
  Answer(protocol::RemoveReply{removed_});
  return Status::Ok();
}

// ---- deferred replies -------------------------------------------------------------------------

template <typename Reply>
void RequestHandler::Complete(uint64_t id, const Reply& reply, const Resume& resume) {
  prev_failed_ = false;
  if (handling_ && id == current_id_) {
    // The tier answered before Handle returned: an ordinary reply after all.
    deferred_ = false;
    out_->append(protocol::EncodeReply(reply_, id, reply));
    return;
  }
  resume(protocol::EncodeReply(reply_, id, reply));
}

Deferral::LookupDone RequestHandler::DeferLookup() {
  deferred_ = true;
  return [this, id = current_id_, resume = make_resume_(), op = current_op_, started = started_](uint64_t count) {
    if (!(handling_ && id == current_id_)) Record(op, Status::Ok(), started);  // else Handle records it
    Complete(id, protocol::LookupReply{count}, resume);
  };
}

Deferral::RetrieveDone RequestHandler::DeferRetrieve() {
  deferred_ = true;
  return [this, id = current_id_, resume = make_resume_(), op = current_op_,
          started = started_](std::span<const SlotResult> slots) {
    if (!(handling_ && id == current_id_)) Record(op, Status::Ok(), started);  // else Handle records it
    Complete(id, protocol::SlotsReply{slots}, resume);
  };
}

// ---- errors and keys --------------------------------------------------------------------------

void RequestHandler::AppendError(uint64_t id, const Status& status, std::string& out) {
  AppendError(id, StatusCodeName(status.code()), status.message(), {}, out);
}

void RequestHandler::AppendError(uint64_t id, std::string_view code, std::string_view message,
                                 std::span<const uint32_t> expired, std::string& out) {
  prev_failed_ = true;
  out.append(protocol::EncodeError(reply_, id, protocol::ErrorReply{code, message, expired}));
}

std::span<const std::string_view> RequestHandler::Namespaced(std::span<const std::string_view> keys) {
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
