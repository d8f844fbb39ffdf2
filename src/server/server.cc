#include "server/server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <asio.hpp>
#include <cerrno>
#include <cstring>
#include <deque>
#include <random>
#include <unordered_map>

#include <fmt/format.h>

#include "common/log.h"
#include "common/syscall.h"
#include "protocol/wire.h"
#include "server/disk_index.h"
#include "server/disk_tier.h"
#include "server/store.h"
#include "shmkv/segment.h"
#include "shmkv/version.h"

namespace shmkv {

using asio::local::stream_protocol;

std::string DefaultSocketPath() {
  if (const char* dir = std::getenv("XDG_RUNTIME_DIR"); dir != nullptr && *dir != '\0') {
    return fmt::format("{}/shmkv.sock", dir);
  }
  return fmt::format("/tmp/shmkv-{}/shmkv.sock", ::geteuid());
}

Status PrepareSocketDirectory(const std::string& socket_path, uint32_t socket_mode) {
  // An explicit --socket is the operator's choice; the default must not be squattable.
  if (socket_path != DefaultSocketPath()) return Status::Ok();
  const std::string dir = socket_path.substr(0, socket_path.rfind('/'));
  const bool xdg = std::getenv("XDG_RUNTIME_DIR") != nullptr;
  // Group members (--socket-mode 660) need search permission; writing stays the owner's alone.
  const mode_t want = socket_mode == 0660 ? 0750 : 0700;
  if (!xdg && ::mkdir(dir.c_str(), want) != 0 && errno != EEXIST) {
    return Status::FromErrno(fmt::format("creating the socket directory '{}'", dir), errno);
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return Status::FromErrno(fmt::format("socket directory '{}'", dir), errno);
  // Another user's directory, or one others can write, would let them put an impostor's socket
  // there first and receive the workers' KV data.
  if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 0022) != 0) {
    return Status::InvalidArgument(fmt::format(
        "socket directory '{}' is {} owned by uid {} with mode {:o}; it must be a directory of uid {} that only "
        "it can write, or another local user could take over the socket (remove it, or choose --socket)",
        dir, S_ISDIR(st.st_mode) ? "a directory" : "not a directory", st.st_uid, st.st_mode & 07777, ::geteuid()));
  }
  if (!xdg && (st.st_mode & 07777) != want && ::chmod(dir.c_str(), want) != 0) {
    return Status::FromErrno(fmt::format("chmod '{}'", dir), errno);
  }
  return Status::Ok();
}

namespace {

class Connection;

// The bytes of one request frame the server reads before a session has registered: enough for
// any register, stats or health request, so an unregistered peer cannot make it buffer more.
constexpr uint32_t kUnregisteredMaxFrame = 64 * 1024;
// Namespace fields are bounded so a registration cannot make the server keep or log much.
constexpr size_t kMaxNameBytes = 256;  // model, dtype, layout, instance_id
constexpr size_t kMaxSaltBytes = 256;  // tenant salt
// Containers in a request: the batch limit of docs/protocol.md, a few fields per map, and a
// shallow nesting; checked by the unpacker before it allocates anything for a container.
constexpr uint32_t kMaxMapFields = 64;
constexpr uint32_t kMaxNesting = 8;

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

// A descriptor that becomes readable when process `pid` exits, or invalid where the kernel has
// no pidfd or the peer's pid is not visible (another pid namespace reports 0).
sys::UniqueFd OpenPidfd(pid_t pid) {
  if (pid <= 0) return {};
  auto r = sys::Call([&] { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); });
  return r.ok() ? sys::UniqueFd(r.value) : sys::UniqueFd();
}

bool ProcessExited(const sys::UniqueFd& pidfd) {
  struct pollfd p {
    pidfd.get(), POLLIN, 0
  };
  auto r = sys::Call([&] { return ::poll(&p, 1, 0); });
  return r.ok() && r.value == 1;
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  SharedSegment segment;
  Store store;
  uint64_t generation = 0;
  asio::io_context io{1};
  stream_protocol::acceptor acceptor{io};
  asio::signal_set signals{io, SIGINT, SIGTERM};
  asio::steady_timer lease_timer{io};
  SessionId next_session = 1;
  std::unordered_map<SessionId, std::weak_ptr<Connection>> connections;
  // Sessions closed while their process lived on, with quarantined slots: freed at its exit.
  std::unordered_map<SessionId, std::unique_ptr<asio::posix::stream_descriptor>> orphan_watches;
  size_t buffered_bytes = 0;  // request buffers of every connection, bounded by max_buffered_bytes
  bool socket_bound = false;
  std::unique_ptr<DiskTier> disk;  // L2; declared after io and store, so destroyed before them

  Impl(ServerOptions o, SharedSegment seg, Store st)
      : options(std::move(o)), segment(std::move(seg)), store(std::move(st)) {}
  ~Impl() {
    if (socket_bound) ::unlink(options.socket_path.c_str());
  }

  void Accept();
  void ScheduleLeaseSweep();
  // Frees `session`'s orphaned quarantine once the process behind `pidfd` has exited.
  void WatchOrphans(SessionId session, sys::UniqueFd pidfd) {
    auto watch = std::make_unique<asio::posix::stream_descriptor>(io, pidfd.release());
    watch->async_wait(asio::posix::stream_descriptor::wait_read, [this, session](const asio::error_code& ec) {
      if (ec == asio::error::operation_aborted) return;
      store.ReleaseOrphans(session);
      Log().debug("session {}: its process exited; quarantined slots freed", session);
      orphan_watches.erase(session);  // destroys the descriptor after this handler returns
    });
    orphan_watches[session] = std::move(watch);
  }
};

namespace {

void PackSlots(wire::Packer& pk, const std::vector<SlotResult>& slots);

// One client connection: reads frames, answers each in order, owns one Store session.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Server::Impl& server, stream_protocol::socket socket, SessionId id, sys::UniqueFd peer_pidfd)
      : server_(server), socket_(std::move(socket)), session_(id), peer_pidfd_(std::move(peer_pidfd)) {}
  ~Connection() { server_.buffered_bytes -= in_.size(); }

  void Start() {
    server_.store.OpenSession(session_);
    ReadNow();
  }
  void Close() {
    asio::error_code ignored;
    socket_.close(ignored);
  }

 private:
  // Reads what the socket holds, answers every complete frame, then waits for more. The wait
  // comes after a read that found the socket drained (a short read or EAGAIN), so the next
  // request is a new epoll edge. Note: asio re-arms the descriptor (epoll_ctl MOD) for every
  // async_wait, which costs about what async_read_some's speculative recv (EAGAIN after each
  // reply) did; avoiding both would need an epoll registration of our own.
  void ReadNow() {
    const int fd = socket_.native_handle();
    bool eof = false;
    for (;;) {
      if (in_end_ == in_.size() && !GrowInput()) return;
      const size_t room = in_.size() - in_end_;
      auto r = sys::Call([&] { return ::recv(fd, in_.data() + in_end_, room, MSG_DONTWAIT); });
      if (!r.ok()) {
        if (r.err == EAGAIN || r.err == EWOULDBLOCK) break;
        return Finish();
      }
      if (r.value == 0) {
        eof = true;  // handle what came before it (a commit sent just before a close counts), then close
        break;
      }
      in_end_ += static_cast<size_t>(r.value);
      if (static_cast<size_t>(r.value) < room) break;  // drained
    }
    Process();
    if (eof) {
      // With a reply deferred, the frames after it are handled once it is sent; then close.
      if (deferred_) {
        eof_pending_ = true;
        return;
      }
      return Finish();
    }
    if (closing_ || finished_ || deferred_) return;  // FinishDeferredRetrieve reads on
    socket_.async_wait(stream_protocol::socket::wait_read, [self = shared_from_this()](const asio::error_code& ec) {
      if (ec) return self->Finish();
      self->ReadNow();
    });
  }

  // Makes room for more input: the buffer grows only as bytes arrive (never from a length prefix
  // alone), to at most the frame being read, and within the server-wide budget; a connection
  // that would exceed it is answered with an error and closed.
  bool GrowInput() {
    const size_t frame = in_end_ >= wire::kHeaderBytes
                             ? wire::kHeaderBytes + wire::ReadLength(reinterpret_cast<const uint8_t*>(in_.data()))
                             : 0;
    const size_t want = std::max<size_t>({kInputChunk, in_.size() * 2 > frame ? frame : in_.size() * 2, in_end_ + 1});
    const size_t grow = std::max(want, in_.size()) - in_.size();
    if (grow == 0) return true;
    if (server_.buffered_bytes + grow > server_.options.max_buffered_bytes) {
      SendError(0, Status::Full(fmt::format("the server's request buffers are full ({} of {} bytes in use by all "
                                            "connections); this connection is closed, retry later",
                                            server_.buffered_bytes, server_.options.max_buffered_bytes)));
      closing_ = true;
      Flush();
      return false;
    }
    in_.resize(in_.size() + grow);
    server_.buffered_bytes += grow;
    return true;
  }
  // Returns a large buffer's memory once the frame that needed it is handled.
  void ShrinkInput() {
    if (in_.size() <= 4 * kInputChunk || in_end_ > kInputChunk) return;
    std::vector<char> small(kInputChunk);
    std::memcpy(small.data(), in_.data(), in_end_);
    server_.buffered_bytes -= in_.size() - small.size();
    in_.swap(small);
  }
  uint32_t FrameLimit() const {
    return registered_ ? server_.options.max_frame_bytes
                       : std::min(server_.options.max_frame_bytes, kUnregisteredMaxFrame);
  }

  // Answers every complete frame in in_, keeps a partial one for later.
  void Process() {
    size_t pos = 0;
    while (!closing_ && in_end_ - pos >= wire::kHeaderBytes) {
      const uint32_t len = wire::ReadLength(reinterpret_cast<const uint8_t*>(in_.data() + pos));
      if (len == 0 || len > FrameLimit()) {
        // The stream cannot be resynchronised after a bad length: answer once, then hang up.
        SendError(0, Status::Protocol(fmt::format("frame length {} is outside 1..{}{}", len, FrameLimit(),
                                                  registered_ ? "" : " (the limit before 'register')")));
        closing_ = true;
        break;
      }
      if (in_end_ - pos - wire::kHeaderBytes < len) break;
      Handle(std::string_view(in_.data() + pos + wire::kHeaderBytes, len));
      pos += wire::kHeaderBytes + len;
      if (deferred_) break;  // replies keep request order: the rest waits for this one
    }
    if (pos > 0) {
      std::memmove(in_.data(), in_.data() + pos, in_end_ - pos);
      in_end_ -= pos;
      ShrinkInput();
    }
    Flush();
  }

  // A prepare_retrieve whose disk loads have settled: pin and answer, then serve what queued up.
  void FinishDeferredRetrieve(uint64_t id, const std::vector<std::string>& keys,
                              const std::vector<std::string>& pinned) {
    if (!finished_) {
      std::vector<std::string_view> views(keys.begin(), keys.end());
      const size_t map_at = StartReply(id);
      wire::Packer pk(reply_.sbuf());
      wire::PackStr(pk, "slots");
      PackSlots(pk, server_.store.PrepareRetrieve(session_, views, Clock::now()));
      EndReply(map_at, 1);
    }
    for (const std::string& k : pinned) server_.store.IoUnpin(k);
    if (finished_) return;
    deferred_ = false;
    Process();  // frames that arrived behind the deferred one
    if (deferred_ || closing_ || finished_) return;
    if (eof_pending_) return Finish();
    ReadNow();
  }

  void Finish() {
    if (finished_) return;
    finished_ = true;
    // A client that closed its connection while its process lives on may still be writing into
    // slots whose reservation expired: those stay quarantined until the process exits.
    const bool may_still_run = peer_pidfd_.valid() && !ProcessExited(peer_pidfd_);
    if (server_.store.CloseSession(session_, may_still_run)) server_.WatchOrphans(session_, std::move(peer_pidfd_));
    server_.connections.erase(session_);
    Log().debug("session {} ({}) closed", session_, instance_);
    Close();
  }

  void Handle(std::string_view body);
  // A reply {"id", "ok": true, ...fields} is built in reply_: StartReply packs the head and
  // returns where the map header is; EndReply patches the field count and queues the frame.
  size_t StartReply(uint64_t id);
  void EndReply(size_t map_at, int n_fields);
  Status Dispatch(std::string_view op, const wire::MapReader& req, wire::Packer& pk, int* fields);

  void SendError(uint64_t id, const Status& s, std::span<const uint32_t> expired = {}) {
    SendError(id, StatusCodeName(s.code()), s.message(), expired);
  }
  // `expired`: with code Expired, the indices of the request's keys whose lease had expired.
  void SendError(uint64_t id, std::string_view code, std::string_view message, std::span<const uint32_t> expired = {}) {
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
    Queue(reply_.Finish());
  }

  void Queue(std::string_view frame) { out_pending_.append(frame); }

  // Sends the queued replies: a direct non-blocking send first (the usual case: a small reply
  // into an empty socket buffer), asio's async_write for whatever does not fit.
  void Flush() {
    if (writing_ || out_pending_.empty()) {
      if (!writing_ && closing_) Finish();
      return;
    }
    size_t sent = 0;
    while (sent < out_pending_.size()) {
      auto r = sys::Call([&] {
        return ::send(socket_.native_handle(), out_pending_.data() + sent, out_pending_.size() - sent,
                      MSG_DONTWAIT | MSG_NOSIGNAL);
      });
      if (!r.ok()) {
        if (r.err == EAGAIN || r.err == EWOULDBLOCK) break;
        return Finish();
      }
      sent += static_cast<size_t>(r.value);
    }
    if (sent == out_pending_.size()) {
      out_pending_.clear();
      if (closing_) Finish();
      return;
    }
    writing_ = true;
    out_flight_.assign(out_pending_, sent);
    out_pending_.clear();
    asio::async_write(socket_, asio::buffer(out_flight_),
                      [self = shared_from_this()](const asio::error_code& ec, size_t) {
                        self->writing_ = false;
                        if (ec) return self->Finish();
                        self->out_flight_.clear();
                        self->Flush();
                      });
  }

  // Prefixes each key with the namespace into one reused buffer: no allocation per key.
  const std::vector<std::string_view>& Namespaced(const std::vector<std::string_view>& keys) {
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

  static constexpr size_t kInputChunk = 64 * 1024;

  Server::Impl& server_;
  stream_protocol::socket socket_;
  SessionId session_;
  sys::UniqueFd peer_pidfd_;  // the client process, to learn when it has exited
  std::string instance_;
  std::string prefix_;  // namespace prefix; empty until registered
  bool registered_ = false;
  std::vector<char> in_;
  size_t in_end_ = 0;
  std::string out_pending_, out_flight_;
  // Per-request scratch, reused so a request allocates nothing in the steady state.
  msgpack::zone zone_;
  msgpack::sbuffer fields_buf_;
  wire::FrameBuffer reply_;
  std::vector<std::string_view> raw_keys_, full_keys_;
  std::vector<uint64_t> sizes_;
  std::string key_arena_;
  bool prev_failed_ = false;  // the outcome of the previous request, for `chained` (protocol 2)
  uint32_t protocol_ = 1;     // agreed at registration
  bool writing_ = false;
  bool closing_ = false;
  bool finished_ = false;
  bool deferred_ = false;          // a reply waits for L2 loads; frames after it are not handled yet
  bool eof_pending_ = false;       // the peer closed while a reply was deferred
  uint64_t current_id_ = 0;        // id of the request being dispatched
  std::vector<uint32_t> expired_;  // indices of keys whose lease expired, for an Expired error
};

void PackSlots(wire::Packer& pk, const std::vector<SlotResult>& slots) {
  pk.pack_array(static_cast<uint32_t>(slots.size()));
  for (const SlotResult& r : slots) {
    pk.pack_array(3);
    wire::PackStr(pk, SlotOutcomeName(r.outcome));
    pk.pack_uint64(r.offset);
    pk.pack_uint64(r.length);
  }
}

void Connection::Handle(std::string_view body) {
  msgpack::object obj;
  // Every container count is bounded before the unpacker allocates for it: by the frame (each
  // element takes at least one byte) and by the protocol's limits.
  const auto frame_bytes = static_cast<uint32_t>(body.size());
  const msgpack::unpack_limit limits(std::min(frame_bytes, wire::kMaxBatchKeys), std::min(frame_bytes, kMaxMapFields),
                                     frame_bytes, frame_bytes, 0, kMaxNesting);
  try {
    size_t used = 0;
    obj = wire::UnpackReferenced(zone_, body, limits, &used);  // points into in_, which outlives this call
    if (used != body.size()) {
      return SendError(0, Status::Protocol(fmt::format("{} bytes follow the request's msgpack value in its frame",
                                                       body.size() - used)));
    }
  } catch (const msgpack::size_overflow& e) {
    return SendError(0, Status::Protocol(fmt::format(
                            "request exceeds a protocol limit ({}): arrays of at most {} elements, maps of at most {} "
                            "fields, nesting of at most {} levels",
                            e.what(), wire::kMaxBatchKeys, kMaxMapFields, kMaxNesting)));
  } catch (const std::exception& e) {
    return SendError(0, Status::Protocol(fmt::format("request is not valid msgpack: {}", e.what())));
  }
  auto req = wire::MapReader::From(obj);
  if (!req.ok()) return SendError(0, req.status());
  // The id is required: a reply to a guessed id could be taken for another request's answer.
  auto id_field = req->U64("id");
  if (!id_field.ok()) return SendError(0, id_field.status());
  const uint64_t id = *id_field;
  auto op = req->Str("op");
  if (!op.ok()) return SendError(id, op.status());
  if (protocol_ >= 2) {
    auto chained = req->Bool("chained", false);
    if (!chained.ok()) return SendError(id, chained.status().WithContext(*op));
    if (*chained && prev_failed_) {
      // Stays failed: every later chained request is skipped as well.
      return SendError(id, wire::kNotExecutedCode,
                       fmt::format("{} was not executed: an earlier request of this connection failed", *op));
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
  if (!s.ok()) return SendError(id, s.WithContext(Printable(*op)), expired_);
  if (deferred_) return;  // answered by FinishDeferredRetrieve; what Dispatch packed is dropped
  EndReply(map_at, n_fields);
}

size_t Connection::StartReply(uint64_t id) {
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

void Connection::EndReply(size_t map_at, int n_fields) {
  const auto count = static_cast<uint32_t>(2 + n_fields);
  auto* m = reinterpret_cast<uint8_t*>(reply_.sbuf().data() + map_at + 1);  // big-endian, as msgpack wants
  m[0] = static_cast<uint8_t>(count >> 24);
  m[1] = static_cast<uint8_t>(count >> 16);
  m[2] = static_cast<uint8_t>(count >> 8);
  m[3] = static_cast<uint8_t>(count);
  prev_failed_ = false;
  Queue(reply_.Finish());
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

Status Connection::Dispatch(std::string_view op, const wire::MapReader& req, wire::Packer& pk, int* fields) {
  auto field = [&](std::string_view name) {
    wire::PackStr(pk, name);
    ++*fields;
  };
  const auto now = Clock::now();
  Server::Impl& srv = server_;
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
    wire::PackStr(pk, srv.segment.name());
    field("pool_size");
    pk.pack_uint64(srv.segment.size());
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
    wire::PackStr(pk, srv.segment.name());
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
      std::vector<std::string> owned(keys.begin(), keys.end());
      srv.disk->Load(owned, [self = shared_from_this(), id = current_id_, owned](std::vector<std::string> pinned) {
        self->FinishDeferredRetrieve(id, owned, pinned);
      });
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
        if (out[i] != SlotOutcome::kBusy && srv.disk->Remove(keys[i])) out[i] = SlotOutcome::kSlot;
      }
    }
    field("results");
    pk.pack_array(static_cast<uint32_t>(out.size()));
    for (SlotOutcome o : out) wire::PackStr(pk, o == SlotOutcome::kSlot ? "removed" : SlotOutcomeName(o));
    return Status::Ok();
  }
  return Status::InvalidArgument("unknown operation");
}

// The peer's credentials, or nullopt when the kernel will not say.
std::optional<ucred> PeerCredentials(int fd) {
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return std::nullopt;
  return cred;
}

// Whether a peer may use the server: its own uid, root, or with mode 0660 a member of the
// server's group, also through a supplementary group (the segment's 0660 admits those too, so
// the two gates agree).
bool PeerAllowed(int fd, const ucred& cred, uint32_t mode) {
  if (cred.uid == ::geteuid() || cred.uid == 0) return true;
  if ((mode & 0060) == 0) return false;
  if (cred.gid == ::getegid()) return true;
  std::vector<gid_t> groups(64);
  for (;;) {
    auto len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      return std::find(groups.begin(), groups.end(), ::getegid()) != groups.end();
    }
    if (errno != ERANGE || groups.size() >= 65536) return false;
    groups.resize(len / sizeof(gid_t) + 1);
  }
}

}  // namespace

void Server::Impl::Accept() {
  acceptor.async_accept([this](const asio::error_code& ec, stream_protocol::socket socket) {
    if (ec) {
      if (ec != asio::error::operation_aborted) Accept();
      return;
    }
    const std::optional<ucred> peer = PeerCredentials(socket.native_handle());
    if (!peer || !PeerAllowed(socket.native_handle(), *peer, options.socket_mode)) {
      Log().warn("refused a connection from uid {} (not this server's user{})", peer ? peer->uid : -1u,
                 options.socket_mode == 0660 ? " or group" : "");
    } else {
      const SessionId id = next_session++;
      auto conn = std::make_shared<Connection>(*this, std::move(socket), id, OpenPidfd(peer->pid));
      connections.emplace(id, conn);
      conn->Start();
    }
    Accept();
  });
}

void Server::Impl::ScheduleLeaseSweep() {
  const auto period = std::clamp(std::min(options.reserve_ttl, options.pin_ttl) / 4, std::chrono::milliseconds(10),
                                 std::chrono::milliseconds(1000));
  lease_timer.expires_after(period);
  lease_timer.async_wait([this](const asio::error_code& ec) {
    if (ec) return;
    if (size_t n = store.ExpireLeases(Clock::now()); n > 0) Log().warn("expired {} lease(s) past their TTL", n);
    ScheduleLeaseSweep();
  });
}

namespace {

// Binds the control socket, replacing a stale socket file but never a live server's.
Status BindSocket(stream_protocol::acceptor& acceptor, const std::string& path, uint32_t mode) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Status::InvalidArgument(
        fmt::format("socket path '{}' is longer than {} bytes", path, sizeof(sockaddr_un::sun_path) - 1));
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::AlreadyExists(fmt::format("'{}' exists and is not a socket; refusing to replace it", path));
    }
    asio::io_context probe_io;
    stream_protocol::socket probe(probe_io);
    asio::error_code ec;
    probe.connect(stream_protocol::endpoint(path), ec);
    if (!ec) return Status::AlreadyExists(fmt::format("a server is already listening on '{}'", path));
    ::unlink(path.c_str());  // a dead server's socket
  }
  asio::error_code ec;
  acceptor.open(stream_protocol(), ec);
  if (!ec) acceptor.bind(stream_protocol::endpoint(path), ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::IoError(fmt::format("listening on '{}': {}", path, ec.message()));
  if (::chmod(path.c_str(), mode) != 0) return Status::FromErrno(fmt::format("chmod '{}'", path), errno);
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  if (options.socket_mode != 0600 && options.socket_mode != 0660) {
    return Status::InvalidArgument(fmt::format("socket mode {:o} must be 600 or 660", options.socket_mode));
  }
  if (options.socket_path.empty()) return Status::InvalidArgument("a socket path is required");
  if (options.clean_stale) {
    auto removed = RemoveStaleSegments(false);
    if (!removed.ok()) Log().warn("stale segment cleanup failed: {}", removed.status().ToString());
  }
  SegmentCreateOptions seg_opts;
  seg_opts.name = options.shm_name;
  seg_opts.size = options.pool_size;
  seg_opts.prefault = options.prefault;
  seg_opts.mode = options.socket_mode;
  auto segment = SharedSegment::Create(seg_opts);
  if (!segment.ok()) return segment.status();
  StoreOptions store_opts;
  store_opts.pool_size = segment->size();
  store_opts.alignment = kSlotAlignment;
  store_opts.reserve_ttl = options.reserve_ttl;
  store_opts.pin_ttl = options.pin_ttl;
  store_opts.track_dirty = options.disk.has_value();
  auto store = Store::Create(store_opts);
  if (!store.ok()) return store.status();

  auto impl = std::make_unique<Impl>(options, std::move(segment).value(), std::move(store).value());
  std::random_device rd;
  impl->generation = (uint64_t{rd()} << 32 | rd()) | 1;  // never 0: 0 means "unknown" to clients
  if (options.disk) {
    auto disk = DiskTier::Start(impl->io, impl->store, impl->segment.name(), impl->segment.size(), *options.disk);
    if (!disk.ok()) return disk.status().WithContext("L2 disk tier");
    impl->disk = std::move(disk).value();
  }
  SHMKV_RETURN_IF_ERROR(PrepareSocketDirectory(options.socket_path, options.socket_mode));
  SHMKV_RETURN_IF_ERROR(BindSocket(impl->acceptor, options.socket_path, options.socket_mode));
  impl->socket_bound = true;
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

void Server::Run() {
  Impl& s = *impl_;
  s.signals.async_wait([this](const asio::error_code& ec, int sig) {
    if (!ec) {
      Log().info("signal {}: shutting down", sig);
      Stop();
    }
  });
  s.Accept();
  s.ScheduleLeaseSweep();
  s.io.run();
}

void Server::Stop() {
  asio::post(impl_->io, [this] {
    Impl& s = *impl_;
    asio::error_code ignored;
    s.acceptor.close(ignored);
    s.signals.cancel(ignored);
    s.lease_timer.cancel();
    for (auto& [id, weak] : s.connections) {
      if (auto c = weak.lock()) c->Close();
    }
    s.orphan_watches.clear();
    if (!s.disk) return s.io.stop();
    // Write-through promises that committed objects reach the disk: let the queue drain first.
    s.disk->Drain(std::chrono::seconds(5), [&s] { s.io.stop(); });
  });
}

const std::string& Server::segment_name() const {
  return impl_->segment.name();
}
uint64_t Server::pool_size() const {
  return impl_->segment.size();
}
uint64_t Server::generation() const {
  return impl_->generation;
}

}  // namespace shmkv
