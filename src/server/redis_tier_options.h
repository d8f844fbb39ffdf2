// Options of the L3 Redis tier (docs/l3-redis.md), apart from RedisTier so that server.h stays
// light.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "redis/cluster.h"

namespace shmkv {

enum class RedisWriteMode {
  kBehind,   // committed objects are queued and sent in batches (up to batch_delay later)
  kThrough,  // every commit's objects are sent at once; shutdown waits for them (drain limit)
  kOff,      // never written: the tier only reads what other nodes stored
};
std::string_view RedisWriteModeName(RedisWriteMode mode);

struct RedisTierOptions {
  // Seed nodes, credentials and the timeout of every Redis call.
  redis::ClusterOptions cluster;
  // When committed objects are written to Redis.
  RedisWriteMode write = RedisWriteMode::kBehind;
  // Expiry of stored values; 0: none (Redis' maxmemory policy evicts them).
  std::chrono::seconds ttl{0};
  // Bytes of L1 objects queued or being written at once (they stay io-pinned in L1 meanwhile);
  // a commit past it is not written (l3_write_dropped). Capped at a quarter of the pool.
  uint64_t max_inflight_bytes = 256ull << 20;
  // Threads doing blocking Redis I/O; each has its own connection to every node.
  size_t io_threads = 4;
  // Write-behind waits this long for more commits before sending a batch.
  std::chrono::milliseconds batch_delay{5};
  // Objects and bytes in one write batch (one pipeline per node).
  size_t max_batch_objects = 16;
  uint64_t max_batch_bytes = 64ull << 20;
  // While Redis is unavailable, it is probed this often (it comes back without a restart).
  std::chrono::milliseconds probe_interval{1000};
  // Keys known to be in Redis (learnt from lookups and writes) that the tier remembers, for
  // prepare_store's `exists` and prepare_retrieve's loads.
  size_t max_known_keys = 1u << 20;
};

}  // namespace shmkv
