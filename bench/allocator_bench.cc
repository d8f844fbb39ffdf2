// Allocate+free pairs per second of the slot allocator at a steady number of live slots.
//
// Each iteration allocates one slot and frees one live slot, so the live count stays fixed.
// Two free orders: `fifo` frees the oldest slot (what LRU eviction does in the server) and
// `random` frees a uniformly random live slot (the cache-hostile worst case).
//
//   build/bench/allocator_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "pool/slot_allocator.h"

namespace shmkv {
namespace {

constexpr uint64_t kUnit = 4096;
constexpr uint64_t kMaxUnitsPerSlot = 2;  // 4-8 KiB slots: 1M of them fit a 64 GiB pool

struct XorShift {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  uint64_t operator()() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
};

void Pairs(benchmark::State& state, bool random_victim) {
  const uint64_t pool = static_cast<uint64_t>(state.range(0)) << 30;
  const auto live = static_cast<size_t>(state.range(1));
  auto made = SlotAllocator::Create(pool, kUnit);
  if (!made.ok()) {
    state.SkipWithError(made.status().ToString().c_str());
    return;
  }
  SlotAllocator a = std::move(made).value();
  if (live * kMaxUnitsPerSlot * kUnit > pool * 9 / 10) {
    state.SkipWithError("this many live slots do not fit this pool (4-8 KiB each)");
    return;
  }
  XorShift rng;
  auto size = [&] { return (rng() % kMaxUnitsPerSlot + 1) * kUnit; };
  std::vector<uint64_t> slots(live);
  for (auto& s : slots) s = *a.Allocate(size());
  size_t oldest = 0;
  for (auto _ : state) {
    const size_t victim = random_victim ? rng() % live : oldest;
    oldest = oldest + 1 == live ? 0 : oldest + 1;
    if (!a.Free(slots[victim]).ok()) state.SkipWithError("free failed");
    auto off = a.Allocate(size());
    if (!off.ok()) state.SkipWithError("allocate failed");
    slots[victim] = *off;
  }
  state.SetItemsProcessed(state.iterations());  // items = allocate+free pairs
  state.counters["live"] = static_cast<double>(live);
}

void Args(benchmark::internal::Benchmark* b) {
  for (int64_t gib : {1, 64}) {
    for (int64_t live : {1'000, 100'000, 1'000'000}) b->Args({gib, live});
  }
  b->ArgNames({"pool_gib", "live"});
}

BENCHMARK_CAPTURE(Pairs, fifo, false)->Apply(Args);
BENCHMARK_CAPTURE(Pairs, random, true)->Apply(Args);

}  // namespace
}  // namespace shmkv

BENCHMARK_MAIN();
