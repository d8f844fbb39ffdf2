// Options of the L2 disk tier (docs/l2-tier.md), apart from DiskTier so that server.h stays light.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace shmkv {

// O_DIRECT for the tier's files (docs/l2-tier.md): auto uses it when the directory's file system
// takes it (probed at start, else buffered I/O with a warning), on refuses to start without it,
// off always goes through the page cache.
enum class DiskDirectIo : uint8_t { kAuto, kOn, kOff };

struct DiskTierOptions {
  // The directory of the tier's files (created when missing; locked for the server's life).
  std::string dir;
  // Bytes of files the tier keeps; 0: the bytes already on disk plus 90% of the file system's
  // free space at start.
  uint64_t capacity = 0;
  // Write every committed object at once (true), or write-behind once L1 passes
  // writeback_watermark (false).
  bool write_through = false;
  DiskDirectIo direct = DiskDirectIo::kAuto;
  // The shmkv-file-worker binary; empty: DefaultFileWorkerBinary().
  std::string worker_binary;
  // The worker's I/O threads (its --queue-depth).
  size_t queue_depth = 4;
  // WRITEs of write-behind outstanding at once.
  size_t max_writes_in_flight = 4;
  // Demote mode starts write-behind once L1's used bytes pass this fraction of the pool.
  double writeback_watermark = 0.5;
  // After a failed WRITE, write-behind pauses this long (a full disk is not hammered).
  std::chrono::milliseconds error_backoff{1000};
  // A WRITE of one object failing this often (for a reason of its own, not a full or failing
  // disk) gives up on it: it stays in L1 only (l2_write_gave_up).
  int max_write_failures = 3;
  // The file worker is treated as hung (killed, restarted) after this long without a reply.
  std::chrono::milliseconds io_timeout{30000};
};

}  // namespace shmkv
