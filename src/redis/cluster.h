// A Redis Cluster client on hiredis (Debian 12 has no cluster-aware C++ client): key slots
// (CRC16), the slot map from CLUSTER SLOTS, one pipelined connection per node, MOVED and ASK
// redirections, reconnects with backoff, slot-map refreshes after failures (so that a promoted
// replica takes over). A single non-cluster Redis works too: every slot maps to it.
//
// Blocking, with a timeout on every connect, read and write (ClusterOptions::timeout): the L3 tier
// runs it on its own I/O threads, never on the server's event loop. A node that failed is not
// dialled again before its backoff passed; its commands fail at once with kUnavailable, so a dead
// node costs one timeout, not one per command.
//
// Thread-safety: a Cluster is used by one thread at a time. Several Clusters (one per I/O thread)
// may share one ClusterCounters.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmkv/status.h"

struct redisReply;  // hiredis

namespace shmkv::redis {

struct Endpoint {
  std::string host;
  uint16_t port = 0;
  std::string ToString() const;  // host:port
  bool operator==(const Endpoint&) const = default;
};

struct ClusterOptions {
  // Seed nodes: any of them answers CLUSTER SLOTS; a single non-cluster Redis is one seed.
  std::vector<Endpoint> seeds;
  // ACL user (empty: the default user) and password (empty: no AUTH).
  std::string user;
  std::string password;
  // Bound of every connect, read and write.
  std::chrono::milliseconds timeout{1000};
};

// redis://[user[:password]@]host:port[,host:port...]; a password in the URL is accepted, but the
// server's command line prefers --redis-password-file or SHMKV_REDIS_PASSWORD (ps shows argv).
Result<ClusterOptions> ParseUrl(std::string_view url);

// The cluster key slot: CRC16 (XMODEM) of the key, or of its {hash tag}, modulo 16384.
inline constexpr uint16_t kSlots = 16384;
uint16_t KeySlot(std::string_view key);

// Shared by every Cluster of one tier; read by stats from another thread.
struct ClusterCounters {
  std::atomic<uint64_t> moved{0};           // MOVED redirections followed
  std::atomic<uint64_t> ask{0};             // ASK redirections followed
  std::atomic<uint64_t> slot_refreshes{0};  // slot maps fetched
  std::atomic<uint64_t> reconnects{0};      // connections made after the first to a node
  std::atomic<uint64_t> auth_errors{0};     // AUTH refused
  std::atomic<uint64_t> config_errors{0};   // a seed in another mode (cluster vs standalone)
  std::atomic<bool> has_map{false};         // some thread holds a slot map with every slot served
};

struct ReplyDeleter {
  void operator()(redisReply* r) const;
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

// Where a bulk-string reply goes: the reader copies the first header.size() bytes of the value
// into `header` and the rest into `payload`, straight from hiredis' read buffer (no reply-sized
// copy in between), when the value is exactly header.size() + payload.size() bytes long. A value
// of another length is returned in the reply as usual (the caller treats it as corrupt).
struct BulkSink {
  std::span<std::byte> header;
  std::span<std::byte> payload;
  bool filled = false;  // set by the reader
};

// One command: its routing key and arguments. An argument is `text` followed by `bytes` (the
// bytes are sent from where they lie, without a copy: a pool slot for SET).
struct Command {
  struct Arg {
    std::string text;
    std::span<const std::byte> bytes;
  };
  std::string key;  // routes the command; empty: any node (e.g. for PING)
  std::vector<Arg> args;
  BulkSink* sink = nullptr;  // for a GET whose value should land in place

  static Command Make(std::string_view key, std::initializer_list<std::string_view> args);
};

// The outcome of one command: a reply (possibly a Redis error reply other than MOVED/ASK), or a
// status saying why there is none (kUnavailable: no route or the node failed; kTimeout).
struct Outcome {
  Status status;
  ReplyPtr reply;
};

class Cluster {
 public:
  Cluster(ClusterOptions options, std::shared_ptr<ClusterCounters> counters);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Runs the commands, pipelined: all of a node's commands are written before its replies are
  // read, and all nodes are written before any is read. Follows MOVED (refreshing the slot map)
  // and ASK (ASKING first) a few times per command. out[i] is commands[i]'s outcome.
  void Execute(std::span<Command> commands, std::vector<Outcome>& out);

  // Every master of the current map (standalone: the one node), for SCAN.
  std::vector<Endpoint> Masters();
  // Runs one command on `node` (e.g. SCAN, which is per node, not per key).
  Outcome ExecuteOn(const Endpoint& node, Command& command);

  // Whether a slot map is held (false before the first successful CLUSTER SLOTS / standalone
  // detection, and after every node failed).
  bool HasMap() const;
  bool standalone() const { return standalone_; }
  // The last connect/auth/map error, for logs and health.
  const std::string& last_error() const { return last_error_; }

 private:
  struct Node;
  Node* NodeFor(const Endpoint& e);
  Node* Connected(const Endpoint& e);  // nullptr while the node is down or in backoff
  void RefreshMap();
  bool MaybeRefreshMap();  // rate-limited
  void NodeFailed(Node& n, std::string why);

  ClusterOptions options_;
  std::shared_ptr<ClusterCounters> counters_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<int16_t> slot_owner_;  // slot -> index in nodes_, -1 unserved
  bool standalone_ = false;
  bool map_stale_ = true;
  std::chrono::steady_clock::time_point next_refresh_{};
  std::string last_error_;
};

}  // namespace shmkv::redis
