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
#include <random>
#include <unordered_map>

#include <fmt/format.h>

#include "common/log.h"
#include "common/syscall.h"
#include "metrics/exporter.h"
#include "metrics/on_loop.h"
#include "platform/process.h"
#include "protocol/wire.h"
#include "server/disk_tier.h"
#include "server/kv_service.h"
#include "server/redis_tier.h"
#include "server/request_handler.h"
#include "server/store.h"
#include "shmkv/segment.h"
#include "shmkv/size.h"
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
  if (socket_path != DefaultSocketPath()) {
    // Said before the pool is created and prefaulted (seconds for gigabytes), not after.
    const size_t slash = socket_path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : socket_path.substr(0, slash);
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) {
      return Status::FromErrno(fmt::format("the directory '{}' of --socket '{}'", dir, socket_path), errno);
    }
    if (!S_ISDIR(st.st_mode)) {
      return Status::InvalidArgument(fmt::format("'{}' (of --socket '{}') is not a directory", dir, socket_path));
    }
    return Status::Ok();
  }
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

}  // namespace

struct Server::Impl {
  ServerOptions options;
  SharedSegment segment;
  asio::io_context io{1};
  // Every operation's answer, over L1 and the tiers; declared after io (its tiers own timers and
  // descriptors on it), so destroyed before it.
  KvService service;
  stream_protocol::acceptor acceptor{io};
  asio::signal_set signals{io, SIGINT, SIGTERM};
  asio::steady_timer lease_timer{io};
  SessionId next_session = 1;
  std::unordered_map<SessionId, std::weak_ptr<Connection>> connections;
  // Sessions closed while their process lived on, with quarantined slots: freed at its exit.
  std::unordered_map<SessionId, std::unique_ptr<asio::posix::stream_descriptor>> orphan_watches;
  size_t buffered_bytes = 0;  // request buffers of every connection, bounded by max_buffered_bytes
  bool socket_bound = false;
  // With --metrics-address: requests by operation and outcome (written on the loop, read by the
  // exporter's threads: atomics), and the HTTP endpoint, stopped before the loop.
  std::unique_ptr<metrics::RequestMetrics> requests;
  std::unique_ptr<metrics::Exporter> exporter;
  double start_time_seconds = 0;

  metrics::Snapshot TakeSnapshot() {
    metrics::Snapshot snap;
    std::vector<TierCounter> counters;
    service.Stats(counters);
    metrics::AppendCounters(counters, snap.counters);
    if (requests) snap.requests = requests->Snapshot();
    snap.health.push_back({"loop", true, {}});  // it answered this snapshot
    snap.health.push_back({"pool", true, {}});
    for (const auto& [name, h] : service.TierHealths()) snap.health.push_back({std::string(name), h.up, h.reason});
    snap.version = std::string(kVersionString);
    snap.protocol_min = wire::kMinProtocolVersion;
    snap.protocol_max = wire::kProtocolVersion;
    snap.segment = segment.name();
    snap.generation = service.identity().generation;
    snap.start_time_seconds = start_time_seconds;
    return snap;
  }

  Impl(ServerOptions o, SharedSegment seg, Store store, ServiceIdentity identity)
      : options(std::move(o)), segment(std::move(seg)), service(std::move(store), std::move(identity)) {}
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
      service.ReleaseOrphans(session);
      Log().debug("session {}: its process exited; quarantined slots freed", session);
      orphan_watches.erase(session);  // destroys the descriptor after this handler returns
    });
    orphan_watches[session] = std::move(watch);
  }
};

namespace {

// One client connection: reads frames, answers each in order, owns one Store session.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Server::Impl& server, stream_protocol::socket socket, SessionId id, sys::UniqueFd peer_pidfd)
      : server_(server),
        socket_(std::move(socket)),
        session_(id),
        peer_pidfd_(std::move(peer_pidfd)),
        handler_(
            server.service, id,
            [this] {
              return [self = shared_from_this()](std::string_view reply) { self->ResumeAfterDeferred(reply); };
            },
            server.requests.get()) {}
  ~Connection() { server_.buffered_bytes -= in_.size(); }

  void Start() {
    server_.service.OpenSession(session_);
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
      server_.service.CountRejectedFrame();
      handler_.AppendError(
          0,
          Status::Full(fmt::format("the server's request buffers are full ({} of {} bytes in use by all "
                                   "connections); this connection is closed, retry later",
                                   server_.buffered_bytes, server_.options.max_buffered_bytes)),
          out_pending_);
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
    return handler_.registered() ? server_.options.max_frame_bytes
                                 : std::min(server_.options.max_frame_bytes, kUnregisteredMaxFrame);
  }

  // Answers every complete frame in in_, keeps a partial one for later.
  void Process() {
    size_t pos = 0;
    while (!closing_ && in_end_ - pos >= wire::kHeaderBytes) {
      const uint32_t len = wire::ReadLength(reinterpret_cast<const uint8_t*>(in_.data() + pos));
      if (len == 0 || len > FrameLimit()) {
        // The stream cannot be resynchronised after a bad length: answer once, then hang up.
        server_.service.CountRejectedFrame();
        handler_.AppendError(
            0,
            Status::Protocol(fmt::format("frame length {} is outside 1..{}{}", len, FrameLimit(),
                                         handler_.registered() ? "" : " (the limit before 'register')")),
            out_pending_);
        closing_ = true;
        break;
      }
      if (in_end_ - pos - wire::kHeaderBytes < len) break;
      deferred_ = handler_.Handle(std::string_view(in_.data() + pos + wire::kHeaderBytes, len), out_pending_);
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

  // The reply of a request that waited for a tier: send it, then serve what queued up behind it.
  void ResumeAfterDeferred(std::string_view reply) {
    if (finished_) return;
    out_pending_.append(reply);
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
    const bool may_still_run = peer_pidfd_.valid() && !platform::ProcessExited(peer_pidfd_);
    if (server_.service.CloseSession(session_, may_still_run)) {
      server_.WatchOrphans(session_, std::move(peer_pidfd_));
    }
    server_.connections.erase(session_);
    Log().debug("session {} ({}) closed", session_, handler_.instance());
    Close();
  }

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

  static constexpr size_t kInputChunk = 64 * 1024;

  Server::Impl& server_;
  stream_protocol::socket socket_;
  SessionId session_;
  sys::UniqueFd peer_pidfd_;  // the client process, to learn when it has exited
  RequestHandler handler_;    // decodes, runs and answers each request
  std::vector<char> in_;
  size_t in_end_ = 0;
  std::string out_pending_, out_flight_;
  bool writing_ = false;
  bool closing_ = false;
  bool finished_ = false;
  bool deferred_ = false;     // a reply waits for a tier; frames after it are not handled yet
  bool eof_pending_ = false;  // the peer closed while a reply was deferred
};

// Whether a peer may use the server: its own uid, root, or with mode 0660 a member of the
// server's group, also through a supplementary group (the segment's 0660 admits those too, so
// the two gates agree).
bool PeerAllowed(int fd, const platform::PeerCredentials& cred, uint32_t mode) {
  if (cred.uid == ::geteuid() || cred.uid == 0) return true;
  if ((mode & 0060) == 0) return false;
  return platform::PeerInGroup(fd, cred, ::getegid());
}

}  // namespace

void Server::Impl::Accept() {
  acceptor.async_accept([this](const asio::error_code& ec, stream_protocol::socket socket) {
    if (ec) {
      if (ec != asio::error::operation_aborted) Accept();
      return;
    }
    const auto peer = platform::GetPeerCredentials(socket.native_handle());
    if (!peer.ok() || !PeerAllowed(socket.native_handle(), *peer, options.socket_mode)) {
      Log().warn("refused a connection from uid {} (not this server's user{})", peer.ok() ? peer->uid : -1u,
                 options.socket_mode == 0660 ? " or group" : "");
    } else {
      const SessionId id = next_session++;
      auto conn = std::make_shared<Connection>(*this, std::move(socket), id, platform::WatchProcessExit(peer->pid));
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
    if (size_t n = service.ExpireLeases(Clock::now()); n > 0) Log().warn("expired {} lease(s) past their TTL", n);
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
  if (options.disk && !options.shm_dir.empty()) {
    return Status::InvalidArgument(
        "--disk-dir cannot be combined with --shm-dir yet: the file worker attaches the pool by its name in /dev/shm");
  }
  if (options.clean_stale) {
    const std::string dirs[] = {options.shm_dir};
    auto removed = RemoveStaleSegments(false, nullptr, dirs);
    if (!removed.ok()) Log().warn("stale segment cleanup failed: {}", removed.status().ToString());
  }
  // Everything cheap is checked before the pool is created: prefaulting gigabytes takes seconds.
  SHMKV_RETURN_IF_ERROR(PrepareSocketDirectory(options.socket_path, options.socket_mode));
  if (options.prefault) {
    Log().info("creating the {} pool and faulting it in (--no-prefault skips this)", FormatSize(options.pool_size));
  }
  const auto created_at = std::chrono::steady_clock::now();
  auto last_said = created_at;
  // How far the prefault got, every few seconds for a pool that takes that long.
  auto say_progress = [&last_said](uint64_t done, uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (done == total || now - last_said < std::chrono::seconds(2)) return;
    last_said = now;
    Log().info("prefaulting the pool: {} of {} ({:.0f}%)", FormatSize(done), FormatSize(total),
               100.0 * static_cast<double>(done) / static_cast<double>(total));
  };
  SegmentCreateOptions seg_opts;
  seg_opts.name = options.shm_name;
  seg_opts.size = options.pool_size;
  seg_opts.prefault = options.prefault;
  seg_opts.prefault_progress = say_progress;
  seg_opts.mode = options.socket_mode;
  seg_opts.dir = options.shm_dir;
  seg_opts.huge_pages = options.huge_pages;
  auto segment = SharedSegment::Create(seg_opts);
  if (!segment.ok()) return segment.status();
  if (options.prefault) {
    Log().info("pool ready in {:.1f} s",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - created_at).count());
  }
  StoreOptions store_opts;
  store_opts.pool_size = segment->size();
  store_opts.alignment = kSlotAlignment;
  store_opts.reserve_ttl = options.reserve_ttl;
  store_opts.pin_ttl = options.pin_ttl;
  store_opts.track_dirty = options.disk.has_value();
  store_opts.eviction = options.eviction;
  auto store = Store::Create(store_opts);
  if (!store.ok()) return store.status();

  std::random_device rd;
  ServiceIdentity identity{segment->name(), segment->size(),
                           (uint64_t{rd()} << 32 | rd()) | 1,  // never 0: 0 means "unknown" to clients
                           segment->path()};
  auto impl = std::make_unique<Impl>(options, std::move(segment).value(), std::move(store).value(), identity);
  if (options.disk) {
    auto disk = DiskTier::Start(impl->io, impl->service.l1(), impl->segment.name(), impl->segment.size(), *options.disk,
                                impl->segment.data());
    if (!disk.ok()) return disk.status().WithContext("L2 disk tier");
    impl->service.AddTier(std::move(disk).value());
  }
  if (options.redis) {
    auto redis =
        RedisTier::Start(impl->io, impl->service.l1(), impl->segment.data(), impl->segment.size(), *options.redis);
    if (!redis.ok()) return redis.status().WithContext("L3 Redis tier");
    impl->service.AddTier(std::move(redis).value());
  }
  impl->start_time_seconds = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  if (options.metrics) {
    impl->requests =
        std::make_unique<metrics::RequestMetrics>(RequestHandler::MetricsOps(), RequestHandler::MetricsOutcomes());
    Impl* raw = impl.get();
    auto exporter = metrics::Exporter::Start(*options.metrics, [raw]() -> Result<metrics::Snapshot> {
      return metrics::RunOnLoop(
          raw->io, [raw] { return raw->TakeSnapshot(); }, std::chrono::seconds(2));
    });
    if (!exporter.ok()) return exporter.status().WithContext("--metrics-address");
    impl->exporter = std::move(exporter).value();
    Log().info("metrics on {} (health on /healthz)", impl->exporter->url());
  }
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
    // Before the loop stops: a scrape in progress waits for the loop (bounded), never for a
    // loop that is gone.
    if (s.exporter) s.exporter->Stop();
    // Write-through promises that committed objects reach the disk: let the tiers drain first.
    s.service.Drain(std::chrono::seconds(5), [&s] { s.io.stop(); });
  });
}

const std::string& Server::segment_name() const {
  return impl_->segment.name();
}
const std::string& Server::segment_path() const {
  return impl_->segment.path();
}
uint64_t Server::page_size() const {
  return impl_->segment.page_size();
}
uint64_t Server::pool_size() const {
  return impl_->segment.size();
}
uint64_t Server::generation() const {
  return impl_->service.identity().generation;
}

}  // namespace shmkv
