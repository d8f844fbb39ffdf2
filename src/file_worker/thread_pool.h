// A fixed set of threads running submitted tasks in FIFO order: the file worker's I/O engine
// (--queue-depth threads, shared by every client). Blocking pread/pwrite on N threads keeps N
// requests in flight at the device, which is what io_uring at depth N would do, with less code.
//
// Thread-safety: Submit may be called from any thread. The destructor runs every task already
// submitted, then joins; no task may be submitted after destruction has begun.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace shmkv::file_worker {

class ThreadPool {
 public:
  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Submit(std::function<void()> task);
  size_t size() const { return threads_.size(); }

 private:
  void Run();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace shmkv::file_worker
