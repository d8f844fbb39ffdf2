// The worker pool behind the multi-threaded paged-KV copies: a fork-join "parallel for" over a
// fixed number of independent tasks, run by the calling thread plus up to threads - 1 helpers.
//
// The pool is process-wide, created on first use and grown on demand (never beyond kMaxThreads),
// and its destructor joins every worker (static destruction at exit). Tasks of one Run never run
// on more threads than asked for; tasks of concurrent Runs interleave on the same workers.
//
// Thread-safety: Run may be called from any number of threads at once. In a child of fork() the
// workers do not exist: Run then executes every task on the calling thread without touching the
// pool's mutex (another thread may have held it at the fork), and at exit the child leaks the
// pool instead of destroying it (its condition variables still count the parent's waiting
// workers, its threads are not the child's to join).
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace shmkv::kv_internal {

class WorkerPool {
 public:
  static constexpr unsigned kMaxThreads = 64;

  static WorkerPool& Instance();

  WorkerPool() = default;
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Calls fn(i) exactly once for every i in [0, tasks), on at most `threads` threads (the caller
  // included), and returns when all calls have returned. fn must not throw.
  template <typename Fn>
  void Run(size_t tasks, unsigned threads, Fn& fn) {
    RunImpl(
        tasks, threads, [](void* ctx, size_t i) { (*static_cast<Fn*>(ctx))(i); }, &fn);
  }

  // Worker threads started so far (tests and benchmarks report it).
  size_t workers() const;
  pid_t owner_pid() const { return owner_pid_; }

 private:
  struct Job;
  using TaskFn = void (*)(void* ctx, size_t index);

  void RunImpl(size_t tasks, unsigned threads, TaskFn fn, void* ctx);
  void EnsureWorkersLocked(size_t count);
  void WorkerLoop();
  static void Drain(Job& job);

  const pid_t owner_pid_ = ::getpid();
  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // a job was queued, or stopping
  std::condition_variable done_cv_;  // a helper left a job
  std::deque<Job*> queue_;           // jobs still accepting helpers
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace shmkv::kv_internal
