// DiskTier: the L2 local-disk tier of shmkv-server (docs/design.md §7, docs/l2-tier.md).
//
// It owns a shmkv-file-worker child in PIPE mode (FileWorkerLink) attached to the pool, and the
// disk index (DiskIndex). It never blocks the event loop on disk I/O:
//  - write-behind: committed objects are dirty (Store::TakeDirty hands out the oldest first);
//    the tier WRITEs them in the background, keeping each slot io-pinned until the worker
//    replies, after which the L1 copy is clean and eviction drops it without losing anything.
//    Demote mode writes once L1 is past its watermark; --disk-write-through writes every commit.
//    A dirty object that must be evicted before its write is dropped and counted (evicted_dirty).
//  - loads: prepare_retrieve of keys that are only on disk reserves L1 slots, READs into them,
//    and calls back when every load has settled; a failed load frees its slot (never visible).
//  - its own bound and LRU: before a WRITE, the least recently used files are DELETEd.
// Files the tier drops while no worker runs are remembered and deleted once one runs again (or
// at shutdown), so nothing removed comes back at the next start. Keys with I/O in flight are
// never chosen as LRU victims, and a clear/remove during their I/O wins over its late reply.
// The disk directory is locked (flock on DIR/.shmkv.lock) for the server's life.
// When the worker dies, the tier turns unavailable (logged, counted in stats) and L1 serves on;
// objects only on disk are no longer counted as hits. The worker is restarted after a pause, at
// most kMaxWorkerRestarts times in the server's life; after that the tier stays unavailable.
//
// I/O: O_DIRECT when the directory's file system takes it (DiskTierOptions::direct; probed at
// start). Then objects are written padded with zeros to a multiple of 4096 (the file name carries
// the true length, disk_index.h) and read straight into their pool slots, which are 4096-aligned
// and whole multiples of 4096 long, so the padding lands inside the slot.
//
// Keys given to the tier are the Store's: the 16-byte namespace digest + the raw key, which is
// also the disk key (the digest names the folder on disk).
//
// Thread-safety: none; every method runs on the server's event-loop thread.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/syscall.h"
#include "server/disk_index.h"
#include "server/disk_tier_options.h"
#include "server/file_worker_link.h"
#include "server/store.h"
#include "server/tier.h"
#include "shmkv/status.h"

namespace shmkv {

class DiskTier final : public Tier {
 public:
  // `pool`: the server's mapping of the segment, used to zero the padding of an object's slot
  // before it is written (nullptr: the padding holds whatever the slot held).
  static Result<std::unique_ptr<DiskTier>> Start(asio::io_context& io, Store& store, const std::string& shm_name,
                                                 uint64_t shm_size, const DiskTierOptions& options,
                                                 std::byte* pool = nullptr);
  ~DiskTier() override;
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  static constexpr int kMaxWorkerRestarts = 3;
  static constexpr std::chrono::milliseconds kRestartDelay{1000};

  bool available() const { return worker_ && worker_->alive() && attached_; }
  // Whether the worker does O_DIRECT I/O (and objects are padded).
  bool direct() const { return direct_; }

  // Tier. Unavailable (no worker), the tier holds nothing and loads nothing.
  std::string_view name() const override { return "l2"; }
  // Touches the disk keys it counts (the disk LRU) and counts them as hits.
  void LookupLeading(std::span<const std::string_view> keys, const Covered& covered, CountDone done) override;
  bool Holds(std::string_view key) const override;
  void CountedHit(std::string_view key) override;
  // Every committed L1 key of the batch is io-pinned first, then room is reserved for the loads:
  // making room must not evict a later key of this very batch.
  void Load(std::vector<std::string> keys, const Covered& covered, LoadDone done) override;
  // Starts write-behind when the policy says so (write-through: every commit; demote: L1 past
  // its watermark).
  void AfterL1Change() override;
  bool Remove(std::string_view store_key) override;
  size_t Clear(std::string_view namespace_prefix) override;
  void AppendStats(std::vector<TierCounter>& out) const override;
  TierHealth Health() const override;
  // With write-through, writes every dirty object first (at most `limit`); writes in flight
  // always finish (the worker completes them when its input ends).
  void Drain(std::chrono::milliseconds limit, std::function<void()> done) override;

 private:
  struct Counters {
    uint64_t hits = 0, misses = 0, loads = 0, load_bytes = 0, writes = 0, write_bytes = 0, write_errors = 0,
             read_errors = 0, deletes = 0, skipped_too_large = 0, load_full = 0, worker_deaths = 0, worker_restarts = 0,
             write_gave_up = 0, ignored_too_large = 0;
  };
  struct LoadWaiter;

  DiskTier(asio::io_context& io, Store& store, DiskTierOptions options, uint64_t capacity);
  std::string DiskKey(std::string_view store_key) const;  // empty for a key shorter than a digest
  void StartWrite(IoSlot slot);
  void SendPendingDeletes();
  void DeleteFile(const DiskFile& file);
  void DeletePath(const std::string& path);  // relative to the directory
  // Whether `path` is the indexed file of its key, or a write to it is in flight.
  bool FileInUse(const std::string& path) const;
  void OnReadDone(const std::string& key, const DiskFile& file, uint64_t expected, const Result<uint64_t>& r);
  void OnWriteDone(const std::string& key, const DiskFile& file, const Result<uint64_t>& r);
  void OnWriteFailed(const std::string& key, const DiskFile& file, const Result<uint64_t>& r);
  // Bytes a file of an object of `length` takes: padded to the O_DIRECT alignment when direct.
  uint64_t FileBytes(uint64_t length) const { return direct_ ? AlignUp(length) : length; }
  void OnWorkerDeath(const std::string& why);
  void RestartWorker();
  FileWorkerLink::DeathHandler DeathHandler();
  void PauseWrites();
  void CheckDrained();

  asio::io_context& io_;
  Store& store_;
  DiskTierOptions options_;
  DiskIndex index_;
  std::unique_ptr<FileWorkerLink> worker_;
  FileWorkerOptions worker_options_;
  std::string shm_name_;
  uint64_t shm_size_ = 0;
  bool attached_ = false;  // the current worker has answered ATTACH with OK
  bool gave_up_ = false;   // a restart cannot help (binary gone, ATTACH refused)
  asio::steady_timer restart_timer_;
  // Loads in flight: store key -> callbacks waiting for it (the first started the READ).
  std::unordered_map<std::string, std::vector<std::function<void(bool)>>> loading_;
  std::unordered_set<std::string> cancelled_loads_;  // store keys cleared while their READ ran
  // Writes in flight: disk key -> cancelled (removed or cleared meanwhile: not indexed on OK) and
  // the file written.
  struct WriteInFlight {
    bool cancelled = false;
    std::string path;
  };
  std::unordered_map<std::string, WriteInFlight> writing_;
  std::unordered_map<std::string, int> write_failures_;  // store key -> failed WRITEs so far
  // Files (paths relative to the directory) dropped from the index, not deleted yet (no worker
  // was running).
  std::unordered_set<std::string> pending_deletes_;
  bool direct_ = false;        // O_DIRECT I/O, padded files
  std::byte* pool_ = nullptr;  // the server's mapping of the pool (zeroes padding), or null
  sys::UniqueFd dir_lock_;     // flock on DIR/.shmkv.lock, held for the tier's life
  size_t writes_in_flight_ = 0;
  bool writes_paused_ = false;
  bool waiting_for_room_ = false;  // a write waits for an earlier one to free its reservation
  asio::steady_timer backoff_timer_;
  asio::steady_timer drain_timer_;
  std::function<void()> drained_;  // set while Drain waits
  Counters c_;
  std::shared_ptr<bool> alive_token_ = std::make_shared<bool>(true);
};

}  // namespace shmkv
