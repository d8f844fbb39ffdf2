#include "redis/cluster.h"

#include <hiredis.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <map>
#include <mutex>

#include "common/log.h"
#include "fmt/format.h"

namespace shmkv::redis {

std::string Endpoint::ToString() const {
  return fmt::format("{}:{}", host, port);
}

namespace {

Result<Endpoint> ParseEndpoint(std::string_view s, std::string_view url) {
  const size_t colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return Status::InvalidArgument(fmt::format("redis URL '{}': '{}' is not host:port", url, s));
  }
  Endpoint e;
  e.host = std::string(s.substr(0, colon));
  const std::string_view port = s.substr(colon + 1);
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535) {
    return Status::InvalidArgument(fmt::format("redis URL '{}': port '{}' is not a number in 1..65535", url, port));
  }
  e.port = static_cast<uint16_t>(value);
  return e;
}

timeval ToTimeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

// The reader's object functions with createString replaced: a top-level bulk string whose length
// matches the current BulkSink is copied into it from the read buffer, and the reply carries an
// empty string instead of a second full-size copy.
struct SinkState {
  BulkSink* current = nullptr;
};
redisReplyObjectFunctions* g_default_functions = nullptr;
redisReplyObjectFunctions g_sink_functions;
std::once_flag g_functions_once;

void* CreateStringToSink(const redisReadTask* task, char* str, size_t len) {
  auto* state = static_cast<SinkState*>(task->privdata);
  BulkSink* sink = state ? state->current : nullptr;
  if (sink != nullptr && task->type == REDIS_REPLY_STRING && task->parent == nullptr &&
      len == sink->header.size() + sink->payload.size()) {
    std::memcpy(sink->header.data(), str, sink->header.size());
    std::memcpy(sink->payload.data(), str + sink->header.size(), sink->payload.size());
    sink->filled = true;
    return g_default_functions->createString(task, str, 0);
  }
  return g_default_functions->createString(task, str, len);
}

void InstallSinkFunctions(redisContext* c, SinkState* state) {
  std::call_once(g_functions_once, [c] {
    g_default_functions = c->reader->fn;  // hiredis' own functions (a static table)
    g_sink_functions = *g_default_functions;
    g_sink_functions.createString = CreateStringToSink;
  });
  c->reader->fn = &g_sink_functions;
  c->reader->privdata = state;
}

void AppendText(std::vector<iovec>& iov, std::string_view text) {
  iov.push_back(iovec{const_cast<char*>(text.data()), text.size()});
}

// Writes every byte of `iov` (partial writes and EINTR retried); the socket's send timeout
// bounds each wait.
Status WriteAll(int fd, std::vector<iovec>& iov) {
  size_t first = 0;
  while (first < iov.size()) {
    const int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    const ssize_t n = ::writev(fd, iov.data() + first, count);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Status::Timeout("write timed out");
      return Status::FromErrno("write", errno);
    }
    auto left = static_cast<size_t>(n);
    while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (left > 0) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  return Status::Ok();
}

// Parses "MOVED 3999 127.0.0.1:6381" / "ASK ..." (host may be empty: the answering node's).
std::optional<std::pair<uint16_t, Endpoint>> ParseRedirect(std::string_view msg, std::string_view word,
                                                           const Endpoint& from) {
  if (msg.substr(0, word.size()) != word) return std::nullopt;
  msg.remove_prefix(word.size());
  const size_t space = msg.find(' ');
  if (space == std::string_view::npos) return std::nullopt;
  unsigned slot = 0;
  auto [end, ec] = std::from_chars(msg.data(), msg.data() + space, slot);
  if (ec != std::errc() || slot >= kSlots) return std::nullopt;
  auto ep = ParseEndpoint(msg.substr(space + 1), msg);
  if (!ep.ok()) return std::nullopt;
  if (ep->host.empty()) ep->host = from.host;
  return std::make_pair(static_cast<uint16_t>(slot), *ep);
}

std::string_view ReplyText(const redisReply* r) {
  return r && r->str ? std::string_view(r->str, r->len) : std::string_view();
}

}  // namespace

Result<ClusterOptions> ParseUrl(std::string_view url) {
  constexpr std::string_view kScheme = "redis://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return Status::InvalidArgument(fmt::format("redis URL '{}' must start with redis://", url));
  }
  std::string_view rest = url.substr(kScheme.size());
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  ClusterOptions o;
  if (const size_t at = rest.rfind('@'); at != std::string_view::npos) {
    const std::string_view credentials = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const size_t colon = credentials.find(':');
    o.user = std::string(credentials.substr(0, colon));
    if (colon != std::string_view::npos) o.password = std::string(credentials.substr(colon + 1));
  }
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    auto ep = ParseEndpoint(rest.substr(0, comma), url);
    if (!ep.ok()) return ep.status();
    o.seeds.push_back(*std::move(ep));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  if (o.seeds.empty()) return Status::InvalidArgument(fmt::format("redis URL '{}' names no host:port", url));
  return o;
}

uint16_t KeySlot(std::string_view key) {
  // Only the part inside the first {...} counts, when it is not empty.
  if (const size_t open = key.find('{'); open != std::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  uint16_t crc = 0;  // CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0
  for (char ch : key) {
    crc = static_cast<uint16_t>(crc ^ (static_cast<uint8_t>(ch) << 8));
    for (int bit = 0; bit < 8; ++bit) {
      crc = static_cast<uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
    }
  }
  return crc % kSlots;
}

void ReplyDeleter::operator()(redisReply* r) const {
  freeReplyObject(r);
}

Command Command::Make(std::string_view key, std::initializer_list<std::string_view> args) {
  Command c;
  c.key = std::string(key);
  for (std::string_view a : args) c.args.push_back(Arg{std::string(a), {}});
  return c;
}

struct Cluster::Node {
  struct ContextDeleter {
    void operator()(redisContext* c) const { redisFree(c); }
  };
  Endpoint endpoint;
  std::unique_ptr<redisContext, ContextDeleter> context;
  SinkState sink;
  bool ever_connected = false;
  std::chrono::steady_clock::time_point retry_at{};
  std::chrono::milliseconds backoff{0};
};

Cluster::Cluster(ClusterOptions options, std::shared_ptr<ClusterCounters> counters)
    : options_(std::move(options)), counters_(std::move(counters)) {}

Cluster::~Cluster() = default;

Cluster::Node* Cluster::NodeFor(const Endpoint& e) {
  for (auto& n : nodes_) {
    if (n->endpoint == e) return n.get();
  }
  nodes_.push_back(std::make_unique<Node>());
  nodes_.back()->endpoint = e;
  return nodes_.back().get();
}

void Cluster::NodeFailed(Node& n, std::string why) {
  n.context.reset();
  n.backoff = std::clamp(n.backoff * 2, std::chrono::milliseconds(100), std::chrono::milliseconds(5000));
  n.retry_at = std::chrono::steady_clock::now() + n.backoff;
  if (why != last_error_) Log().warn("L3 redis {}: {}", n.endpoint.ToString(), why);
  last_error_ = std::move(why);
  map_stale_ = true;
}

Cluster::Node* Cluster::Connected(const Endpoint& e) {
  Node* n = NodeFor(e);
  if (n->context) return n;
  if (std::chrono::steady_clock::now() < n->retry_at) return nullptr;
  const timeval tv = ToTimeval(options_.timeout);
  redisContext* raw = redisConnectWithTimeout(e.host.c_str(), e.port, tv);
  if (raw == nullptr) {
    NodeFailed(*n, "cannot allocate a connection");
    return nullptr;
  }
  n->context.reset(raw);
  if (raw->err != 0) {
    NodeFailed(*n, fmt::format("connect failed: {}", raw->errstr));
    return nullptr;
  }
  redisSetTimeout(raw, tv);
  redisEnableKeepAlive(raw);
  if (!options_.password.empty()) {
    ReplyPtr r(static_cast<redisReply*>(
        options_.user.empty() ? redisCommand(raw, "AUTH %b", options_.password.data(), options_.password.size())
                              : redisCommand(raw, "AUTH %b %b", options_.user.data(), options_.user.size(),
                                             options_.password.data(), options_.password.size())));
    if (!r || r->type == REDIS_REPLY_ERROR) {
      if (r) counters_->auth_errors++;
      NodeFailed(*n, r ? fmt::format("authentication failed: {}", ReplyText(r.get()))
                       : fmt::format("AUTH failed: {}", raw->errstr));
      return nullptr;
    }
  }
  InstallSinkFunctions(raw, &n->sink);
  if (n->ever_connected) counters_->reconnects++;
  n->ever_connected = true;
  n->backoff = std::chrono::milliseconds(0);
  return n;
}

bool Cluster::HasMap() const {
  return !slot_owner_.empty();
}

bool Cluster::MaybeRefreshMap() {
  if (!map_stale_ && HasMap()) return true;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_refresh_) return HasMap();
  next_refresh_ = now + std::chrono::milliseconds(250);
  RefreshMap();
  return HasMap();
}

void Cluster::RefreshMap() {
  counters_->slot_refreshes++;
  // Ask the nodes of the current map first (they know about failovers), then the seeds. The
  // first refresh asks every seed, to find one listed in the wrong mode.
  std::vector<Endpoint> candidates;
  for (const auto& n : nodes_) candidates.push_back(n->endpoint);
  for (const auto& s : options_.seeds) {
    if (std::find(candidates.begin(), candidates.end(), s) == candidates.end()) candidates.push_back(s);
  }
  const bool first = !HasMap();
  std::optional<Endpoint> standalone_seed;
  std::vector<int16_t> cluster_map;
  std::vector<Endpoint> owners;
  for (const Endpoint& e : candidates) {
    if (!cluster_map.empty() && !first) break;
    Node* n = Connected(e);
    if (n == nullptr) continue;
    ReplyPtr r(static_cast<redisReply*>(redisCommand(n->context.get(), "CLUSTER SLOTS")));
    if (!r) {
      NodeFailed(*n, fmt::format("CLUSTER SLOTS failed: {}", n->context->errstr));
      continue;
    }
    if (r->type == REDIS_REPLY_ERROR) {
      if (ReplyText(r.get()).find("cluster support disabled") != std::string_view::npos) {
        if (!standalone_seed) standalone_seed = e;
        continue;
      }
      last_error_ = fmt::format("{}: CLUSTER SLOTS: {}", e.ToString(), ReplyText(r.get()));
      continue;
    }
    if (r->type != REDIS_REPLY_ARRAY || !cluster_map.empty()) continue;
    std::vector<int16_t> map(kSlots, -1);
    std::vector<Endpoint> found;
    for (size_t i = 0; i < r->elements; ++i) {
      const redisReply* range = r->element[i];
      if (range->type != REDIS_REPLY_ARRAY || range->elements < 3) continue;
      const redisReply* master = range->element[2];
      if (master->type != REDIS_REPLY_ARRAY || master->elements < 2) continue;
      Endpoint owner{std::string(ReplyText(master->element[0])), static_cast<uint16_t>(master->element[1]->integer)};
      if (owner.host.empty()) owner.host = e.host;
      auto idx = std::find(found.begin(), found.end(), owner) - found.begin();
      if (static_cast<size_t>(idx) == found.size()) found.push_back(owner);
      for (long long s = range->element[0]->integer; s <= range->element[1]->integer && s < kSlots; ++s) {
        map[static_cast<size_t>(s)] = static_cast<int16_t>(idx);
      }
    }
    if (found.empty()) {  // cluster mode, but no slot assigned yet (a cluster being created)
      last_error_ = fmt::format("{}: the cluster serves no slot yet", e.ToString());
      continue;
    }
    cluster_map = std::move(map);
    owners = std::move(found);
  }
  if (!cluster_map.empty()) {
    if (standalone_seed) {
      last_error_ = fmt::format("seed {} is a non-cluster Redis listed with cluster nodes; it is ignored",
                                standalone_seed->ToString());
      // Every Cluster of the tier finds it: counted by each, logged by the first.
      if (counters_->config_errors.fetch_add(1) == 0) Log().error("L3 redis: {}", last_error_);
    }
    slot_owner_.assign(kSlots, -1);
    for (uint16_t s = 0; s < kSlots; ++s) {
      if (cluster_map[s] < 0) continue;
      const Endpoint& owner = owners[static_cast<size_t>(cluster_map[s])];
      NodeFor(owner);
      const auto it = std::find_if(nodes_.begin(), nodes_.end(), [&](const auto& n) { return n->endpoint == owner; });
      slot_owner_[s] = static_cast<int16_t>(it - nodes_.begin());
    }
    standalone_ = false;
    map_stale_ = false;
    return;
  }
  if (standalone_seed) {
    NodeFor(*standalone_seed);
    const auto it =
        std::find_if(nodes_.begin(), nodes_.end(), [&](const auto& n) { return n->endpoint == *standalone_seed; });
    slot_owner_.assign(kSlots, static_cast<int16_t>(it - nodes_.begin()));
    standalone_ = true;
    map_stale_ = false;
    return;
  }
  // Keep the old map (its nodes may come back); the next refresh tries again.
}

std::vector<Endpoint> Cluster::Masters() {
  MaybeRefreshMap();
  std::vector<Endpoint> out;
  for (int16_t owner : slot_owner_) {
    if (owner < 0) continue;
    const Endpoint& e = nodes_[static_cast<size_t>(owner)]->endpoint;
    if (std::find(out.begin(), out.end(), e) == out.end()) out.push_back(e);
  }
  return out;
}

namespace {

// The RESP encoding of `c` (prefixed by ASKING when `asking`), as iovecs over `c`'s own bytes
// and over `framing`, which receives the length lines; the caller reserves args + 1 strings in it
// so that none moves while the iovecs point at them.
void Encode(const Command& c, bool asking, std::vector<iovec>& iov, std::vector<std::string>& framing) {
  if (asking) AppendText(iov, "*1\r\n$6\r\nASKING\r\n");
  const size_t first = framing.size();
  framing.push_back(fmt::format("*{}\r\n", c.args.size()));
  for (const auto& a : c.args) {
    framing.push_back(fmt::format("${}\r\n", a.text.size() + a.bytes.size()));
  }
  size_t f = first;
  AppendText(iov, framing[f++]);
  for (const auto& a : c.args) {
    AppendText(iov, framing[f++]);
    if (!a.text.empty()) AppendText(iov, a.text);
    if (!a.bytes.empty()) iov.push_back(iovec{const_cast<std::byte*>(a.bytes.data()), a.bytes.size()});
    AppendText(iov, "\r\n");
  }
}

}  // namespace

void Cluster::Execute(std::span<Command> commands, std::vector<Outcome>& out) {
  out.clear();
  out.resize(commands.size());
  struct Route {
    std::optional<Endpoint> ask;  // an ASK target for the next try
  };
  std::vector<Route> routes(commands.size());
  // A command whose node failed is tried once more after a slot-map refresh: another thread may
  // have seen a failover this one has not (every command here is idempotent: reads, SET NX, UNLINK).
  std::vector<bool> retried(commands.size(), false);
  std::vector<size_t> retry;
  auto retry_once = [&](size_t i) {
    if (retried[i]) return false;
    retried[i] = true;
    map_stale_ = true;
    retry.push_back(i);
    return true;
  };
  std::vector<size_t> pending(commands.size());
  for (size_t i = 0; i < pending.size(); ++i) pending[i] = i;
  constexpr int kMaxTries = 5;
  for (int attempt = 0; attempt < kMaxTries && !pending.empty(); ++attempt) {
    MaybeRefreshMap();
    // Group by node, keeping each node's commands in order.
    std::map<Node*, std::vector<size_t>> by_node;
    for (size_t i : pending) {
      std::optional<Endpoint> target = routes[i].ask;
      if (!target && !slot_owner_.empty()) {
        const int16_t owner = slot_owner_[KeySlot(commands[i].key)];
        if (owner >= 0) target = nodes_[static_cast<size_t>(owner)]->endpoint;
      }
      if (!target) {
        map_stale_ = true;  // a slot nobody serves: ask again (rate-limited) next time
        out[i].status =
            Status::Unavailable(last_error_.empty() ? std::string("no Redis node serves the key's slot") : last_error_);
        continue;
      }
      Node* n = Connected(*target);
      if (n == nullptr) {
        out[i].status = Status::Unavailable(fmt::format("redis {} is down: {}", target->ToString(), last_error_));
        if (!routes[i].ask) retry_once(i);
        continue;
      }
      by_node[n].push_back(i);
    }
    pending = std::move(retry);
    retry.clear();
    // Write every node's pipeline, then read them: the nodes work in parallel.
    for (auto it = by_node.begin(); it != by_node.end();) {
      std::vector<iovec> iov;
      // One framing vector per command, reserved to its final size: the iovecs point into it.
      std::vector<std::vector<std::string>> framing(it->second.size());
      for (size_t k = 0; k < it->second.size(); ++k) {
        const size_t i = it->second[k];
        framing[k].reserve(commands[i].args.size() + 1);
        Encode(commands[i], routes[i].ask.has_value(), iov, framing[k]);
      }
      Status s = WriteAll(it->first->context->fd, iov);
      if (!s.ok()) {
        for (size_t i : it->second) {
          out[i].status = Status::Unavailable(s.ToString());
          if (retry_once(i)) pending.push_back(i);
        }
        retry.clear();
        NodeFailed(*it->first, fmt::format("write failed: {}", s.ToString()));
        it = by_node.erase(it);
        continue;
      }
      ++it;
    }
    for (auto& [node, indices] : by_node) {
      for (size_t k = 0; k < indices.size(); ++k) {
        const size_t i = indices[k];
        void* raw = nullptr;
        bool failed = false;
        if (routes[i].ask) {
          failed = redisGetReply(node->context.get(), &raw) != REDIS_OK;
          freeReplyObject(raw);
          raw = nullptr;
        }
        node->sink.current = commands[i].sink;
        if (!failed) failed = redisGetReply(node->context.get(), &raw) != REDIS_OK;
        node->sink.current = nullptr;
        routes[i].ask.reset();
        if (failed) {
          const std::string why = fmt::format("read failed: {}", node->context->errstr);
          for (size_t rest = k; rest < indices.size(); ++rest) {
            out[indices[rest]].status = Status::Unavailable(why);
            if (retry_once(indices[rest])) pending.push_back(indices[rest]);
          }
          retry.clear();
          NodeFailed(*node, why);
          break;
        }
        ReplyPtr reply(static_cast<redisReply*>(raw));
        if (reply->type == REDIS_REPLY_ERROR) {
          const std::string_view text = ReplyText(reply.get());
          if (auto moved = ParseRedirect(text, "MOVED ", node->endpoint)) {
            counters_->moved++;
            NodeFor(moved->second);
            const auto owner =
                std::find_if(nodes_.begin(), nodes_.end(), [&](const auto& n) { return n->endpoint == moved->second; });
            if (slot_owner_.empty()) slot_owner_.assign(kSlots, -1);
            slot_owner_[moved->first] = static_cast<int16_t>(owner - nodes_.begin());
            map_stale_ = true;  // more slots moved with it, most likely: refresh (rate-limited)
            pending.push_back(i);
            continue;
          }
          if (auto ask = ParseRedirect(text, "ASK ", node->endpoint)) {
            counters_->ask++;
            routes[i].ask = ask->second;
            pending.push_back(i);
            continue;
          }
        }
        out[i].status = Status::Ok();
        out[i].reply = std::move(reply);
      }
    }
    std::sort(pending.begin(), pending.end());
  }
  for (size_t i : pending) {
    if (out[i].status.ok()) out[i].status = Status::Unavailable("too many MOVED/ASK redirections");
  }
}

Outcome Cluster::ExecuteOn(const Endpoint& node, Command& command) {
  Outcome o;
  Node* n = Connected(node);
  if (n == nullptr) {
    o.status = Status::Unavailable(fmt::format("redis {} is down: {}", node.ToString(), last_error_));
    return o;
  }
  std::vector<iovec> iov;
  std::vector<std::string> framing;
  framing.reserve(command.args.size() + 1);
  Encode(command, false, iov, framing);
  Status s = WriteAll(n->context->fd, iov);
  void* raw = nullptr;
  if (s.ok() && redisGetReply(n->context.get(), &raw) != REDIS_OK) {
    s = Status::Unavailable(fmt::format("read failed: {}", n->context->errstr));
  }
  if (!s.ok()) {
    NodeFailed(*n, s.ToString());
    o.status = Status::Unavailable(s.ToString());
    return o;
  }
  o.reply.reset(static_cast<redisReply*>(raw));
  return o;
}

}  // namespace shmkv::redis
