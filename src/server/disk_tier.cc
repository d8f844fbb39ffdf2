#include "server/disk_tier.h"

#include <signal.h>
#include <sys/statvfs.h>

#include <filesystem>

#include <fmt/format.h>

#include "common/log.h"

namespace shmkv {

namespace {

constexpr size_t kStorePrefixBytes = 4;  // the server's namespace id in front of every Store key

}  // namespace

Result<std::unique_ptr<DiskTier>> DiskTier::Start(asio::io_context& io, Store& store, const std::string& shm_name,
                                                  uint64_t shm_size, const DiskTierOptions& options) {
  auto scan = ScanDiskDir(options.dir);
  if (!scan.ok()) return scan.status();
  uint64_t found_bytes = 0;
  for (const ScannedFile& f : scan->files) found_bytes += f.size;
  uint64_t capacity = options.capacity;
  if (capacity == 0) {
    struct statvfs vfs {};
    if (::statvfs(options.dir.c_str(), &vfs) != 0) {
      return Status::FromErrno(fmt::format("disk dir '{}': statvfs (give --disk-size)", options.dir), errno);
    }
    const uint64_t free_bytes = uint64_t{vfs.f_bavail} * vfs.f_frsize;
    capacity = found_bytes + free_bytes / 10 * 9;
  }
  if (capacity == 0) return Status::InvalidArgument(fmt::format("disk dir '{}' has no free space", options.dir));

  // Signal handlers are process-wide: a write to a dead worker's pipe must be EPIPE, not death.
  ::signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<DiskTier> tier(new DiskTier(io, store, options, capacity));
  for (const ScannedFile& f : scan->files) tier->index_.Insert(f.disk_key, f.size);  // oldest first = LRU
  size_t trimmed = 0;
  for (const std::string& victim : tier->index_.TrimToCapacity()) {
    std::error_code ec;
    if (std::filesystem::remove(std::filesystem::path(options.dir) / DiskPath(victim), ec)) ++trimmed;
  }
  FileWorkerOptions& wopts = tier->worker_options_;
  wopts.binary = options.worker_binary.empty() ? DefaultFileWorkerBinary() : options.worker_binary;
  wopts.root = options.dir;
  wopts.queue_depth = options.queue_depth;
  tier->shm_name_ = shm_name;
  tier->shm_size_ = shm_size;
  auto link = FileWorkerLink::Start(io, wopts, shm_name, shm_size, tier->DeathHandler());
  if (!link.ok()) return link.status();
  tier->worker_ = std::move(link).value();
  tier->attached_ = true;
  Log().info(
      "L2 disk tier: dir '{}', {} object(s) ({} bytes) found, {} torn temp file(s) removed, {} trimmed to fit, "
      "{} foreign entr(y/ies) ignored; capacity {} bytes; {}; file worker '{}' pid {}",
      options.dir, tier->index_.objects(), tier->index_.bytes(), scan->temp_removed, trimmed, scan->ignored, capacity,
      options.write_through ? "write-through" : "demote on eviction (write-behind)", wopts.binary,
      tier->worker_->pid());
  return tier;
}

DiskTier::DiskTier(asio::io_context& io, Store& store, DiskTierOptions options, uint64_t capacity)
    : io_(io),
      store_(store),
      options_(std::move(options)),
      index_(capacity),
      restart_timer_(io),
      backoff_timer_(io),
      drain_timer_(io) {}

FileWorkerLink::DeathHandler DiskTier::DeathHandler() {
  return [this, token = alive_token_](const std::string& why) {
    if (*token) OnWorkerDeath(why);
  };
}

DiskTier::~DiskTier() {
  *alive_token_ = false;
  backoff_timer_.cancel();
  drain_timer_.cancel();
  restart_timer_.cancel();
  worker_.reset();  // the worker finishes the writes in flight before it exits
}

void DiskTier::RegisterNamespace(std::string_view store_prefix, std::string_view canonical_namespace) {
  std::string digest = NamespaceDigest(canonical_namespace);
  prefix_by_digest_[digest] = std::string(store_prefix);
  digest_by_prefix_[std::string(store_prefix)] = std::move(digest);
}

std::string DiskTier::DiskKey(std::string_view store_key) const {
  if (store_key.size() <= kStorePrefixBytes) return {};
  auto it = digest_by_prefix_.find(std::string(store_key.substr(0, kStorePrefixBytes)));
  if (it == digest_by_prefix_.end()) return {};
  return it->second + std::string(store_key.substr(kStorePrefixBytes));
}

size_t DiskTier::CountOnDisk(std::span<const std::string_view> keys) {
  if (!available()) return 0;
  size_t n = 0;
  for (std::string_view k : keys) {
    const std::string dk = DiskKey(k);
    if (!dk.empty() && index_.Contains(dk)) {
      index_.Touch(dk);
      c_.hits++;
    } else if (!store_.IsCommitted(k)) {
      break;
    }
    ++n;
  }
  return n;
}

Result<std::vector<SlotResult>> DiskTier::PrepareStore(SessionId session, std::span<const std::string_view> keys,
                                                       std::span<const uint64_t> sizes, Clock::time_point now) {
  std::vector<bool> on_disk(keys.size(), false);
  bool any = false;
  if (available() && keys.size() == sizes.size()) {
    for (size_t i = 0; i < keys.size(); ++i) {
      const std::string dk = DiskKey(keys[i]);
      on_disk[i] = !dk.empty() && index_.Contains(dk) && !store_.Contains(keys[i]);
      any = any || on_disk[i];
    }
  }
  if (!any) {
    auto r = store_.PrepareStore(session, keys, sizes, now);
    Pump();
    return r;
  }
  std::vector<std::string_view> rest_keys;
  std::vector<uint64_t> rest_sizes;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (on_disk[i]) continue;
    rest_keys.push_back(keys[i]);
    rest_sizes.push_back(sizes[i]);
  }
  auto rest = store_.PrepareStore(session, rest_keys, rest_sizes, now);
  if (!rest.ok()) return rest.status();
  std::vector<SlotResult> out(keys.size());
  for (size_t i = 0, j = 0; i < keys.size(); ++i) {
    out[i] = on_disk[i] ? SlotResult{SlotOutcome::kExists, 0, 0} : (*rest)[j++];
  }
  Pump();
  return out;
}

bool DiskTier::NeedsLoad(std::span<const std::string_view> keys) const {
  if (!available()) return false;
  for (std::string_view k : keys) {
    if (store_.IsCommitted(k)) continue;
    const std::string dk = DiskKey(k);
    if (!dk.empty() && index_.Contains(dk)) return true;
  }
  return false;
}

void DiskTier::Load(std::vector<std::string> keys, std::function<void(std::vector<std::string> pinned)> done) {
  struct Batch {
    size_t outstanding = 1;  // the loop below holds one until it has started every load
    std::vector<std::string> pinned;
    std::function<void(std::vector<std::string>)> done;
  };
  auto batch = std::make_shared<Batch>();
  batch->done = std::move(done);
  auto settle = [batch] {
    if (--batch->outstanding == 0) batch->done(std::move(batch->pinned));
  };
  for (const std::string& key : keys) {
    if (store_.IsCommitted(key)) {
      // Pinned so that making room for the loads below cannot evict it.
      if (store_.IoPin(key)) batch->pinned.push_back(key);
      continue;
    }
    auto waiting = loading_.find(key);
    if (waiting == loading_.end()) {
      const std::string dk = available() ? DiskKey(key) : std::string();
      const std::optional<uint64_t> size = dk.empty() ? std::nullopt : index_.Size(dk);
      if (!size) break;  // not on disk either: the prefix ends here
      auto offset = store_.ReserveForLoad(key, *size);
      if (!offset.ok()) {
        if (offset.status().code() == StatusCode::kFull) c_.load_full++;
        Log().debug("L2 load skipped: {}", offset.status().ToString());
        break;
      }
      index_.Touch(dk);
      waiting = loading_.emplace(key, std::vector<std::function<void(bool)>>{}).first;
      worker_->Send(fmt::format("READ {} {} {}", DiskPath(dk), *offset, *size),
                    [this, token = alive_token_, key, dk, size = *size](Result<uint64_t> r) {
                      if (!*token) return;
                      const bool ok = r.ok() && *r == size;
                      if (ok) {
                        c_.loads++;
                        c_.load_bytes += size;
                      } else {
                        c_.read_errors++;
                        const std::string why = r.ok() ? fmt::format("read {} of {} bytes (file truncated)", *r, size)
                                                       : r.status().message();
                        Log().error("L2 read of {} failed: {}; the key reports missing", DiskPath(dk), why);
                        // A bad file is dropped so it is not retried; a dead worker leaves the
                        // files alone for the next start.
                        if (!r.ok() && r.status().code() == StatusCode::kUnavailable) {
                        } else if (index_.Erase(dk)) {
                          DeleteFile(dk);
                        }
                      }
                      store_.FinishLoad(key, ok);
                      auto node = loading_.extract(key);
                      if (!node.empty()) {
                        for (auto& w : node.mapped()) w(ok);
                      }
                    });
    }
    batch->outstanding++;
    waiting->second.push_back([this, batch, key, settle](bool ok) {
      if (ok && store_.IoPin(key)) batch->pinned.push_back(key);
      settle();
    });
  }
  // Completes asynchronously even when nothing had to be loaded, so callers have one path.
  asio::post(io_, [settle, token = alive_token_] {
    if (*token) settle();
  });
}

bool DiskTier::Remove(std::string_view store_key) {
  const std::string dk = DiskKey(store_key);
  if (dk.empty() || !index_.Erase(dk)) return false;
  DeleteFile(dk);
  return true;
}

size_t DiskTier::ClearNamespace(std::string_view store_prefix) {
  auto it = digest_by_prefix_.find(std::string(store_prefix));
  if (it == digest_by_prefix_.end()) return 0;
  size_t n = 0;
  for (const std::string& dk : index_.KeysOfNamespace(it->second)) {
    index_.Erase(dk);
    DeleteFile(dk);
    ++n;
  }
  return n;
}

void DiskTier::DeleteFile(const std::string& disk_key) {
  if (!available()) return;  // the index forgets it; a restart finds the file and serves it
  c_.deletes++;
  worker_->Send("DELETE " + DiskPath(disk_key), [path = DiskPath(disk_key)](Result<uint64_t> r) {
    if (!r.ok() && r.status().code() != StatusCode::kUnavailable) {
      Log().warn("L2 delete of {} failed: {}", path, r.status().message());
    }
  });
}

void DiskTier::Pump() {
  if (!available() || writes_paused_ || waiting_for_room_) return;
  while (writes_in_flight_ < options_.max_writes_in_flight) {
    if (!options_.write_through && static_cast<double>(store_.used_bytes()) <
                                       options_.writeback_watermark * static_cast<double>(store_.pool_size())) {
      return;
    }
    std::vector<IoSlot> next = store_.TakeDirty(1);
    if (next.empty()) return;
    StartWrite(std::move(next.front()));
    if (waiting_for_room_ || !available()) return;
  }
}

void DiskTier::StartWrite(IoSlot slot) {
  const std::string dk = DiskKey(slot.key);
  if (dk.empty()) return store_.FinishWrite(slot.key, /*requeue=*/false);
  std::vector<std::string> victims;
  switch (index_.Reserve(slot.length, &victims)) {
    case DiskIndex::Reservation::kTooLarge:
      if (c_.skipped_too_large++ == 0) {
        Log().warn(
            "L2: an object of {} bytes is larger than the whole disk tier ({} bytes, --disk-size); such "
            "objects stay in L1 only",
            slot.length, index_.capacity());
      }
      return store_.FinishWrite(slot.key, /*requeue=*/false);
    case DiskIndex::Reservation::kWait: waiting_for_room_ = true; return store_.FinishWrite(slot.key, /*requeue=*/true);
    case DiskIndex::Reservation::kOk: break;
  }
  for (const std::string& v : victims) DeleteFile(v);
  writes_in_flight_++;
  worker_->Send(
      fmt::format("WRITE {} {} {}", DiskPath(dk), slot.offset, slot.length),
      [this, token = alive_token_, key = slot.key, dk, len = slot.length](Result<uint64_t> r) {
        if (!*token) return;
        writes_in_flight_--;
        index_.Unreserve(len);
        waiting_for_room_ = false;
        if (r.ok() && *r == len) {
          index_.Insert(dk, len);
          c_.writes++;
          c_.write_bytes += len;
          store_.FinishWrite(key, /*requeue=*/false);
        } else {
          c_.write_errors++;
          store_.FinishWrite(key, /*requeue=*/true);
          if (!r.ok() && r.status().code() == StatusCode::kUnavailable) return;  // logged once by the death
          Log().error(
              "L2 write of {} ({} bytes) failed: {}; the object stays in L1 only (dirty), write-behind pauses {} ms; "
              "L1 keeps serving",
              DiskPath(dk), len, r.ok() ? fmt::format("wrote {} bytes", *r) : r.status().message(),
              options_.error_backoff.count());
          PauseWrites();
          if (drained_) {  // shutting down: a failing disk is not waited for
            Log().warn("stopping with {} dirty byte(s) not written to L2: writes fail", store_.dirty_bytes());
            drain_timer_.cancel();
            asio::post(io_, std::exchange(drained_, nullptr));
          }
        }
        Pump();
        CheckDrained();
      });
}

void DiskTier::Drain(std::chrono::milliseconds limit, std::function<void()> done) {
  if (!options_.write_through || !available() || writes_paused_) {
    if (writes_paused_ && store_.dirty_bytes() > 0) {
      Log().warn("stopping with {} dirty byte(s) not written to L2: writes fail", store_.dirty_bytes());
    }
    asio::post(io_, std::move(done));
    return;
  }
  drained_ = std::move(done);
  drain_timer_.expires_after(limit);
  drain_timer_.async_wait([this, token = alive_token_, limit](const asio::error_code& ec) {
    if (ec || !*token || !drained_) return;
    Log().warn("stopping with {} dirty byte(s) not written to L2 after {} ms (the disk is too slow or failing)",
               store_.dirty_bytes(), limit.count());
    auto finish = std::move(drained_);
    drained_ = nullptr;
    finish();
  });
  Pump();
  CheckDrained();
}

void DiskTier::CheckDrained() {
  if (!drained_) return;
  if (available() && (writes_in_flight_ > 0 || store_.dirty_bytes() > 0)) return;
  drain_timer_.cancel();
  auto done = std::move(drained_);
  drained_ = nullptr;
  asio::post(io_, std::move(done));
}

void DiskTier::PauseWrites() {
  writes_paused_ = true;
  backoff_timer_.expires_after(options_.error_backoff);
  backoff_timer_.async_wait([this, token = alive_token_](const asio::error_code& ec) {
    if (ec || !*token) return;
    writes_paused_ = false;
    Pump();
  });
}

void DiskTier::OnWorkerDeath(const std::string& why) {
  c_.worker_deaths++;
  attached_ = false;
  if (c_.worker_restarts < kMaxWorkerRestarts && !drained_) {
    Log().error("L2 disk tier unavailable: {}. L1 keeps serving; restarting the file worker in {} ms ({} of {})", why,
                kRestartDelay.count(), c_.worker_restarts + 1, kMaxWorkerRestarts);
    // Not from here: this runs inside the dead link's handler, which must not be destroyed yet.
    restart_timer_.expires_after(kRestartDelay);
    restart_timer_.async_wait([this, token = alive_token_](const asio::error_code& ec) {
      if (!ec && *token) RestartWorker();
    });
  } else {
    Log().error(
        "L2 disk tier unavailable: {}. L1 keeps serving; the file worker is not restarted again ({} restarts); "
        "objects only on disk are served after the server is restarted with the same --disk-dir",
        why, c_.worker_restarts);
  }
  CheckDrained();
}

void DiskTier::RestartWorker() {
  c_.worker_restarts++;
  worker_.reset();  // already dead and reaped
  auto link = FileWorkerLink::Spawn(io_, worker_options_, DeathHandler());
  if (!link.ok()) {
    c_.worker_restarts = kMaxWorkerRestarts;  // the binary is gone: trying again will not help
    Log().error("L2 disk tier stays unavailable: {}", link.status().ToString());
    return;
  }
  worker_ = std::move(link).value();
  // Asynchronous ATTACH: the loop keeps serving while the worker maps the pool.
  worker_->Send(fmt::format("ATTACH {} {} 0", shm_name_, shm_size_),
                [this, token = alive_token_, pid = worker_->pid()](Result<uint64_t> r) {
                  if (!*token) return;
                  if (!r.ok()) {
                    if (r.status().code() != StatusCode::kUnavailable) {
                      c_.worker_restarts = kMaxWorkerRestarts;
                      Log().error(
                          "L2 disk tier stays unavailable: the restarted file worker (pid {}) refused "
                          "ATTACH: {}",
                          pid, r.status().message());
                    }
                    return;  // a death is handled by OnWorkerDeath
                  }
                  attached_ = true;
                  Log().warn("L2 disk tier available again: file worker restarted (pid {})", pid);
                  Pump();
                });
}

std::vector<std::pair<std::string_view, uint64_t>> DiskTier::Stats() const {
  return {
      {"l2_available", available() ? 1 : 0},
      {"l2_objects", index_.objects()},
      {"l2_bytes", index_.bytes()},
      {"l2_capacity", index_.capacity()},
      {"l2_hits", c_.hits},
      {"l2_loads", c_.loads},
      {"l2_load_bytes", c_.load_bytes},
      {"l2_load_full", c_.load_full},
      {"l2_writes", c_.writes},
      {"l2_write_bytes", c_.write_bytes},
      {"l2_write_errors", c_.write_errors},
      {"l2_read_errors", c_.read_errors},
      {"l2_deletes", c_.deletes},
      {"l2_writes_in_flight", writes_in_flight_},
      {"l2_loads_in_flight", loading_.size()},
      {"l2_skipped_too_large", c_.skipped_too_large},
      {"l2_worker_deaths", c_.worker_deaths},
      {"l2_worker_restarts", c_.worker_restarts},
  };
}

}  // namespace shmkv
