#include "file_worker/session.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/log.h"
#include "common/syscall.h"
#include "shmkv/segment.h"

namespace shmkv::file_worker {
namespace {

// Replies queued but not yet written; past this the reader stops reading, so a client that
// pipelines without reading its replies cannot grow our memory without bound.
constexpr size_t kMaxQueuedReplies = 4096;
constexpr size_t kReadChunk = 64 * 1024;

// Same or ancestor: "a" overlaps "a" and "a/b"; "" (the root) overlaps everything.
bool PathsOverlap(std::string_view a, std::string_view b) {
  if (a.size() > b.size()) std::swap(a, b);
  if (a.empty()) return true;
  return b.starts_with(a) && (b.size() == a.size() || b[a.size()] == '/');
}

// Compares SHA-256 digests with CRYPTO_memcmp: the time taken depends on neither the secret's
// bytes nor its length, so a timing probe learns nothing (not even how long the token is).
bool TokenEquals(std::string_view given, std::string_view secret) {
  unsigned char a[EVP_MAX_MD_SIZE];
  unsigned char b[EVP_MAX_MD_SIZE];
  unsigned int a_len = 0;
  unsigned int b_len = 0;
  if (EVP_Digest(given.data(), given.size(), a, &a_len, EVP_sha256(), nullptr) != 1 ||
      EVP_Digest(secret.data(), secret.size(), b, &b_len, EVP_sha256(), nullptr) != 1 || a_len != b_len) {
    return false;  // no digest, no entry
  }
  return CRYPTO_memcmp(a, b, a_len) == 0;
}

bool WriteFully(int fd, bool is_socket, std::string_view data) {
  while (!data.empty()) {
    auto r = sys::Call([&] {
      return is_socket ? ::send(fd, data.data(), data.size(), MSG_NOSIGNAL) : ::write(fd, data.data(), data.size());
    });
    if (!r.ok() || r.value == 0) return false;
    data.remove_prefix(static_cast<size_t>(r.value));
  }
  return true;
}

}  // namespace

bool Conflicts(const Footprint& a, const Footprint& b) {
  // Two paths overlap when they are the same, or one is a directory above the other.
  if ((a.writes_path || b.writes_path) && PathsOverlap(a.path, b.path)) return true;
  if (a.has_region && b.has_region && (a.writes_pool || b.writes_pool) && a.segment == b.segment && a.region.len > 0 &&
      b.region.len > 0) {
    // offset + len never wraps: both passed CheckRegion.
    return a.region.offset < b.region.offset + b.region.len && b.region.offset < a.region.offset + a.region.len;
  }
  return false;
}

std::string_view SessionEndName(Session::End end) {
  switch (end) {
    case Session::End::kQuit: return "quit";
    case Session::End::kEof: return "end of input";
    case Session::End::kAuthFailed: return "authentication failed";
    case Session::End::kShutdown: return "shutdown";
    case Session::End::kIoError: return "read error";
  }
  return "?";
}

struct Session::Attachment {
  Attachment(SharedSegment seg, uint64_t base) : segment(std::move(seg)), base_addr(base) {}
  SharedSegment segment;
  uint64_t base_addr;
};

struct Session::Op {
  Verb verb;
  RelPath path;
  Region region;
  std::shared_ptr<const Attachment> attachment;  // WRITE/READ: keeps the mapping alive
};

// Everything the reader, the writer and pool tasks share. Pool tasks hold it by shared_ptr, so it
// outlives the Session for as long as any task still touches it.
struct Session::Shared {
  struct Slot {
    std::string reply;
    bool ready = false;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Slot>> replies;  // in command order
  std::map<uint64_t, Footprint> inflight;
  uint64_t next_id = 0;
  bool reader_done = false;
};

Session::Session(const FileStore& store, ThreadPool& pool, SessionOptions options)
    : store_(store), pool_(pool), options_(std::move(options)), shared_(std::make_shared<Shared>()) {
  if (options_.queue_depth == 0) options_.queue_depth = 1;
  authenticated_ = options_.token.empty();
}

Session::~Session() = default;

Session::End Session::Serve(int in_fd, int out_fd) {
  std::thread writer([this, out_fd] { WriteLoop(out_fd); });
  const End end = ReadLoop(in_fd);
  {
    std::lock_guard lock(shared_->mu);
    shared_->reader_done = true;
  }
  shared_->cv.notify_all();
  writer.join();  // returns once every reply is written, so every dispatched command has finished
  attachment_.reset();
  return end;
}

Session::End Session::ReadLoop(int in_fd) {
  std::string buf;
  bool discarding = false;  // inside an overlong line: drop bytes up to its newline
  const auto auth_deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.auth_timeout_ms);
  std::unique_ptr<char[]> chunk(new char[kReadChunk]);
  for (;;) {
    size_t start = 0;
    for (size_t nl; (nl = buf.find('\n', start)) != std::string::npos;) {
      const std::string_view line(buf.data() + start, nl - start);
      start = nl + 1;
      if (discarding) {
        discarding = false;
        continue;
      }
      if (line.size() > kMaxLineBytes + 1) {  // +1: a tolerated '\r'
        PushReady(ErrorReply(fmt::format("line too long (more than {} bytes)", kMaxLineBytes)));
        continue;
      }
      if (auto end = HandleLine(line)) return *end;
    }
    buf.erase(0, start);
    if (!discarding && buf.size() > kMaxLineBytes + 1) {
      PushReady(ErrorReply(fmt::format("line too long (more than {} bytes)", kMaxLineBytes)));
      discarding = true;
    }
    if (discarding) buf.clear();

    pollfd fds[2] = {{in_fd, POLLIN, 0}, {options_.stop_fd, POLLIN, 0}};
    int timeout = -1;
    if (!authenticated_) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(auth_deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        PushReady(ErrorReply("authentication timeout: the first line must be AUTH <token>"));
        return End::kAuthFailed;
      }
      timeout = static_cast<int>(left.count());
    }
    auto p = sys::Call([&] { return ::poll(fds, options_.stop_fd >= 0 ? 2 : 1, timeout); });
    if (!p.ok()) return End::kIoError;
    if (p.value == 0) continue;  // auth deadline: checked at the top of the next round
    if (options_.stop_fd >= 0 && (fds[1].revents & POLLIN) != 0) return End::kShutdown;
    auto r = sys::Call([&] { return ::read(in_fd, chunk.get(), kReadChunk); });
    if (!r.ok()) return End::kIoError;  // ECONNRESET and friends: the client is gone
    if (r.value == 0) {
      if (!buf.empty() && !discarding) {
        // A command cut off by a disconnect is never run: its last number may be truncated.
        PushReady(ErrorReply(
            fmt::format("incomplete command at end of input (no newline after {} bytes); not run", buf.size())));
      }
      return End::kEof;
    }
    buf.append(chunk.get(), static_cast<size_t>(r.value));
  }
}

void Session::WriteLoop(int out_fd) {
  struct stat st {};
  const bool is_socket = ::fstat(out_fd, &st) == 0 && S_ISSOCK(st.st_mode);
  bool peer_gone = false;
  std::string out;
  std::unique_lock lock(shared_->mu);
  for (;;) {
    shared_->cv.wait(lock, [&] {
      return (!shared_->replies.empty() && shared_->replies.front()->ready) ||
             (shared_->reader_done && shared_->replies.empty());
    });
    if (shared_->replies.empty()) return;  // reader done and everything written
    out.clear();
    while (!shared_->replies.empty() && shared_->replies.front()->ready) {
      out += shared_->replies.front()->reply;
      shared_->replies.pop_front();
    }
    shared_->cv.notify_all();  // the reader may be waiting for room
    lock.unlock();
    if (!peer_gone && !WriteFully(out_fd, is_socket, out)) {
      // Keep draining: in-flight commands still finish (a WRITE still lands whole or not at all).
      peer_gone = true;
      Log().info("file worker: client stopped reading replies; finishing its in-flight commands");
    }
    lock.lock();
  }
}

void Session::PushReady(std::string reply) {
  auto slot = std::make_shared<Shared::Slot>();
  slot->reply = std::move(reply);
  slot->ready = true;
  {
    std::unique_lock lock(shared_->mu);
    shared_->cv.wait(lock, [&] { return shared_->replies.size() < kMaxQueuedReplies; });
    shared_->replies.push_back(std::move(slot));
  }
  shared_->cv.notify_all();
}

std::string Session::Attach(const Command& cmd) {
  // Unmap first: a failed ATTACH leaves the session detached, so no later WRITE/READ can use the
  // old mapping with pointers meant for the new one. In-flight commands keep their own reference.
  attachment_.reset();
  auto name = CheckSegmentName(cmd.text, options_.attach_prefix);
  if (!name.ok()) return ErrorReply(fmt::format("attach failed: {}", name.status().message()));
  SegmentAttachOptions opts;
  opts.size = cmd.size;  // > 0: the parser refuses 0
  opts.pin_with_cuda = false;
  opts.exact_name = true;
  auto seg = SharedSegment::Attach(*name, opts);
  if (!seg.ok()) return ErrorReply(fmt::format("attach failed: {}", seg.status().message()));
  auto att = std::make_shared<Attachment>(std::move(seg).value(), cmd.base_addr);
  Log().debug("file worker: attached '{}' ({} bytes) at base {:#x}", att->segment.name(), att->segment.size(),
              att->base_addr);
  attachment_ = std::move(att);
  return OkReply();
}

std::optional<Session::End> Session::HandleLine(std::string_view line) {
  auto cmd = ParseCommand(line);
  if (!authenticated_) {
    if (!cmd.ok() || cmd->verb != Verb::kAuth) {
      PushReady(ErrorReply("authentication required: the first line must be AUTH <token>"));
      return End::kAuthFailed;
    }
    if (!TokenEquals(cmd->text, options_.token)) {
      PushReady(ErrorReply("authentication failed: wrong token"));
      return End::kAuthFailed;
    }
    if (options_.on_authenticated) {
      if (Status admitted = options_.on_authenticated(); !admitted.ok()) {
        PushReady(ErrorReply(admitted.message()));
        return End::kAuthFailed;
      }
    }
    authenticated_ = true;
    PushReady(OkReply());
    return std::nullopt;
  }
  if (!cmd.ok()) {
    PushReady(ErrorReply(cmd.status().message()));
    return std::nullopt;
  }

  switch (cmd->verb) {
    case Verb::kQuit: PushReady(OkReply()); return End::kQuit;
    case Verb::kAuth:
      PushReady(options_.token.empty() || TokenEquals(cmd->text, options_.token)
                    ? OkReply()
                    : ErrorReply("authentication failed: wrong token"));
      return std::nullopt;
    case Verb::kAttach: PushReady(Attach(*cmd)); return std::nullopt;
    default: break;
  }

  const bool is_list = cmd->verb == Verb::kList;
  auto path = store_.Normalize(is_list && cmd->text.empty() ? std::string_view(".") : cmd->text, is_list);
  if (!path.ok()) {
    PushReady(ErrorReply(path.status().message()));
    return std::nullopt;
  }
  Footprint fp;
  fp.path = path->str();
  fp.tree = is_list;
  fp.writes_path = cmd->verb == Verb::kWrite || cmd->verb == Verb::kDelete;
  Op op{cmd->verb, std::move(path).value(), Region{}, nullptr};

  if (cmd->verb == Verb::kWrite || cmd->verb == Verb::kRead) {
    if (!attachment_) {
      PushReady(ErrorReply("not attached: send ATTACH <shm_name> <size> <base_addr> first"));
      return std::nullopt;
    }
    auto region = CheckRegion(attachment_->base_addr, attachment_->segment.size(), cmd->data_ptr, cmd->len);
    if (!region.ok()) {
      PushReady(ErrorReply(region.status().message()));
      return std::nullopt;
    }
    if (store_.options().direct) {
      if (auto s = CheckDirectAlignment(*region); !s.ok()) {
        PushReady(ErrorReply(s.message()));
        return std::nullopt;
      }
    }
    op.region = *region;
    op.attachment = attachment_;
    fp.has_region = true;
    fp.segment = attachment_->segment.name();
    fp.region = *region;
    fp.writes_pool = cmd->verb == Verb::kRead;
  }
  Dispatch(std::move(op), std::move(fp));
  return std::nullopt;
}

void Session::Dispatch(Op op, Footprint footprint) {
  auto slot = std::make_shared<Shared::Slot>();
  uint64_t id = 0;
  {
    std::unique_lock lock(shared_->mu);
    shared_->cv.wait(lock, [&] {
      if (shared_->inflight.size() >= options_.queue_depth) return false;
      if (shared_->replies.size() >= kMaxQueuedReplies) return false;
      for (const auto& [other_id, other] : shared_->inflight) {
        if (Conflicts(footprint, other)) return false;
      }
      return true;
    });
    id = shared_->next_id++;
    shared_->inflight.emplace(id, std::move(footprint));
    shared_->replies.push_back(slot);
  }
  pool_.Submit([shared = shared_, slot, id, op = std::move(op), &store = store_, io = options_.uring]() mutable {
    std::string reply;
    switch (op.verb) {
      case Verb::kWrite: {
        auto r = store.Write(op.path, op.attachment->segment.data() + op.region.offset, op.region.len, io);
        reply = r.ok() ? OkReply(*r) : ErrorReply(r.status().message());
        break;
      }
      case Verb::kRead: {
        auto r = store.Read(op.path, op.attachment->segment.data() + op.region.offset, op.region.len, io);
        reply = r.ok() ? OkReply(*r) : ErrorReply(r.status().message());
        break;
      }
      case Verb::kExists: {
        auto r = store.Exists(op.path);
        reply = r.ok() ? OkReply(*r ? 1 : 0) : ErrorReply(r.status().message());
        break;
      }
      case Verb::kDelete: {
        auto r = store.Delete(op.path);
        reply = r.ok() ? OkReply(*r ? 1 : 0) : ErrorReply(r.status().message());
        break;
      }
      case Verb::kStat: {
        auto r = store.Stat(op.path);
        reply = r.ok() ? OkReply(*r) : ErrorReply(r.status().message());
        break;
      }
      case Verb::kList: {
        auto r = store.List(op.path);
        if (r.ok()) {
          reply = "OK";
          for (const auto& name : *r) {
            reply.push_back(' ');
            reply += name;
          }
          reply.push_back('\n');
        } else {
          reply = ErrorReply(r.status().message());
        }
        break;
      }
      default: reply = ErrorReply("internal error: unexpected command in the I/O pool"); break;
    }
    // Drop the mapping reference before the reply can go out: once a client has its reply, a
    // replaced attachment is already unmapped.
    op.attachment.reset();
    std::lock_guard lock(shared->mu);
    slot->reply = std::move(reply);
    slot->ready = true;
    shared->inflight.erase(id);
    shared->cv.notify_all();
  });
}

}  // namespace shmkv::file_worker
