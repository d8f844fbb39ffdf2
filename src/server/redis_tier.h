// RedisTier: the L3 tier of shmkv-server, on a Redis Cluster shared by the nodes (docs/design.md §7,
// docs/l3-redis.md). A chunk stored through one node's server is found and loaded by another's.
//
// Redis I/O is blocking hiredis on the tier's own threads (redis::Cluster, one per thread); the
// event loop only queues work and takes completions (posted back to it), so a slow or dead Redis
// never blocks L1 or L2.
//  - lookup: the keys nobody above holds are asked with STRLEN, one pipelined round trip per node;
//    the lengths tell the load's size. Keys found are remembered (Holds) for prepare_store's
//    `exists` and prepare_retrieve's loads.
//  - loads: L1 slots are reserved, and GET replies are copied from hiredis' read buffer straight
//    into them; header and checksum are verified on the I/O thread before FinishLoad. A wrong
//    value is a miss (l3_miss_corrupt) and is deleted from Redis.
//  - writes: every commit's objects are io-pinned in L1 and queued (bounded in bytes; past the
//    bound they are not written, l3_write_dropped); batches go out as EXISTS, then SET NX [EX] for
//    the absent ones: content-addressed chunks are never written twice. The value is sent from
//    the pool slot (writev), not copied.
//  - unavailable (no node answers): lookups skip L3, commits are not queued, a probe runs every
//    probe_interval and the tier comes back by itself.
// Objects loaded from L3 are not written to L2 (they are clean in L1): L3 holds them already, and
// a node's repeated use of them is served from L1.
//
// Thread-safety: every public method runs on the server's event-loop thread; the I/O threads
// touch only what a job captured (pool bytes of slots io-pinned or reserved for them) and the
// atomic cluster counters.
#pragma once

#include <asio.hpp>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "redis/cluster.h"
#include "server/redis_tier_options.h"
#include "server/store.h"
#include "server/tier.h"
#include "shmkv/status.h"

namespace shmkv {

class RedisTier final : public Tier {
 public:
  // Connects once on the calling thread (bounded by the timeout) to report the cluster's state;
  // Redis being down is not an error (the tier starts unavailable and retries). Errors: options
  // that can never work.
  static Result<std::unique_ptr<RedisTier>> Start(asio::io_context& io, Store& store, std::byte* pool,
                                                  uint64_t pool_size, const RedisTierOptions& options);
  ~RedisTier() override;
  RedisTier(const RedisTier&) = delete;
  RedisTier& operator=(const RedisTier&) = delete;

  std::string_view name() const override { return "l3"; }
  void LookupLeading(std::span<const std::string_view> keys, const Covered& covered, CountDone done) override;
  bool Holds(std::string_view key) const override;
  void CountedHit(std::string_view) override { c_.hits++; }
  void Load(std::vector<std::string> keys, const Covered& covered, LoadDone done) override;
  void AfterL1Change() override {}  // writes follow Committed, not L1's fill
  void Committed(std::span<const std::string_view> keys) override;
  // Deletes the key in Redis (in the background); true when the tier knew it was there.
  bool Remove(std::string_view key) override;
  // Deletes the namespace's keys in Redis (SCAN + UNLINK on every master, in the background);
  // counts the keys the tier knew of that L1 lacks.
  size_t Clear(std::string_view namespace_prefix) override;
  void AppendStats(std::vector<TierCounter>& out) const override;
  TierHealth Health() const override;
  // Writes what is queued (both modes), within `limit`.
  void Drain(std::chrono::milliseconds limit, std::function<void()> done) override;

 private:
  enum class LoadResult : uint8_t { kOk, kAbsent, kCorrupt, kUnavailable };
  enum class WriteResult : uint8_t { kWritten, kExisted, kError, kUnavailable };
  struct Counters {
    uint64_t hits = 0, misses = 0, loads = 0, load_bytes = 0, load_full = 0, writes = 0, write_bytes = 0,
             write_skipped_exists = 0, write_dropped = 0, write_errors = 0, miss_unavailable = 0, miss_corrupt = 0,
             miss_absent = 0, deletes = 0;
  };
  struct LoadItem {
    std::string key;
    uint64_t offset = 0;
    uint64_t size = 0;
  };
  using Job = std::function<void(redis::Cluster&)>;

  RedisTier(asio::io_context& io, Store& store, std::byte* pool, RedisTierOptions options, bool available,
            std::shared_ptr<redis::ClusterCounters> counters);
  void Submit(Job job);
  void RunThread();
  // Runs `f` on the event loop, unless the tier is gone by then (called from I/O threads).
  void PostToLoop(std::function<void()> f);
  void SetAvailable(bool up, std::string why);
  void ScheduleProbe();  // a probe after probe_interval (while unavailable)
  void ProbeNow();
  // After a job: it reached some node (`any_answer`), or a probe must tell whether any does.
  void SomeCallsFailed(bool any_answer);
  void Remember(const std::string& key, uint64_t size);
  void OnLoadsDone(const std::vector<LoadItem>& items, const std::vector<LoadResult>& results);
  void PumpWrites(bool flush);
  void StartWriteBatch();
  void OnWritesDone(const std::vector<IoSlot>& batch, const std::vector<WriteResult>& results,
                    const std::vector<std::string>& errors);
  void DeleteInRedis(std::vector<std::string> redis_keys);
  void CheckDrained();

  asio::io_context& io_;
  Store& store_;
  std::byte* pool_;
  RedisTierOptions options_;
  std::shared_ptr<redis::ClusterCounters> cluster_counters_;  // shared by the I/O threads' Clusters
  Counters c_;
  bool available_ = false;
  std::string unavailable_reason_;
  asio::steady_timer probe_timer_;
  bool probing_ = false;
  // Keys known to be in Redis -> payload bytes.
  std::unordered_map<std::string, uint64_t, KeyHash, std::equal_to<>> known_;
  // Loads in flight: key -> waiters (the first Load started the GET).
  std::unordered_map<std::string, std::vector<std::function<void(bool)>>, KeyHash, std::equal_to<>> loading_;
  std::unordered_set<std::string, KeyHash, std::equal_to<>> cancelled_loads_;
  // Writes: queued (io-pinned in L1) and in flight.
  std::deque<IoSlot> write_queue_;
  std::unordered_set<std::string, KeyHash, std::equal_to<>> writing_;  // queued or in flight
  std::unordered_set<std::string, KeyHash, std::equal_to<>> cancelled_writes_;
  uint64_t write_bytes_pending_ = 0;  // queued + in flight
  uint64_t max_pending_bytes_ = 0;
  size_t write_batches_in_flight_ = 0;
  asio::steady_timer batch_timer_;
  bool batch_timer_armed_ = false;
  std::string last_write_error_;
  std::chrono::steady_clock::time_point last_write_error_log_{};
  asio::steady_timer drain_timer_;
  std::function<void()> drained_;
  std::shared_ptr<bool> alive_token_ = std::make_shared<bool>(true);

  // The I/O threads and their queue.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace shmkv
