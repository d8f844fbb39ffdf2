// FileWorkerLink: a shmkv-file-worker child in PIPE mode, driven asynchronously from the server's
// event loop (docs/l2-tier.md). Commands are pipelined on the worker's stdin; its replies come
// back in command order on its stdout, each completing the oldest pending callback. The loop
// never waits on disk I/O.
//
// The worker's life is tied to the server's (docs/l2-tier.md): it gets `--parent-pid <server>`,
// so the kernel SIGKILLs it when the server dies (PR_SET_PDEATHSIG; note that the kernel sends it
// when the spawning *thread* exits, so spawn from a thread that lives as long as the server, as
// the server's one event-loop thread does), and, with lock_fd, it co-holds the disk directory's
// flock as its fd 3, so no new server can lock the directory while an old worker could still
// write into it. It may only ATTACH segments named lmcache_l1_pool_* (--attach-prefix).
//
// The worker's death (EOF or an error on its stdout, or no reply within reply_timeout) fails every
// pending callback with kUnavailable and calls the death handler once; the link stays dead
// (DiskTier spawns a new one). The dead child is reaped asynchronously (a pidfd in the loop; it
// gets 200 ms to exit, then SIGKILL), so a worker stuck in the kernel does not stall the loop;
// the callbacks and the handler run once it is reaped, with how it ended.
//
// Thread-safety: none; every method runs on the io_context's one thread.
#pragma once

#include <sys/types.h>

#include <asio.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "server/disk_tier_options.h"
#include "shmkv/status.h"

namespace shmkv {

struct FileWorkerOptions {
  std::string binary;                                  // path of shmkv-file-worker
  std::string root;                                    // --root
  size_t queue_depth = DiskTierOptions{}.queue_depth;  // --queue-depth
  std::string log_level = "warn";                      // --log-level
  bool direct = false;                                 // --direct (O_DIRECT)
  // A descriptor holding flock(LOCK_EX) on the disk directory's lock file (DiskTier's), or -1.
  // The worker gets it as fd 3 (--lock-fd 3) and keeps it until it has exited. Not owned here.
  int lock_fd = -1;
  // A command unanswered this long means a hung worker (stuck disk, stopped process): it is
  // killed and treated as dead, so waiting loads fail as missing instead of hanging clients.
  std::chrono::milliseconds reply_timeout = DiskTierOptions{}.io_timeout;
};

class FileWorkerLink {
 public:
  // `OK <n>` gives n, `OK` gives 0, `ERROR <reason>` gives kIoError with the reason, a dead
  // worker gives kUnavailable.
  using Callback = std::function<void(Result<uint64_t>)>;
  using DeathHandler = std::function<void(const std::string& why)>;

  // Spawns the worker and attaches it to the segment (a blocking handshake with a deadline:
  // this runs before the server serves). `base_addr` 0: a command's data_ptr is the pool offset.
  static Result<std::unique_ptr<FileWorkerLink>> Start(asio::io_context& io, const FileWorkerOptions& options,
                                                       const std::string& shm_name, uint64_t shm_size,
                                                       DeathHandler on_death);
  // Spawns the worker without attaching it (no blocking): the caller sends ATTACH through Send.
  // For restarts from the running loop.
  static Result<std::unique_ptr<FileWorkerLink>> Spawn(asio::io_context& io, const FileWorkerOptions& options,
                                                       DeathHandler on_death);
  // Closes the worker's stdin (it finishes the commands in flight and exits), waits for it
  // briefly, then kills it.
  ~FileWorkerLink();
  FileWorkerLink(const FileWorkerLink&) = delete;
  FileWorkerLink& operator=(const FileWorkerLink&) = delete;

  // Sends one command line (without '\n'). On a dead link the callback runs from the loop
  // with kUnavailable.
  void Send(std::string line, Callback done);

  bool alive() const { return alive_; }
  pid_t pid() const { return pid_; }
  size_t in_flight() const { return pending_.size(); }

 private:
  FileWorkerLink(asio::io_context& io, pid_t pid, int to_worker, int from_worker,
                 std::chrono::milliseconds reply_timeout, DeathHandler on_death);
  void ReadReplies();
  void WriteMore();
  void Die(const std::string& why);
  void Buried(const std::string& why, const std::string& how);
  void ArmWatchdog();

  asio::io_context& io_;
  pid_t pid_;
  asio::posix::stream_descriptor to_worker_;
  asio::posix::stream_descriptor from_worker_;
  DeathHandler on_death_;
  std::chrono::milliseconds reply_timeout_;
  asio::steady_timer watchdog_;
  asio::steady_timer grace_;                               // SIGKILL when a dying worker lingers
  std::unique_ptr<asio::posix::stream_descriptor> pidfd_;  // readable once the child has exited
  bool reaped_ = false;
  std::deque<Callback> pending_;
  std::string out_pending_, out_flight_;
  // Shared with the pending read: asio commits into it before the handler can see that the link
  // is gone, so it must outlive the link while a read is in flight.
  std::shared_ptr<asio::streambuf> in_ = std::make_shared<asio::streambuf>();
  bool writing_ = false;
  bool alive_ = true;
  // Guards callbacks that outlive the link (asio handlers run after destruction otherwise).
  std::shared_ptr<bool> token_ = std::make_shared<bool>(true);
};

// The default worker binary: next to `server_exe` (or in its file_worker/ subfolder, the build
// tree's layout), else `shmkv-file-worker` from PATH.
std::string DefaultFileWorkerBinary();

}  // namespace shmkv
