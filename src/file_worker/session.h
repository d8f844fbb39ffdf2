// Session: one client of the file worker (stdin/stdout in PIPE mode, one socket in TCP mode).
//
// A reader thread (the caller of Serve) parses lines and dispatches file commands to the shared
// ThreadPool (whose tasks move READ/WRITE bytes with io_uring when options.uring is set); a writer thread sends replies
// strictly in command order as they complete. Up to `queue_depth` commands of one client run at once. Pipelined
// commands keep the meaning they would have one at a time: a command waits for every earlier in-flight command it
// conflicts with (the same file or directory tree where one of them changes it, or overlapping pool bytes where one of
// them writes the pool) before it starts. ATTACH runs in the reader, in order; each in-flight command holds the
// attachment it was checked against, so a second ATTACH replaces the mapping at once and the old one is unmapped when
// its last command finishes (no leak, no use-after-unmap).
//
// Thread-safety: one Serve call per Session object. Sessions share only the FileStore (immutable)
// and the ThreadPool (thread-safe).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "file_worker/file_store.h"
#include "file_worker/protocol.h"
#include "file_worker/thread_pool.h"
#include "file_worker/uring.h"

namespace shmkv::file_worker {

struct SessionOptions {
  size_t queue_depth = 4;  // commands of this client in flight at once
  std::string token;       // non-empty: the first line must be "AUTH <token>", else ERROR and close
  // With a token: a client that has not authenticated this long after the session started gets
  // "ERROR authentication timeout" and is closed (a partial line does not extend it).
  int auth_timeout_ms = 5000;
  // With a token, called once the token matched; an error is sent as "ERROR <message>" and ends
  // the session (TCP mode: the --max-clients slot, an eviction). Called on the reader thread.
  std::function<Status()> on_authenticated;
  std::string attach_prefix;  // non-empty: ATTACH names must start with it (--attach-prefix)
  int stop_fd = -1;           // when readable (a signalfd, a pipe), stop reading, finish in-flight work, return
  // Non-null: READ/WRITE move their bytes through this io_uring (must outlive the session);
  // null: blocking pread/pwrite on the pool thread.
  UringExecutor* uring = nullptr;
};

// What a command touches, for ordering pipelined commands.
struct Footprint {
  std::string path;          // relative to the root ("" = the root)
  bool tree = false;         // the whole tree under `path` (LIST)
  bool writes_path = false;  // WRITE, DELETE
  bool has_region = false;
  std::string segment;  // full segment name the region lies in
  Region region;
  bool writes_pool = false;  // READ (file -> pool)
};

// True when running a and b concurrently could give a result that running them in order would
// not: they touch the same file (or a directory and something beneath it) and one changes it, or
// their pool bytes overlap in the same segment and one writes the pool.
bool Conflicts(const Footprint& a, const Footprint& b);

class Session {
 public:
  enum class End { kQuit, kEof, kAuthFailed, kShutdown, kIoError };

  Session(const FileStore& store, ThreadPool& pool, SessionOptions options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Serves until QUIT, end of input, a failed AUTH or stop_fd; every accepted command gets its
  // reply written to out_fd (unless the peer is gone) before this returns. in_fd and out_fd may
  // be the same socket; neither is closed.
  End Serve(int in_fd, int out_fd);

 private:
  struct Shared;
  struct Attachment;
  struct Op;

  std::optional<End> HandleLine(std::string_view line);
  void PushReady(std::string reply);
  void Dispatch(Op op, Footprint footprint);
  std::string Attach(const Command& cmd);
  End ReadLoop(int in_fd);
  void WriteLoop(int out_fd);

  const FileStore& store_;
  ThreadPool& pool_;
  SessionOptions options_;
  std::shared_ptr<Shared> shared_;                // state shared with pool tasks and the writer
  std::shared_ptr<const Attachment> attachment_;  // reader thread only
  bool authenticated_ = false;                    // reader thread only
};

std::string_view SessionEndName(Session::End end);

}  // namespace shmkv::file_worker
