#include "server/disk_tier.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/statvfs.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "common/log.h"

namespace shmkv {

namespace {

// Errors that say the disk as a whole is not taking writes (retrying other objects now is
// pointless), as opposed to one object's own trouble (a name squatted by a directory, ...).
bool IsGlobalWriteError(std::string_view why) {
  for (std::string_view s :
       {"No space left on device", "Input/output error", "Read-only file system", "Disk quota exceeded"}) {
    if (why.find(s) != std::string_view::npos) return true;
  }
  return false;
}

// One server per disk directory: two would delete each other's files as LRU victims and serve
// stale index entries. flock, so a crashed server's lock is gone with it.
Result<sys::UniqueFd> LockDiskDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IoError(fmt::format("disk dir '{}': cannot create it: {}", dir, ec.message()));
  const std::string path = (std::filesystem::path(dir) / kDiskLockFile).string();
  auto fd = sys::Call([&] { return ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644); });
  if (!fd.ok()) return Status::FromErrno(fmt::format("disk dir '{}': cannot open its lock file {}", dir, path), fd.err);
  sys::UniqueFd lock(fd.value);
  auto locked = sys::Call([&] { return ::flock(lock.get(), LOCK_EX | LOCK_NB); });
  if (locked.err == EWOULDBLOCK) {
    return Status::Busy(fmt::format(
        "disk dir '{}' is in use by another shmkv-server (it holds the lock on {}); give each server its own "
        "--disk-dir",
        dir, path));
  }
  if (!locked.ok()) return Status::FromErrno(fmt::format("disk dir '{}': cannot lock {}", dir, path), locked.err);
  return lock;
}

// Whether the file system of `dir` takes O_DIRECT: a 4096-byte O_DIRECT write and read of a probe
// file, named like the worker's temp files so that one left by a crash is removed at the next
// start. tmpfs before Linux 6.6 (and ramfs, some FUSE file systems) refuse the open (EINVAL).
Status ProbeDirectIo(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / ".shmkv-tmp-direct-probe").string();
  auto fd = sys::Call(
      [&] { return ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_DIRECT | O_NOFOLLOW | O_CLOEXEC, 0600); });
  if (!fd.ok()) {
    ::unlink(path.c_str());  // the create may have happened before the O_DIRECT check failed (ramfs)
    return Status::FromErrno(fmt::format("open({}, O_DIRECT)", path), fd.err);
  }
  sys::UniqueFd file(fd.value);
  void* raw = nullptr;
  if (::posix_memalign(&raw, kDiskBlock, kDiskBlock) != 0) return Status::Internal("posix_memalign failed");
  std::unique_ptr<void, decltype(&std::free)> buf(raw, &std::free);
  std::memset(raw, 0x5a, kDiskBlock);
  auto w = sys::Call([&] { return ::pwrite(file.get(), raw, kDiskBlock, 0); });
  decltype(w) r{0, 0};
  if (w.ok() && w.value == static_cast<ssize_t>(kDiskBlock)) {
    r = sys::Call([&] { return ::pread(file.get(), raw, kDiskBlock, 0); });
  }
  ::unlink(path.c_str());
  if (!w.ok()) return Status::FromErrno(fmt::format("O_DIRECT write of {}", path), w.err);
  if (w.value != static_cast<ssize_t>(kDiskBlock)) return Status::IoError("short O_DIRECT write of the probe");
  if (!r.ok()) return Status::FromErrno(fmt::format("O_DIRECT read of {}", path), r.err);
  if (r.value != static_cast<ssize_t>(kDiskBlock)) return Status::IoError("short O_DIRECT read of the probe");
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<DiskTier>> DiskTier::Start(asio::io_context& io, Store& store, const std::string& shm_name,
                                                  uint64_t shm_size, const DiskTierOptions& options, std::byte* pool) {
  auto lock = LockDiskDir(options.dir);
  if (!lock.ok()) return lock.status();
  auto scan = ScanDiskDir(options.dir);
  if (!scan.ok()) return scan.status();
  bool direct = false;
  if (options.direct != DiskDirectIo::kOff) {
    const Status probe = ProbeDirectIo(options.dir);
    direct = probe.ok();
    if (!direct && options.direct == DiskDirectIo::kOn) {
      return Status::InvalidArgument(
          fmt::format("disk dir '{}': its file system refuses O_DIRECT ({}); use --disk-direct auto or off",
                      options.dir, probe.message()));
    }
    if (!direct) {
      Log().warn("L2: the file system of '{}' refuses O_DIRECT ({}); using buffered I/O (the page cache)", options.dir,
                 probe.message());
    }
  }
  uint64_t found_bytes = 0;
  for (const ScannedFile& f : scan->files) found_bytes += f.file_bytes;
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
  tier->dir_lock_ = std::move(lock).value();
  tier->direct_ = direct;
  tier->pool_ = pool;
  for (const ScannedFile& f : scan->files) {  // oldest first = LRU
    // Left by a run with a bigger pool: it could never be loaded, so it is no hit (kept on disk).
    if (f.size > store.pool_size()) {
      tier->c_.ignored_too_large++;
      continue;
    }
    tier->index_.Insert(f.disk_key, f.size, f.file_bytes);
  }
  if (tier->c_.ignored_too_large > 0) {
    Log().warn("L2: {} file(s) in '{}' are larger than the pool ({} bytes) and are ignored (not served, not deleted)",
               tier->c_.ignored_too_large, options.dir, store.pool_size());
  }
  FileWorkerOptions& wopts = tier->worker_options_;
  wopts.binary = options.worker_binary.empty() ? DefaultFileWorkerBinary() : options.worker_binary;
  wopts.root = options.dir;
  wopts.queue_depth = options.queue_depth;
  wopts.direct = direct;
  wopts.reply_timeout = options.io_timeout;
  // The worker co-holds the directory lock: a new server cannot take the directory while a
  // worker of this one could still write into it.
  wopts.lock_fd = tier->dir_lock_.get();
  tier->shm_name_ = shm_name;
  tier->shm_size_ = shm_size;
  auto link = FileWorkerLink::Start(io, wopts, shm_name, shm_size, tier->DeathHandler());
  if (!link.ok()) return link.status();
  tier->worker_ = std::move(link).value();
  tier->attached_ = true;
  // Only now that the tier can run: a server that fails to start deletes nothing.
  size_t trimmed = 0;
  for (const DiskFile& victim : tier->index_.TrimToCapacity()) {
    std::error_code ec;
    if (std::filesystem::remove(std::filesystem::path(options.dir) / DiskPath(victim), ec)) ++trimmed;
  }
  Log().info(
      "L2 disk tier: dir '{}' (locked), {} object(s) ({} bytes) indexed, {} torn temp file(s) removed, {} superseded "
      "file(s) removed, {} trimmed to fit, {} foreign entr(y/ies) ignored; capacity {} bytes; {}; {}; file worker "
      "'{}' pid {}",
      options.dir, tier->index_.objects(), tier->index_.bytes(), scan->temp_removed, scan->superseded_removed, trimmed,
      scan->ignored, capacity, options.write_through ? "write-through" : "demote on eviction (write-behind)",
      direct ? "O_DIRECT I/O (objects padded to 4096 bytes)" : "buffered I/O", wopts.binary, tier->worker_->pid());
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
  worker_.reset();  // the worker finishes the writes and deletes in flight before it exits
  // Dropped while no worker ran: deleted here (shutdown may block) so the next start does not
  // serve them again.
  for (const std::string& path : pending_deletes_) {
    std::error_code ec;
    std::filesystem::remove(std::filesystem::path(options_.dir) / path, ec);
  }
}

std::string DiskTier::DiskKey(std::string_view store_key) const {
  // A Store key is already a disk key: the namespace digest, then the client's key.
  if (store_key.size() <= kNamespaceDigestBytes) return {};
  return std::string(store_key);
}

void DiskTier::LookupLeading(std::span<const std::string_view> keys, const Covered& covered, CountDone done) {
  size_t n = 0;
  for (std::string_view k : keys) {
    if (!covered(k)) {  // a hit of L1 or another tier is not an L2 hit
      const std::string dk = available() ? DiskKey(k) : std::string();
      if (dk.empty() || !index_.Contains(dk)) {
        c_.misses++;  // the key that ends the run
        break;
      }
      index_.Touch(dk);
      c_.hits++;
    }
    ++n;
  }
  done(n);
}

void DiskTier::CountedHit(std::string_view key) {
  const std::string dk = DiskKey(key);
  if (dk.empty() || !index_.Contains(dk)) return;
  index_.Touch(dk);
  c_.hits++;
}

bool DiskTier::Holds(std::string_view key) const {
  if (!available()) return false;
  const std::string dk = DiskKey(key);
  return !dk.empty() && index_.Contains(dk);
}

void DiskTier::Load(std::vector<std::string> keys, const Covered& covered, LoadDone done) {
  struct Batch {
    size_t outstanding = 1;  // the loop below holds one until it has started every load
    std::vector<std::string> pinned;
    LoadDone done;
  };
  auto batch = std::make_shared<Batch>();
  batch->done = std::move(done);
  auto settle = [batch] {
    if (--batch->outstanding == 0) batch->done(std::move(batch->pinned));
  };
  // First every committed key of the prefix is io-pinned, then room is reserved for the loads:
  // making room must not evict a later key of this very batch.
  std::vector<const std::string*> to_load;
  for (const std::string& key : keys) {
    if (store_.IsCommitted(key)) {
      if (store_.IoPin(key)) batch->pinned.push_back(key);
      continue;
    }
    if (loading_.contains(key)) {
      to_load.push_back(&key);
      continue;
    }
    const std::string dk = available() ? DiskKey(key) : std::string();
    if (dk.empty() || !index_.Contains(dk)) {
      if (covered(key)) continue;  // another tier's: it loads it
      break;                       // in no tier: the prefix ends here
    }
    if (store_.Contains(key)) break;  // reserved in L1 by a client's prepare_store
    to_load.push_back(&key);
  }
  for (const std::string* key_ptr : to_load) {
    const std::string& key = *key_ptr;
    auto waiting = loading_.find(key);
    if (waiting == loading_.end()) {
      const std::string dk = available() ? DiskKey(key) : std::string();
      const std::optional<DiskFile> file = dk.empty() ? std::nullopt : index_.Find(dk);
      if (!file) break;
      auto offset = store_.ReserveForLoad(key, file->length);
      if (!offset.ok()) {
        if (offset.status().code() == StatusCode::kFull) c_.load_full++;
        Log().warn("L2 load skipped, the key reports missing: {}", offset.status().ToString());
        break;
      }
      index_.Touch(dk);
      index_.MarkBusy(dk);  // not an LRU victim while its READ runs
      waiting = loading_.emplace(key, std::vector<std::function<void(bool)>>{}).first;
      // O_DIRECT reads whole blocks: the slot holds AlignUp(length) bytes (4096-byte units), a
      // padded file is that long, and an unpadded one (written before padding, or buffered) ends
      // the read at its size.
      const uint64_t request = FileBytes(file->length);
      const uint64_t expected = std::min(request, file->file_bytes);
      worker_->Send(fmt::format("READ {} {} {}", DiskPath(*file), *offset, request),
                    [this, token = alive_token_, key, file = *file, expected](Result<uint64_t> r) {
                      if (!*token) return;
                      OnReadDone(key, file, expected, r);
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

void DiskTier::OnReadDone(const std::string& key, const DiskFile& file, uint64_t expected, const Result<uint64_t>& r) {
  const std::string& dk = file.disk_key;
  index_.UnmarkBusy(dk);
  const bool cancelled = cancelled_loads_.erase(key) > 0;  // cleared meanwhile: never committed
  const bool read_all = r.ok() && *r == expected;
  if (read_all && !cancelled) {
    c_.loads++;
    c_.load_bytes += file.length;
  } else if (!read_all) {
    c_.read_errors++;
    const std::string why =
        r.ok() ? fmt::format("read {} of {} bytes (file truncated)", *r, expected) : r.status().message();
    // Only a file that is gone or too short is dropped; any other error (EIO, EMFILE, a dead
    // worker) may pass, so the file is kept and the key reports missing this time only.
    const bool gone = !r.ok() && r.status().code() == StatusCode::kIoError &&
                      r.status().message().find("No such file") != std::string::npos;
    const bool drop = (r.ok() || gone) && !cancelled;
    Log().error("L2 read of {} failed: {}; the key reports missing{}", DiskPath(file), why,
                drop ? " and the file is dropped" : " this time (the file is kept)");
    // The index may name another file of the key by now (rewritten meanwhile): drop that one.
    if (drop) {
      if (auto erased = index_.Erase(dk); erased && r.ok()) DeleteFile(*erased);
    }
  }
  const bool ok = read_all && !cancelled;
  store_.FinishLoad(key, ok);
  auto node = loading_.extract(key);
  if (!node.empty()) {
    for (auto& w : node.mapped()) w(ok);
  }
}

bool DiskTier::Remove(std::string_view store_key) {
  const std::string dk = DiskKey(store_key);
  if (dk.empty()) return false;
  write_failures_.erase(std::string(store_key));
  bool removed = false;
  if (auto w = writing_.find(dk); w != writing_.end()) {
    w->second.cancelled = true;  // its reply must not index it
    removed = true;
  }
  if (auto erased = index_.Erase(dk)) {
    DeleteFile(*erased);
    removed = true;
  }
  return removed;
}

size_t DiskTier::Clear(std::string_view namespace_prefix) {
  const std::string prefix(namespace_prefix);  // the namespace digest
  const std::string& digest = prefix;
  size_t disk_only = 0;
  for (const std::string& dk : index_.KeysOfNamespace(digest)) {
    // Store::Clear counts the committed L1 copies.
    if (!store_.IsCommitted(dk)) ++disk_only;
    if (auto erased = index_.Erase(dk)) DeleteFile(*erased);
  }
  for (auto& [dk, w] : writing_) {
    if (dk.starts_with(digest)) w.cancelled = true;
  }
  for (const auto& [key, waiters] : loading_) {
    if (key.starts_with(prefix)) cancelled_loads_.insert(key);
  }
  std::erase_if(write_failures_, [&](const auto& e) { return e.first.starts_with(prefix); });
  return disk_only;
}

void DiskTier::DeleteFile(const DiskFile& file) {
  DeletePath(DiskPath(file));
}

void DiskTier::DeletePath(const std::string& path) {
  // DELETE needs no ATTACH, only a running worker; until one runs, the file is remembered.
  if (!worker_ || !worker_->alive()) {
    pending_deletes_.insert(path);
    return;
  }
  worker_->Send("DELETE " + path, [this, token = alive_token_, path](Result<uint64_t> r) {
    if (!*token) return;
    if (r.ok()) {
      c_.deletes++;
    } else if (r.status().code() == StatusCode::kUnavailable) {
      // The worker died first: try again with the next one, unless that file was written anew.
      if (!FileInUse(path)) pending_deletes_.insert(path);
    } else {
      Log().warn("L2 delete of {} failed: {}", path, r.status().message());
    }
  });
}

bool DiskTier::FileInUse(const std::string& path) const {
  const std::optional<ParsedDiskPath> parsed = ParseDiskFilePath(path);
  if (!parsed) return false;
  if (auto f = index_.Find(parsed->disk_key); f && DiskPath(*f) == path) return true;
  auto w = writing_.find(parsed->disk_key);
  return w != writing_.end() && w->second.path == path;
}

void DiskTier::SendPendingDeletes() {
  std::unordered_set<std::string> todo;
  todo.swap(pending_deletes_);
  for (const std::string& path : todo) DeletePath(path);
}

void DiskTier::AfterL1Change() {
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
  if (writing_.contains(dk)) {  // the same file is being written: wait for that reply
    waiting_for_room_ = true;
    return store_.FinishWrite(slot.key, /*requeue=*/true);
  }
  const DiskFile file{dk, slot.length, FileBytes(slot.length)};
  std::vector<DiskFile> victims;
  const DiskIndex::Reservation reservation = index_.Reserve(file.file_bytes, &victims);
  for (const DiskFile& v : victims) DeleteFile(v);  // erased from the index: their files must go
  switch (reservation) {
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
  const std::string path = DiskPath(file);
  pending_deletes_.erase(path);  // this write replaces the file
  writing_[dk] = WriteInFlight{false, path};
  writes_in_flight_++;
  // The padding goes to disk from the slot (4096-unit slots: it is the slot's own tail); zeroed,
  // so that the file holds nothing but the object.
  if (file.padded() && pool_ != nullptr)
    std::memset(pool_ + slot.offset + slot.length, 0, file.file_bytes - slot.length);
  worker_->Send(fmt::format("WRITE {} {} {}", path, slot.offset, file.file_bytes),
                [this, token = alive_token_, key = slot.key, file](Result<uint64_t> r) {
                  if (!*token) return;
                  OnWriteDone(key, file, r);
                });
}

void DiskTier::OnWriteDone(const std::string& key, const DiskFile& file, const Result<uint64_t>& r) {
  const std::string& dk = file.disk_key;
  const uint64_t len = file.length;
  writes_in_flight_--;
  index_.Unreserve(file.file_bytes);
  waiting_for_room_ = false;
  auto node = writing_.extract(dk);
  const bool cancelled = !node.empty() && node.mapped().cancelled;
  if (cancelled) {
    // Removed or cleared while it was written: neither tier may keep it.
    store_.FinishWrite(key, /*requeue=*/false);
    const std::string_view k = key;
    (void)store_.Remove(std::span(&k, 1));
    write_failures_.erase(key);
    if (r.ok()) DeleteFile(file);
  } else if (r.ok() && *r == file.file_bytes) {
    // A file of the key under another name (padded or not: written by another mode or length
    // before) is replaced by this one.
    if (auto old = index_.Find(dk); old && DiskPath(*old) != DiskPath(file)) DeleteFile(*old);
    index_.Insert(dk, len, file.file_bytes);
    c_.writes++;
    c_.write_bytes += len;
    write_failures_.erase(key);
    store_.FinishWrite(key, /*requeue=*/false);
  } else {
    OnWriteFailed(key, file, r);
  }
  AfterL1Change();
  CheckDrained();
}

void DiskTier::OnWriteFailed(const std::string& key, const DiskFile& file, const Result<uint64_t>& r) {
  const uint64_t len = file.length;
  c_.write_errors++;
  if (!r.ok() && r.status().code() == StatusCode::kUnavailable) {
    store_.FinishWrite(key, /*requeue=*/true);  // the death is logged once; the next worker writes it
    return;
  }
  const std::string why = r.ok() ? fmt::format("wrote {} bytes", *r) : r.status().message();
  // A short write is the disk filling up.
  if (r.ok() || IsGlobalWriteError(why)) {
    store_.FinishWrite(key, /*requeue=*/true);
    Log().error(
        "L2 write of {} ({} bytes) failed: {}; the object stays in L1 only (dirty), write-behind pauses {} ms; "
        "L1 keeps serving",
        DiskPath(file), len, why, options_.error_backoff.count());
    PauseWrites();
    if (drained_) {  // shutting down: a failing disk is not waited for
      Log().warn("stopping with {} dirty byte(s) not written to L2: writes fail", store_.dirty_bytes());
      drain_timer_.cancel();
      asio::post(io_, std::exchange(drained_, nullptr));
    }
    return;
  }
  // This object's own trouble: the others go on; it is retried after them, a few times.
  const int failures = ++write_failures_[key];
  if (failures >= options_.max_write_failures) {
    write_failures_.erase(key);
    c_.write_gave_up++;
    store_.FinishWrite(key, /*requeue=*/false);
    Log().error("L2 write of {} ({} bytes) failed {} times, last: {}; given up: the object stays in L1 only",
                DiskPath(file), len, failures, why);
    return;
  }
  store_.FinishWrite(key, /*requeue=*/true);
  Log().error("L2 write of {} ({} bytes) failed: {}; retried after the other dirty objects ({} of {})", DiskPath(file),
              len, why, failures, options_.max_write_failures);
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
  AfterL1Change();
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
    AfterL1Change();
  });
}

void DiskTier::OnWorkerDeath(const std::string& why) {
  c_.worker_deaths++;
  attached_ = false;
  if (!gave_up_ && c_.worker_restarts < kMaxWorkerRestarts && !drained_) {
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
    gave_up_ = true;  // the binary is gone: trying again will not help
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
                      gave_up_ = true;
                      Log().error(
                          "L2 disk tier stays unavailable: the restarted file worker (pid {}) refused "
                          "ATTACH: {}",
                          pid, r.status().message());
                    }
                    return;  // a death is handled by OnWorkerDeath
                  }
                  attached_ = true;
                  Log().warn("L2 disk tier available again: file worker restarted (pid {})", pid);
                  AfterL1Change();
                });
  SendPendingDeletes();  // DELETE needs no ATTACH
}

void DiskTier::AppendStats(std::vector<TierCounter>& out) const {
  out.insert(out.end(), {
                            {"l2_available", available() ? 1 : 0},
                            {"l2_objects", index_.objects()},
                            {"l2_bytes", index_.bytes()},
                            {"l2_capacity", index_.capacity()},
                            {"l2_hits", c_.hits},
                            {"l2_misses", c_.misses},
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
                            {"l2_write_gave_up", c_.write_gave_up},
                            {"l2_ignored_too_large", c_.ignored_too_large},
                            {"l2_pending_deletes", pending_deletes_.size()},
                            {"l2_worker_deaths", c_.worker_deaths},
                            {"l2_worker_restarts", c_.worker_restarts},
                        });
}

TierHealth DiskTier::Health() const {
  if (available()) return {};
  if (gave_up_) return {false, "the file worker cannot be restarted (see the log)"};
  return {false, worker_ && worker_->alive() ? "the file worker has not attached the pool"
                                             : "the file worker is not running; a restart is pending"};
}

}  // namespace shmkv
