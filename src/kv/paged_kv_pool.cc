#include "kv/paged_kv_pool.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>

namespace shmkv::kv_internal {

struct WorkerPool::Job {
  TaskFn fn;
  void* ctx;
  size_t tasks;
  size_t helpers_wanted;
  size_t helpers_joined = 0;  // guarded by mu_
  size_t helpers_active = 0;  // guarded by mu_
  std::atomic<size_t> next{0};
};

namespace {

// Owns the process's pool and destroys it at exit, except in a fork() child (see the header).
struct PoolOwner {
  std::unique_ptr<WorkerPool> pool = std::make_unique<WorkerPool>();
  ~PoolOwner() {
    if (::getpid() != pool->owner_pid()) {
      static WorkerPool* forked_away = nullptr;  // keeps it reachable, so leak checkers stay quiet
      forked_away = pool.release();
      (void)forked_away;
    }
  }
};

}  // namespace

WorkerPool& WorkerPool::Instance() {
  static PoolOwner owner;
  return *owner.pool;
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

size_t WorkerPool::workers() const {
  std::lock_guard lock(mu_);
  return threads_.size();
}

void WorkerPool::Drain(Job& job) {
  for (size_t i = job.next.fetch_add(1, std::memory_order_relaxed); i < job.tasks;
       i = job.next.fetch_add(1, std::memory_order_relaxed)) {
    job.fn(job.ctx, i);
  }
}

void WorkerPool::EnsureWorkersLocked(size_t count) {
  while (threads_.size() < count) threads_.emplace_back([this] { WorkerLoop(); });
}

void WorkerPool::RunImpl(size_t tasks, unsigned threads, TaskFn fn, void* ctx) {
  const size_t helpers =
      std::min<size_t>({tasks == 0 ? 0 : tasks - 1, threads == 0 ? 0 : threads - 1, kMaxThreads - 1});
  if (helpers == 0 || ::getpid() != owner_pid_) {
    for (size_t i = 0; i < tasks; ++i) fn(ctx, i);
    return;
  }
  Job job{fn, ctx, tasks, helpers};
  {
    std::lock_guard lock(mu_);
    EnsureWorkersLocked(helpers);
    queue_.push_back(&job);
  }
  for (size_t i = 0; i < helpers; ++i) work_cv_.notify_one();
  Drain(job);
  // Every task is claimed; stop new helpers from joining, then wait for the ones still copying.
  std::unique_lock lock(mu_);
  if (auto it = std::find(queue_.begin(), queue_.end(), &job); it != queue_.end()) queue_.erase(it);
  done_cv_.wait(lock, [&] { return job.helpers_active == 0; });
}

void WorkerPool::WorkerLoop() {
  std::unique_lock lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left to help with
    Job* job = queue_.front();
    ++job->helpers_active;
    if (++job->helpers_joined >= job->helpers_wanted) queue_.pop_front();
    lock.unlock();
    Drain(*job);
    lock.lock();
    // The owner may return as soon as this reaches zero: job is not touched after it.
    if (--job->helpers_active == 0) done_cv_.notify_all();
  }
}

}  // namespace shmkv::kv_internal
