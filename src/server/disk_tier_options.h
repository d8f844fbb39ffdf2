// Options of the L2 disk tier (docs/l2-tier.md), apart from DiskTier so that server.h stays light.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace shmkv {

struct DiskTierOptions {
  std::string dir;
  // 0: the bytes already on disk plus 90% of the file system's free space at start.
  uint64_t capacity = 0;
  bool write_through = false;
  std::string worker_binary;  // empty: DefaultFileWorkerBinary()
  size_t queue_depth = 4;     // the worker's I/O threads
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
