#include "shmkv/client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "client/peer_check.h"
#include "common/log.h"
#include "common/syscall.h"
#include "platform/shm.h"
#include "protocol/messages.h"
#include "protocol/wire.h"
#include "shmkv/version.h"

namespace shmkv {

namespace {

// What to do about a failed connect: a missing socket means no server; a refused permission
// means the socket belongs to another user or group (the fix is on the server's side).
std::string ConnectHint(const std::string& path, int err) {
  if (err == EACCES || err == EPERM) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) {
      return fmt::format(
          " (the socket belongs to uid {} gid {} with mode {:o}, and this process is uid {} gid {}: "
          "start the server with --socket-mode 660 and add this user to its group, or run as its user)",
          st.st_uid, st.st_gid, st.st_mode & 0777, ::geteuid(), ::getegid());
    }
    return " (this user may not reach the socket: check the modes of its directories)";
  }
  if (err == ENOENT || err == ECONNREFUSED) return " (is the server running, with this --socket?)";
  return "";
}

using Deadline = std::chrono::steady_clock::time_point;

// A Unix-socket connection whose every read and write honours a deadline. Replies are read
// with a blocking recv bounded by SO_RCVTIMEO, into one reused buffer, as much as the socket
// holds per call: a round trip costs one send and usually one recv, and the wait is the kernel's
// plain socket wait (waiting in poll() first costs a measurable extra wakeup on small VMs, see
// docs/performance-server.md). Sends use MSG_DONTWAIT and poll() only when the socket is full.
class Channel {
 public:
  static Result<Channel> Open(const std::string& path, Deadline deadline) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path)
      return Status::InvalidArgument(fmt::format("socket path '{}' too long", path));
    std::memcpy(addr.sun_path, path.data(), path.size());
    auto fd = sys::Call([] { return ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0); });
    if (!fd.ok()) return fd.ToStatus("socket");
    sys::UniqueFd sock(fd.value);
    auto rc = sys::Call([&] { return ::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr); });
    if (!rc.ok() && rc.err != EINPROGRESS && rc.err != EAGAIN) {
      return Status(rc.err == ENOENT || rc.err == ECONNREFUSED ? StatusCode::kDisconnected : StatusCode::kIoError,
                    fmt::format("connecting to shmkv-server at '{}': {}{}", path, std::strerror(rc.err),
                                ConnectHint(path, rc.err)),
                    rc.err);
    }
    Channel ch(std::move(sock));
    if (!rc.ok()) {
      SHMKV_RETURN_IF_ERROR(ch.Wait(POLLOUT, deadline));
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(ch.fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) return Status::FromErrno(fmt::format("connecting to '{}'", path), err);
    }
    // Before a byte is sent: is this the server of our user (or root), and not a squatter's?
    auto peer = client::PeerUid(ch.fd_.get());
    if (!peer.ok()) return peer.status().WithContext(fmt::format("checking the server at '{}'", path));
    SHMKV_RETURN_IF_ERROR(client::CheckServerUid(path, *peer, ::geteuid()));
    ch.server_uid_ = *peer;
    // Blocking from here on: recv waits in the kernel, bounded by SO_RCVTIMEO (SetRecvTimeout).
    const int flags = ::fcntl(ch.fd_.get(), F_GETFL);
    if (flags < 0 || ::fcntl(ch.fd_.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
      return Status::FromErrno("fcntl(O_NONBLOCK)", errno);
    }
    return ch;
  }

  // The effective uid the server runs as (checked at Open).
  uid_t server_uid() const { return server_uid_; }

  Status WriteAll(std::string_view data, Deadline deadline) {
    while (!data.empty()) {
      auto n = sys::Call([&] { return ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT); });
      if (n.ok()) {
        data.remove_prefix(static_cast<size_t>(n.value));
        continue;
      }
      if (n.err != EAGAIN) return Lost(n.err);
      SHMKV_RETURN_IF_ERROR(Wait(POLLOUT, deadline));
    }
    return Status::Ok();
  }

  // Reads one frame; the body stays valid until the next ReadFrame.
  Result<std::string_view> ReadFrame(Deadline deadline) {
    for (;;) {
      const size_t have = end_ - pos_;
      size_t need = wire::kHeaderBytes;
      if (have >= wire::kHeaderBytes) {
        const uint32_t len = wire::ReadLength(reinterpret_cast<const uint8_t*>(buf_.data() + pos_));
        if (len == 0 || len > wire::kDefaultMaxFrame) {
          return Status::Protocol(fmt::format("server sent a frame of {} bytes", len));
        }
        need = wire::kHeaderBytes + len;
        if (have >= need) {
          std::string_view body(buf_.data() + pos_ + wire::kHeaderBytes, len);
          pos_ += need;
          return body;
        }
      }
      // Compact (the previous frame's body is no longer in use), then make room for this frame.
      if (pos_ > 0) {
        std::memmove(buf_.data(), buf_.data() + pos_, have);
        end_ = have;
        pos_ = 0;
      }
      if (buf_.size() < std::max<size_t>(need, kMinRead) + end_) buf_.resize(std::max<size_t>(need, kMinRead) + end_);
      SHMKV_RETURN_IF_ERROR(Fill(deadline));
    }
  }

 private:
  static constexpr size_t kMinRead = 16 * 1024;

  explicit Channel(sys::UniqueFd fd) : fd_(std::move(fd)) {}

  // One blocking recv of as much as the socket holds (and the buffer takes).
  Status Fill(Deadline deadline) {
    for (;;) {
      SHMKV_RETURN_IF_ERROR(SetRecvTimeout(deadline));
      auto r = sys::Call([&] { return ::recv(fd_.get(), buf_.data() + end_, buf_.size() - end_, 0); });
      if (r.ok()) {
        if (r.value == 0) return Status::Disconnected("the server closed the connection");
        end_ += static_cast<size_t>(r.value);
        return Status::Ok();
      }
      if (r.err != EAGAIN && r.err != EWOULDBLOCK) return Lost(r.err);
      if (std::chrono::steady_clock::now() >= deadline) return Status::Timeout("deadline expired");
    }
  }

  // Bounds the next blocking recv by the deadline. The option is rewritten only when the time left
  // is more than 1 ms below what is set, so a call usually costs no extra syscall and a recv
  // overshoots its deadline by at most 1 ms.
  Status SetRecvTimeout(Deadline deadline) {
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Status::Timeout("deadline expired");
    if (left + std::chrono::milliseconds(1) > recv_timeout_ && recv_timeout_.count() > 0) return Status::Ok();
    // Round up a little so the socket timeout fires after the deadline, not just before it.
    left += std::chrono::microseconds(100);
    const timeval tv{static_cast<time_t>(left.count() / 1000000), static_cast<suseconds_t>(left.count() % 1000000)};
    if (::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
      return Status::FromErrno("setsockopt(SO_RCVTIMEO)", errno);
    }
    recv_timeout_ = left;
    return Status::Ok();
  }

  Status Wait(short events, Deadline deadline) {
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return Status::Timeout("deadline expired");
      pollfd p{fd_.get(), events, 0};
      auto r =
          sys::Call([&] { return ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count() + 1, INT32_MAX))); });
      if (!r.ok()) return r.ToStatus("poll");
      if (r.value > 0) return Status::Ok();
    }
  }

  static Status Lost(int err) {
    return Status(StatusCode::kDisconnected, fmt::format("connection lost: {}", std::strerror(err)), err);
  }

  sys::UniqueFd fd_;
  uid_t server_uid_ = 0;
  std::vector<char> buf_;
  size_t pos_ = 0, end_ = 0;  // unread bytes: [pos_, end_)
  std::chrono::microseconds recv_timeout_{0};
};

// The reused memory of one connection's requests and replies.
struct Scratch {
  wire::FrameBuffer request;
  msgpack::zone zone;  // the last reply's objects; they point into the channel's buffer
  protocol::DecodeScratch decode;
};

// Decodes the reply to request `id`; valid until the next read of the channel. An error reply
// becomes its Status; `head` says whether the reply was one (the stream is in step) and carries
// an Expired error's indices.
Result<wire::MapReader> ParseReply(std::string_view frame, Scratch& scratch, uint64_t id, protocol::ReplyHead* head) {
  msgpack::object obj;
  // Bounded like the server's requests (a stats map may hold more fields than a request).
  SHMKV_RETURN_IF_ERROR(protocol::UnpackFrame(scratch.zone, frame, "reply", &obj, /*max_map_fields=*/4096));
  auto reader = wire::MapReader::From(obj);
  if (!reader.ok()) return reader.status();
  SHMKV_RETURN_IF_ERROR(protocol::DecodeReplyHead(*reader, id, head));
  return reader;
}

StatsMap ToStatsMap(const protocol::StatsReply& reply) {
  StatsMap out;
  for (const auto& [name, value] : reply.counters) out.emplace(name, value);
  return out;
}

// A posted request (protocol 2) whose reply has not been read yet.
struct Posted {
  uint64_t id = 0;
  std::string_view op;  // a string literal
  size_t keys = 0;
};

// Stops reading pending replies after this many posts: the next post waits for them first.
constexpr size_t kMaxPosted = 64;

// Whether a call may be sent again after its connection was found lost (see Impl::Call).
enum class Retry : uint8_t { kNo, kOnce };

// The directory to attach the segment from: the reported path's, whose last component must be
// the reported name (an absolute path); empty when the server reported none (older servers: the
// segment is shm_name in /dev/shm). The segment's owner and mode are checked at attach as always.
Result<std::string> SegmentDirOf(const RegistrationInfo& info) {
  if (info.shm_path.empty()) return std::string();
  const std::string_view path = info.shm_path;
  const size_t slash = path.rfind('/');
  if (!path.starts_with('/') || slash == std::string_view::npos || path.substr(slash + 1) != info.shm_name) {
    return Status::Protocol(fmt::format("register reply: shm_path '{}' is not an absolute path ending in shm_name '{}'",
                                        path, info.shm_name));
  }
  const std::string_view dir = slash == 0 ? std::string_view("/") : path.substr(0, slash);
  // shm_open's own directory: attached as a default segment (the portable build has no other).
  if (dir == platform::DefaultSegmentDir()) return std::string();
  return std::string(dir);
}

}  // namespace

struct Client::Impl {
  ClientOptions options;
  std::optional<Channel> channel;
  RegistrationInfo info;
  std::shared_ptr<const SharedSegment> mapping;
  uint64_t next_id = 1;
  Scratch scratch;
  std::vector<Posted> posted;          // in request order
  std::vector<uint32_t> last_expired;  // see Client::last_expired()

  ~Impl() {
    // A posted commit's error must reach someone: the caller should Sync() first; if it did
    // not, the outcome is at least logged.
    if (channel && !posted.empty()) {
      if (Status s = Sync(); !s.ok()) Log().error("instance '{}': {}", options.instance_id, s.message());
    }
  }

  Deadline NewDeadline() const { return std::chrono::steady_clock::now() + options.timeout; }

  // Connects and registers when not connected; maps the segment when it changed. A register
  // that loses its connection (the server went away between accept and reply, e.g. while being
  // restarted) is tried once more: it changes nothing the new server could hold against us.
  Status Ensure(Deadline deadline) {
    if (channel) return Status::Ok();
    Status s = Register(deadline);
    if (s.code() == StatusCode::kDisconnected) {
      Log().debug("instance '{}': register lost its connection ({}); retrying once", options.instance_id, s.message());
      s = Register(deadline);
    }
    return s;
  }

  Status Register(Deadline deadline) {
    auto ch = Channel::Open(options.socket_path, deadline);
    if (!ch.ok()) return ch.status();
    const uint64_t id = next_id++;
    protocol::RegisterRequest request;
    request.instance_id = options.instance_id;
    request.client_version = kVersionString;
    request.protocol = wire::kProtocolVersion;  // the highest version this client speaks; the server picks
    request.ns = {options.ns.model, options.ns.dtype,      options.ns.layout,
                  options.ns.salt,  options.ns.world_size, options.ns.rank};
    SHMKV_RETURN_IF_ERROR(ch->WriteAll(protocol::EncodeRequest(scratch.request, id, request), deadline));
    auto frame = ch->ReadFrame(deadline);
    if (!frame.ok()) return frame.status();
    protocol::ReplyHead head;
    auto reply = ParseReply(*frame, scratch, id, &head);
    if (!reply.ok()) return reply.status();
    protocol::RegisterReply r;
    SHMKV_RETURN_IF_ERROR(protocol::Unpack(*reply, r));
    RegistrationInfo next;
    // A version-1 server ignores the offer and answers 1; this client speaks both.
    if (r.protocol < wire::kMinProtocolVersion || r.protocol > wire::kProtocolVersion) {
      return Status::Protocol(fmt::format("server speaks protocol {}, this client {}..{}", r.protocol,
                                          wire::kMinProtocolVersion, wire::kProtocolVersion));
    }
    next = {r.session,    std::string(r.shm_name), r.pool_size, r.alignment, std::string(r.server_version), r.protocol,
            r.generation, std::string(r.shm_path)};
    auto dir = SegmentDirOf(next);
    if (!dir.ok()) return dir.status();
    if (!mapping || next.generation != info.generation || next.shm_name != info.shm_name ||
        next.shm_path != info.shm_path) {
      if (mapping) {
        Log().warn("instance '{}': server restarted (generation {} -> {}); mapping segment '{}'", options.instance_id,
                   info.generation, next.generation, next.shm_name);
      }
      SegmentAttachOptions ao;
      ao.size = next.pool_size;
      ao.pin_with_cuda = options.pin_with_cuda;
      ao.expected_owner = ch->server_uid();  // and not world-accessible: see SegmentAttachOptions
      ao.dir = *std::move(dir);
      auto seg = SharedSegment::Attach(next.shm_name, ao);
      if (!seg.ok()) return seg.status();
      // Old batches keep the previous mapping alive through their own shared_ptr.
      mapping = std::make_shared<const SharedSegment>(std::move(seg).value());
    }
    info = std::move(next);
    channel = std::move(ch).value();
    return Status::Ok();
  }

  // Names the posted requests whose replies a dropped connection took with it.
  std::string LostPosted() const {
    if (posted.empty()) return "";
    std::string ops;
    for (const Posted& p : posted) ops += fmt::format("{}{} ({} keys)", ops.empty() ? "" : ", ", p.op, p.keys);
    return fmt::format("; the outcome of {} posted request(s) is unknown: {}", posted.size(), ops);
  }

  Status Fail(std::string_view op, const Status& s) {
    if (s.code() == StatusCode::kTimeout) {
      const std::string lost = LostPosted();
      channel.reset();  // a late reply must not answer the next call
      posted.clear();
      return Status::Timeout(fmt::format("{} timed out after {} ms (instance '{}', socket '{}'){}", op,
                                         options.timeout.count(), options.instance_id, options.socket_path, lost));
    }
    if (s.code() == StatusCode::kDisconnected || s.code() == StatusCode::kProtocol) {
      const std::string lost = LostPosted();
      channel.reset();
      posted.clear();
      return Status(
          s.code(),
          fmt::format("{} (instance '{}'): {}{}; the next call reconnects", op, options.instance_id, s.message(), lost),
          s.sys_errno());
    }
    // Server messages name their operation already ("commit_store: key #2 ...").
    if (s.message().starts_with(fmt::format("{}: ", op))) return s;
    return s.WithContext(op);
  }

  // Reads the replies of every posted request. Returns the first failure, naming the request;
  // the posted requests chained after it were not executed, which the message says too. Sets
  // *broken when the connection is unusable (lost, timed out, or out of step).
  Status ReadPosted(Deadline deadline, bool* broken) {
    Status first;
    size_t skipped = 0;
    *broken = false;
    while (!posted.empty()) {
      const Posted p = posted.front();
      auto frame = channel->ReadFrame(deadline);
      if (!frame.ok()) {
        *broken = true;
        return frame.status();  // `posted` keeps the unanswered ones: Fail() names them
      }
      protocol::ReplyHead kind;
      auto r = ParseReply(*frame, scratch, p.id, &kind);
      if (!kind.answered) {
        *broken = true;
        return r.status();
      }
      posted.erase(posted.begin());
      if (r.ok()) continue;
      if (first.ok()) {
        first = r.status().WithContext(fmt::format("posted {} (request {})", p.op, p.id));
        last_expired = std::move(kind.expired);
      } else {
        ++skipped;
      }
    }
    if (!first.ok() && skipped > 0) {
      return Status(first.code(),
                    fmt::format("{}; {} later posted request(s) were not executed", first.message(), skipped));
    }
    return first;
  }

  Status Sync() {
    last_expired.clear();
    if (posted.empty()) return Status::Ok();
    if (!channel) return Status::Disconnected("not connected" + LostPosted());
    bool broken = false;
    Status s = ReadPosted(NewDeadline(), &broken);
    return broken ? Fail("sync", s) : s;
  }

  // Sends one request and returns its decoded reply (valid until the next call). With `post`
  // (and protocol 2) it returns at once with no reply: the reply is read by the next call.
  // Requests sent while others are posted carry `chained`, so the server runs them only if the
  // posted ones succeeded, and a posted failure is returned here instead of this call's result.
  //
  // kRetryOnce (requests that change nothing, so running them twice is harmless): when the
  // connection this call found open turns out to be lost (the server restarted since the last
  // call), reconnect, re-register and send it once more, within the same deadline. Never when
  // posted replies were lost with the connection: their loss must reach the caller.
  template <typename Request>
  Result<wire::MapReader> Call(const Request& request, Retry retry) {
    last_expired.clear();
    const std::string_view op = protocol::OpName(Request::kOp);
    const Deadline deadline = NewDeadline();
    const bool was_connected = channel.has_value();
    const bool had_posted = !posted.empty();
    auto r = CallOnce(request, /*post=*/false, 0, deadline);
    if (retry == Retry::kOnce && !r.ok() && r.status().code() == StatusCode::kDisconnected && was_connected &&
        !had_posted && !channel) {
      Log().info("instance '{}': {} lost the connection (server restarted?); reconnecting and retrying once",
                 options.instance_id, op);
      return CallOnce(request, /*post=*/false, 0, deadline);
    }
    return r;
  }

  template <typename Request>
  Status Post(const Request& request) {
    last_expired.clear();
    return CallOnce(request, /*post=*/true, request.keys.size(), NewDeadline()).status();
  }

  template <typename Request>
  Result<wire::MapReader> CallOnce(const Request& request, bool post, size_t n_keys, Deadline deadline) {
    const std::string_view op = protocol::OpName(Request::kOp);
    if (Status s = Ensure(deadline); !s.ok()) return Fail(op, s);
    post = post && info.protocol >= 2;
    if (post && posted.size() >= kMaxPosted) {
      bool broken = false;
      if (Status s = ReadPosted(deadline, &broken); !s.ok()) return broken ? Fail(op, s) : s;
    }
    const bool chained = !posted.empty();
    const uint64_t id = next_id++;
    const std::string_view req = protocol::EncodeRequest(scratch.request, id, request, chained);
    if (Status s = channel->WriteAll(req, deadline); !s.ok()) return Fail(op, s);
    if (post) {
      posted.push_back({id, op, n_keys});
      return wire::MapReader::Empty();
    }
    if (chained) {
      bool broken = false;
      Status earlier = ReadPosted(deadline, &broken);
      if (!earlier.ok()) {
        if (broken) return Fail(op, earlier);
        // This request was chained after the failure, so the server did not run it: read its
        // NotExecuted reply to keep the stream in step, and report the failure.
        auto frame = channel->ReadFrame(deadline);
        if (!frame.ok()) return Fail(op, frame.status());
        return Status(earlier.code(), fmt::format("{}; {} was not executed", earlier.message(), op));
      }
    }
    auto frame = channel->ReadFrame(deadline);
    if (!frame.ok()) return Fail(op, frame.status());
    protocol::ReplyHead kind;
    auto r = ParseReply(*frame, scratch, id, &kind);
    if (!r.ok()) {
      last_expired = std::move(kind.expired);
      return Fail(op, r.status());
    }
    return r;
  }

  // Unpacks a prepare_* reply and points each granted slot into the mapping.
  Result<SlotBatch> Slots(const Result<wire::MapReader>& r) {
    if (!r.ok()) return r.status();
    protocol::SlotsReply reply;
    SHMKV_RETURN_IF_ERROR(protocol::Unpack(*r, reply, scratch.decode));
    SlotBatch batch;
    batch.mapping = mapping;
    batch.slots.reserve(reply.slots.size());
    for (const SlotResult& g : reply.slots) {
      Slot s{g.status, g.offset, g.length, {}};
      if (s.status == SlotStatus::kOk) {
        if (s.length > mapping->size() || s.offset > mapping->size() - s.length) {
          return Status::Protocol(fmt::format("slot [{}, +{}) lies outside the pool", s.offset, s.length));
        }
        s.bytes = {mapping->data() + s.offset, static_cast<size_t>(s.length)};
      }
      batch.slots.push_back(s);
    }
    return batch;
  }

  // Unpacks a reply of type Reply (one without lists).
  template <typename Reply>
  Result<Reply> As(const Result<wire::MapReader>& r) {
    if (!r.ok()) return r.status();
    Reply reply;
    SHMKV_RETURN_IF_ERROR(protocol::Unpack(*r, reply));
    return reply;
  }
};

Result<Client> Client::Connect(const ClientOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (impl->options.instance_id.empty()) impl->options.instance_id = fmt::format("pid-{}", ::getpid());
  if (options.timeout.count() <= 0) return Status::InvalidArgument("client timeout must be positive");
  if (Status s = impl->Ensure(impl->NewDeadline()); !s.ok()) {
    return s.WithContext(fmt::format("connect (instance '{}')", impl->options.instance_id));
  }
  return Client(std::move(impl));
}

Result<StatsMap> Client::QueryStats(const std::string& socket_path, std::chrono::milliseconds timeout) {
  const Deadline deadline = std::chrono::steady_clock::now() + timeout;
  auto ch = Channel::Open(socket_path, deadline);
  if (!ch.ok()) return ch.status();
  Scratch scratch;
  SHMKV_RETURN_IF_ERROR(ch->WriteAll(protocol::EncodeRequest(scratch.request, 1, protocol::StatsRequest{}), deadline));
  auto frame = ch->ReadFrame(deadline);
  if (!frame.ok()) return frame.status().WithContext("stats");
  protocol::ReplyHead head;
  auto r = ParseReply(*frame, scratch, 1, &head);
  if (!r.ok()) return r.status().WithContext("stats");
  protocol::StatsReply reply;
  SHMKV_RETURN_IF_ERROR(protocol::Unpack(*r, reply, scratch.decode));
  return ToStatsMap(reply);
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;
Client::~Client() = default;

const RegistrationInfo& Client::info() const {
  return impl_->info;
}
std::shared_ptr<const SharedSegment> Client::mapping() const {
  return impl_->mapping;
}

// Only lookup without pin and stats are sent again after a lost connection (Retry::kOnce): the
// others change server state (reservations, pins, objects) that died with the old server.

Result<SlotBatch> Client::PrepareStore(std::span<const std::string_view> keys, std::span<const uint64_t> sizes) {
  return impl_->Slots(impl_->Call(protocol::PrepareStoreRequest{keys, sizes}, Retry::kNo));
}

Status Client::CommitStore(std::span<const std::string_view> keys) {
  return impl_->Call(protocol::CommitStoreRequest{keys}, Retry::kNo).status();
}

Status Client::PostCommitStore(std::span<const std::string_view> keys) {
  return impl_->Post(protocol::CommitStoreRequest{keys});
}

Result<uint64_t> Client::AbortStore(std::span<const std::string_view> keys) {
  auto r = impl_->As<protocol::AbortStoreReply>(impl_->Call(protocol::AbortStoreRequest{keys}, Retry::kNo));
  if (!r.ok()) return r.status();
  return r->aborted;
}

Result<uint64_t> Client::Lookup(std::span<const std::string_view> keys, bool pin) {
  auto r = impl_->As<protocol::LookupReply>(
      impl_->Call(protocol::LookupRequest{keys, pin}, pin ? Retry::kNo : Retry::kOnce));
  if (!r.ok()) return r.status();
  return r->count;
}

Result<SlotBatch> Client::PrepareRetrieve(std::span<const std::string_view> keys) {
  return impl_->Slots(impl_->Call(protocol::PrepareRetrieveRequest{keys}, Retry::kNo));
}

Status Client::CommitRetrieve(std::span<const std::string_view> keys) {
  return impl_->Call(protocol::CommitRetrieveRequest{keys}, Retry::kNo).status();
}

Status Client::PostCommitRetrieve(std::span<const std::string_view> keys) {
  return impl_->Post(protocol::CommitRetrieveRequest{keys});
}

Status Client::Sync() {
  return impl_->Sync();
}

size_t Client::posted() const {
  return impl_->posted.size();
}

const std::vector<uint32_t>& Client::last_expired() const {
  return impl_->last_expired;
}

Result<std::vector<RemoveOutcome>> Client::Remove(std::span<const std::string_view> keys) {
  auto r = impl_->Call(protocol::RemoveRequest{keys}, Retry::kNo);
  if (!r.ok()) return r.status();
  protocol::RemoveReply reply;
  SHMKV_RETURN_IF_ERROR(protocol::Unpack(*r, reply, impl_->scratch.decode));
  return std::vector<RemoveOutcome>(reply.results.begin(), reply.results.end());
}

Result<uint64_t> Client::Clear() {
  auto r = impl_->As<protocol::ClearReply>(impl_->Call(protocol::ClearRequest{}, Retry::kNo));
  if (!r.ok()) return r.status();
  return r->removed;
}

Result<StatsMap> Client::Stats() {
  auto r = impl_->Call(protocol::StatsRequest{}, Retry::kOnce);
  if (!r.ok()) return r.status();
  protocol::StatsReply reply;
  SHMKV_RETURN_IF_ERROR(protocol::Unpack(*r, reply, impl_->scratch.decode));
  return ToStatsMap(reply);
}

Status Client::Put(std::string_view key, std::span<const std::byte> data) {
  const std::string_view keys[] = {key};
  const uint64_t sizes[] = {data.size()};
  auto batch = PrepareStore(keys, sizes);
  if (!batch.ok()) return batch.status();
  const Slot& s = batch->slots[0];
  switch (s.status) {
    case SlotStatus::kOk: break;
    case SlotStatus::kExists: return Status::AlreadyExists("put: the key is already stored");
    case SlotStatus::kBusy: return Status::Busy("put: another writer is storing the key");
    default: return Status::Full("put: the pool is full of pinned or reserved objects");
  }
  std::memcpy(s.bytes.data(), data.data(), data.size());
  return CommitStore(keys);
}

Result<std::vector<std::byte>> Client::Get(std::string_view key) {
  const std::string_view keys[] = {key};
  auto batch = PrepareRetrieve(keys);
  if (!batch.ok()) return batch.status();
  const Slot& s = batch->slots[0];
  if (s.status != SlotStatus::kOk) return Status::NotFound("get: the key is not stored");
  std::vector<std::byte> out(s.bytes.begin(), s.bytes.end());
  SHMKV_RETURN_IF_ERROR(CommitRetrieve(keys));
  return out;
}

}  // namespace shmkv
