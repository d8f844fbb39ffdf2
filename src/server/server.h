// shmkv-server: owns the L1 segment and serves the control protocol on a Unix socket from one
// asio event loop. All metadata lives in the Store, in this process's private memory.
//
// Thread-safety: Run() drives everything on the calling thread; Stop() may be called from any
// thread or a signal handler context (it posts to the loop).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "metrics/exporter.h"
#include "protocol/wire.h"
#include "server/disk_tier_options.h"
#include "server/eviction_policy.h"
#include "server/redis_tier_options.h"
#include "server/store.h"
#include "shmkv/segment.h"
#include "shmkv/status.h"

namespace shmkv {

struct ServerOptions {
  // Bytes of the L1 pool (the shared-memory segment).
  uint64_t pool_size = 0;
  // Segment name, normalised with the lmcache_l1_pool_ prefix; unset: derived from the pid.
  std::optional<std::string> shm_name;
  // Directory the segment file is created in (Linux): a hugetlbfs mount or a tmpfs mounted
  // huge=always|within_size for huge pages (docs/huge-pages.md); empty: /dev/shm. Clients attach
  // by the path the registration reports; stale segments there are removed at start too.
  std::string shm_dir = SegmentCreateOptions{}.dir;
  // Huge pages for the pool: off, auto (ask, else 4 KiB pages and a log line) or on (fail unless
  // the whole pool got them, naming the mount and the nr_hugepages needed).
  HugePages huge_pages = SegmentCreateOptions{}.huge_pages;
  // Path of the control socket.
  std::string socket_path;
  // Permission bits of the socket and the segment: 0600 (this uid) or 0660 (also this group).
  uint32_t socket_mode = 0600;
  // Reservations neither committed nor aborted within this time expire (docs/reliability.md).
  std::chrono::milliseconds reserve_ttl = StoreOptions{}.reserve_ttl;
  // Pins not released within this time expire.
  std::chrono::milliseconds pin_ttl = StoreOptions{}.pin_ttl;
  // Largest accepted request frame; a larger length prefix closes the connection. Before a
  // connection has registered, 64 KiB is the limit.
  uint32_t max_frame_bytes = wire::kDefaultMaxFrame;
  // Request bytes buffered by all connections together; a connection whose next read would
  // exceed it is answered with an error (Full) and closed.
  uint64_t max_buffered_bytes = 1ull << 30;
  // Fault the pool in at start (recommended; off only for quick tests of huge pools).
  bool prefault = true;
  // Remove stale lmcache_l1_pool_ segments of dead servers at start.
  bool clean_stale = true;
  // The L2 disk tier (docs/l2-tier.md); unset: L1 only.
  std::optional<DiskTierOptions> disk;
  // L1 eviction and admission (docs/eviction.md).
  EvictionOptions eviction;
  // The L3 Redis tier (docs/l3-redis.md), below L2; unset: no L3.
  std::optional<RedisTierOptions> redis;
  // The Prometheus endpoint (/metrics, /healthz; docs/operations.md); unset: none.
  std::optional<metrics::ExporterOptions> metrics;
};

class Server {
 public:
  // Creates the segment and binds the socket; the server serves once Run() is called.
  static Result<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Serves until Stop() or SIGINT/SIGTERM; returns after a clean shutdown (socket and segment
  // unlinked when the Server is destroyed).
  void Run();
  void Stop();

  const std::string& segment_name() const;
  // The segment's file (Linux), e.g. /dev/shm/lmcache_l1_pool_7.
  const std::string& segment_path() const;
  // The largest page size backing the pool as checked at start (4096: no huge pages; 0: unknown).
  uint64_t page_size() const;
  uint64_t pool_size() const;
  uint64_t generation() const;

  struct Impl;  // the event loop and its state (server.cc)

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// $XDG_RUNTIME_DIR/shmkv.sock, else /tmp/shmkv-<euid>/shmkv.sock: a directory only this user can
// write, so another local user cannot create the socket first.
std::string DefaultSocketPath();
// For the default socket path: creates its directory where shmkv owns it (0700, or 0750 for
// --socket-mode 660) and checks that it belongs to this user and nobody else can write it.
// Other paths are the operator's choice and are not checked.
Status PrepareSocketDirectory(const std::string& socket_path, uint32_t socket_mode);

}  // namespace shmkv
