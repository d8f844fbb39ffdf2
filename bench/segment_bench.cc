// Creating and prefaulting a 4 GiB pool segment, beside memset of 4 GiB in the same run.
//
//   build/bench/segment_bench
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <cstring>

#include "shmkv/segment.h"

namespace shmkv {
namespace {

constexpr uint64_t kSize = 4ull << 30;

void SegmentCreatePrefault(benchmark::State& state) {
  int n = 0;
  for (auto _ : state) {
    SegmentCreateOptions o;
    o.name = "bench_" + std::to_string(::getpid()) + "_" + std::to_string(n++);
    o.size = kSize;
    o.pin_with_cuda = false;
    auto seg = SharedSegment::Create(o);
    if (!seg.ok()) {
      state.SkipWithError(seg.status().ToString().c_str());
      return;
    }
    benchmark::DoNotOptimize(seg->data());
    state.PauseTiming();  // destruction (munmap + unlink) is not part of start-up cost
    { auto gone = std::move(seg); }
    state.ResumeTiming();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kSize));
}

// memset over memory already faulted in: the bandwidth floor for touching 4 GiB.
void MemsetWarm(benchmark::State& state) {
  void* p = ::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) {
    state.SkipWithError("mmap failed");
    return;
  }
  for (auto _ : state) {
    std::memset(p, 1, kSize);
    benchmark::ClobberMemory();
  }
  ::munmap(p, kSize);
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kSize));
}

// memset over fresh anonymous memory: what "allocate and touch 4 GiB" costs a process.
void MemsetFresh(benchmark::State& state) {
  for (auto _ : state) {
    void* p = ::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      state.SkipWithError("mmap failed");
      return;
    }
    std::memset(p, 1, kSize);
    benchmark::ClobberMemory();
    state.PauseTiming();
    ::munmap(p, kSize);
    state.ResumeTiming();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kSize));
}

BENCHMARK(SegmentCreatePrefault)->Unit(benchmark::kMillisecond)->Iterations(5)->UseRealTime();
BENCHMARK(MemsetWarm)->Unit(benchmark::kMillisecond)->Iterations(5)->UseRealTime();
BENCHMARK(MemsetFresh)->Unit(benchmark::kMillisecond)->Iterations(5)->UseRealTime();

}  // namespace
}  // namespace shmkv

BENCHMARK_MAIN();
