#include "shmkv/client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <functional>

#include <fmt/format.h>

#include "common/log.h"
#include "common/syscall.h"
#include "protocol/wire.h"
#include "shmkv/version.h"

namespace shmkv {

std::string_view SlotStatusName(SlotStatus s) {
  switch (s) {
    case SlotStatus::kOk: return "ok";
    case SlotStatus::kExists: return "exists";
    case SlotStatus::kBusy: return "busy";
    case SlotStatus::kFull: return "full";
    case SlotStatus::kMissing: return "missing";
  }
  return "unknown";
}

namespace {

using Deadline = std::chrono::steady_clock::time_point;

// A blocking Unix-socket connection whose every read and write honours a deadline.
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
      return Status(
          rc.err == ENOENT || rc.err == ECONNREFUSED ? StatusCode::kDisconnected : StatusCode::kIoError,
          fmt::format("connecting to shmkv-server at '{}': {} (is the server running?)", path, std::strerror(rc.err)),
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
    return ch;
  }

  Status WriteAll(std::string_view data, Deadline deadline) {
    while (!data.empty()) {
      auto n = sys::Call([&] { return ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL); });
      if (n.ok()) {
        data.remove_prefix(static_cast<size_t>(n.value));
        continue;
      }
      if (n.err != EAGAIN) return Lost(n.err);
      SHMKV_RETURN_IF_ERROR(Wait(POLLOUT, deadline));
    }
    return Status::Ok();
  }

  // Reads one frame body into `body`.
  Status ReadFrame(std::string& body, Deadline deadline) {
    uint8_t header[wire::kHeaderBytes];
    SHMKV_RETURN_IF_ERROR(ReadExact(reinterpret_cast<char*>(header), sizeof header, deadline));
    const uint32_t len = wire::ReadLength(header);
    if (len == 0 || len > wire::kDefaultMaxFrame) {
      return Status::Protocol(fmt::format("server sent a frame of {} bytes", len));
    }
    body.resize(len);
    return ReadExact(body.data(), len, deadline);
  }

 private:
  explicit Channel(sys::UniqueFd fd) : fd_(std::move(fd)) {}

  Status ReadExact(char* p, size_t n, Deadline deadline) {
    while (n > 0) {
      auto r = sys::Call([&] { return ::recv(fd_.get(), p, n, 0); });
      if (r.ok()) {
        if (r.value == 0) return Status::Disconnected("the server closed the connection");
        p += r.value;
        n -= static_cast<size_t>(r.value);
        continue;
      }
      if (r.err != EAGAIN) return Lost(r.err);
      SHMKV_RETURN_IF_ERROR(Wait(POLLIN, deadline));
    }
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
};

SlotStatus ParseSlotStatus(std::string_view s) {
  if (s == "ok") return SlotStatus::kOk;
  if (s == "exists") return SlotStatus::kExists;
  if (s == "busy") return SlotStatus::kBusy;
  if (s == "full") return SlotStatus::kFull;
  return SlotStatus::kMissing;
}

StatusCode ParseCode(std::string_view name) {
  for (int c = 0; c <= static_cast<int>(StatusCode::kInternal); ++c) {
    if (StatusCodeName(static_cast<StatusCode>(c)) == name) return static_cast<StatusCode>(c);
  }
  return StatusCode::kInternal;
}

// A decoded reply: the handle owns the memory the reader points into.
struct Reply {
  msgpack::object_handle handle;
  std::optional<wire::MapReader> fields;
};

using BodyWriter = std::function<int(wire::Packer&)>;  // packs extra fields, returns how many

Result<Reply> RoundTrip(Channel& ch, uint64_t id, std::string_view op, const BodyWriter& body, Deadline deadline) {
  wire::FrameBuffer fb;
  wire::Packer pk(fb.sbuf());
  msgpack::sbuffer extra_buf;
  wire::Packer extra(extra_buf);
  const int n = body ? body(extra) : 0;
  pk.pack_map(static_cast<uint32_t>(2 + n));
  wire::PackStr(pk, "id");
  pk.pack_uint64(id);
  wire::PackStr(pk, "op");
  wire::PackStr(pk, op);
  fb.sbuf().write(extra_buf.data(), extra_buf.size());
  SHMKV_RETURN_IF_ERROR(ch.WriteAll(fb.Finish(), deadline));
  std::string frame;
  SHMKV_RETURN_IF_ERROR(ch.ReadFrame(frame, deadline));
  Reply reply;
  try {
    reply.handle = msgpack::unpack(frame.data(), frame.size());
  } catch (const std::exception& e) {
    return Status::Protocol(fmt::format("reply is not valid msgpack: {}", e.what()));
  }
  auto reader = wire::MapReader::From(reply.handle.get());
  if (!reader.ok()) return reader.status();
  auto got_id = reader->U64("id");
  if (!got_id.ok() || *got_id != id) return Status::Protocol("reply does not answer this request");
  auto ok = reader->Bool("ok");
  if (!ok.ok()) return ok.status();
  if (!*ok) {
    auto err = reader->Map("error");
    if (!err.ok()) return Status::Protocol("error reply without an error map");
    auto code = err->Str("code");
    auto msg = err->Str("message");
    return Status(code.ok() ? ParseCode(*code) : StatusCode::kInternal,
                  msg.ok() ? std::string(*msg) : std::string("(no message)"));
  }
  reply.fields = *reader;
  return reply;
}

int PackKeys(wire::Packer& pk, std::span<const std::string_view> keys) {
  wire::PackStr(pk, "keys");
  pk.pack_array(static_cast<uint32_t>(keys.size()));
  for (std::string_view k : keys) wire::PackBin(pk, k);
  return 1;
}

Result<std::map<std::string, uint64_t>> ParseStats(const Reply& r) {
  auto m = r.fields->Map("stats");
  if (!m.ok()) return m.status();
  std::map<std::string, uint64_t> out;
  const msgpack::object* stats = r.fields->Find("stats");
  for (uint32_t i = 0; i < stats->via.map.size; ++i) {
    const auto& kv = stats->via.map.ptr[i];
    if (kv.val.type == msgpack::type::POSITIVE_INTEGER) {
      out.emplace(std::string(kv.key.via.str.ptr, kv.key.via.str.size), kv.val.via.u64);
    }
  }
  return out;
}

}  // namespace

struct Client::Impl {
  ClientOptions options;
  std::optional<Channel> channel;
  RegistrationInfo info;
  std::shared_ptr<const SharedSegment> mapping;
  uint64_t next_id = 1;

  Deadline NewDeadline() const { return std::chrono::steady_clock::now() + options.timeout; }

  // Connects and registers when not connected; maps the segment when it changed.
  Status Ensure(Deadline deadline) {
    if (channel) return Status::Ok();
    auto ch = Channel::Open(options.socket_path, deadline);
    if (!ch.ok()) return ch.status();
    auto reply = RoundTrip(
        *ch, next_id++, "register",
        [&](wire::Packer& pk) {
          wire::PackStr(pk, "instance_id");
          wire::PackStr(pk, options.instance_id);
          wire::PackStr(pk, "client_version");
          wire::PackStr(pk, kVersionString);
          wire::PackStr(pk, "namespace");
          pk.pack_map(6);
          wire::PackStr(pk, "model");
          wire::PackStr(pk, options.ns.model);
          wire::PackStr(pk, "world_size");
          pk.pack_uint32(options.ns.world_size);
          wire::PackStr(pk, "rank");
          pk.pack_uint32(options.ns.rank);
          wire::PackStr(pk, "dtype");
          wire::PackStr(pk, options.ns.dtype);
          wire::PackStr(pk, "layout");
          wire::PackStr(pk, options.ns.layout);
          wire::PackStr(pk, "salt");
          wire::PackStr(pk, options.ns.salt);
          return 3;
        },
        deadline);
    if (!reply.ok()) return reply.status();
    const wire::MapReader& f = *reply->fields;
    RegistrationInfo next;
    auto session = f.U64("session");
    auto shm = f.Str("shm_name");
    auto pool = f.U64("pool_size");
    auto align = f.U64("alignment");
    auto gen = f.U64("generation");
    auto proto = f.U64("protocol");
    auto ver = f.Str("server_version");
    for (const Status& s :
         {session.status(), shm.status(), pool.status(), align.status(), gen.status(), proto.status(), ver.status()}) {
      if (!s.ok()) return s.WithContext("register reply");
    }
    if (*proto != wire::kProtocolVersion) {
      return Status::Protocol(fmt::format("server speaks protocol {}, this client {}", *proto, wire::kProtocolVersion));
    }
    next = {*session, std::string(*shm), *pool, *align, std::string(*ver), static_cast<uint32_t>(*proto), *gen};
    if (!mapping || next.generation != info.generation || next.shm_name != info.shm_name) {
      if (mapping) {
        Log().warn("instance '{}': server restarted (generation {} -> {}); mapping segment '{}'", options.instance_id,
                   info.generation, next.generation, next.shm_name);
      }
      SegmentAttachOptions ao;
      ao.size = next.pool_size;
      ao.pin_with_cuda = options.pin_with_cuda;
      auto seg = SharedSegment::Attach(next.shm_name, ao);
      if (!seg.ok()) return seg.status();
      // Old batches keep the previous mapping alive through their own shared_ptr.
      mapping = std::make_shared<const SharedSegment>(std::move(seg).value());
    }
    info = std::move(next);
    channel = std::move(ch).value();
    return Status::Ok();
  }

  Result<Reply> Call(std::string_view op, const BodyWriter& body) {
    const Deadline deadline = NewDeadline();
    auto fail = [&](const Status& s) -> Status {
      if (s.code() == StatusCode::kTimeout) {
        channel.reset();  // a late reply must not answer the next call
        return Status::Timeout(fmt::format("{} timed out after {} ms (instance '{}', socket '{}')", op,
                                           options.timeout.count(), options.instance_id, options.socket_path));
      }
      if (s.code() == StatusCode::kDisconnected || s.code() == StatusCode::kProtocol) {
        channel.reset();
        return Status(
            s.code(),
            fmt::format("{} (instance '{}'): {}; the next call reconnects", op, options.instance_id, s.message()),
            s.sys_errno());
      }
      return s.WithContext(op);
    };
    if (Status s = Ensure(deadline); !s.ok()) return fail(s);
    auto r = RoundTrip(*channel, next_id++, op, body, deadline);
    if (!r.ok()) return fail(r.status());
    return r;
  }

  Result<SlotBatch> Slots(const Reply& r) {
    const msgpack::object* arr = r.fields->Find("slots");
    if (arr == nullptr || arr->type != msgpack::type::ARRAY) return Status::Protocol("reply lacks 'slots'");
    SlotBatch batch;
    batch.mapping = mapping;
    batch.slots.reserve(arr->via.array.size);
    for (uint32_t i = 0; i < arr->via.array.size; ++i) {
      const msgpack::object& e = arr->via.array.ptr[i];
      if (e.type != msgpack::type::ARRAY || e.via.array.size != 3) return Status::Protocol("malformed slot");
      auto status = wire::AsBytes(e.via.array.ptr[0]);
      const msgpack::object& off = e.via.array.ptr[1];
      const msgpack::object& len = e.via.array.ptr[2];
      if (!status || off.type != msgpack::type::POSITIVE_INTEGER || len.type != msgpack::type::POSITIVE_INTEGER) {
        return Status::Protocol("malformed slot");
      }
      Slot s{ParseSlotStatus(*status), off.via.u64, len.via.u64, {}};
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

Result<std::map<std::string, uint64_t>> Client::QueryStats(const std::string& socket_path,
                                                           std::chrono::milliseconds timeout) {
  const Deadline deadline = std::chrono::steady_clock::now() + timeout;
  auto ch = Channel::Open(socket_path, deadline);
  if (!ch.ok()) return ch.status();
  auto r = RoundTrip(*ch, 1, "stats", nullptr, deadline);
  if (!r.ok()) return r.status().WithContext("stats");
  return ParseStats(*r);
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

Result<SlotBatch> Client::PrepareStore(std::span<const std::string_view> keys, std::span<const uint64_t> sizes) {
  auto r = impl_->Call("prepare_store", [&](wire::Packer& pk) {
    PackKeys(pk, keys);
    wire::PackStr(pk, "sizes");
    pk.pack_array(static_cast<uint32_t>(sizes.size()));
    for (uint64_t s : sizes) pk.pack_uint64(s);
    return 2;
  });
  if (!r.ok()) return r.status();
  return impl_->Slots(*r);
}

Status Client::CommitStore(std::span<const std::string_view> keys) {
  return impl_->Call("commit_store", [&](wire::Packer& pk) { return PackKeys(pk, keys); }).status();
}

namespace {
Result<uint64_t> U64Field(const Result<Reply>& r, std::string_view field) {
  if (!r.ok()) return r.status();
  return r->fields->U64(field);
}
}  // namespace

Result<uint64_t> Client::AbortStore(std::span<const std::string_view> keys) {
  return U64Field(impl_->Call("abort_store", [&](wire::Packer& pk) { return PackKeys(pk, keys); }), "aborted");
}

Result<uint64_t> Client::Lookup(std::span<const std::string_view> keys, bool pin) {
  return U64Field(impl_->Call("lookup",
                              [&](wire::Packer& pk) {
                                PackKeys(pk, keys);
                                wire::PackStr(pk, "pin");
                                pk.pack(pin);
                                return 2;
                              }),
                  "count");
}

Result<SlotBatch> Client::PrepareRetrieve(std::span<const std::string_view> keys) {
  auto r = impl_->Call("prepare_retrieve", [&](wire::Packer& pk) { return PackKeys(pk, keys); });
  if (!r.ok()) return r.status();
  return impl_->Slots(*r);
}

Status Client::CommitRetrieve(std::span<const std::string_view> keys) {
  return impl_->Call("commit_retrieve", [&](wire::Packer& pk) { return PackKeys(pk, keys); }).status();
}

Result<std::vector<std::string>> Client::Remove(std::span<const std::string_view> keys) {
  auto r = impl_->Call("remove", [&](wire::Packer& pk) { return PackKeys(pk, keys); });
  if (!r.ok()) return r.status();
  auto results = r->fields->Bytes("results", 16);
  if (!results.ok()) return results.status();
  return std::vector<std::string>(results->begin(), results->end());
}

Result<uint64_t> Client::Clear() {
  return U64Field(impl_->Call("clear", nullptr), "removed");
}

Result<std::map<std::string, uint64_t>> Client::Stats() {
  auto r = impl_->Call("stats", nullptr);
  if (!r.ok()) return r.status();
  return ParseStats(*r);
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
