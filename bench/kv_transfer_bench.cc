// Paged-KV gather/scatter throughput for the demo geometry, each against memcpy of the same bytes
// timed in the same iterations (interleaved, so both see the same machine load).
//
//   build/bench/kv_transfer_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// Geometry: 8 layers, block 16, chunk 256 tokens, bfloat16 (2 bytes). NHD/HND: 8 KV heads x head
// size 128 (8 MiB per chunk); MLA: one latent of head_dim 576 as in DeepSeek-V3 (2.25 MiB per
// chunk). The block table is a shuffled set of distinct blocks of a 320-block cache, as an engine's
// allocator hands out after some churn. Arguments: layout (0 NHD, 1 HND, 2 MLA), chunks (1 = one
// 256-token chunk, 16 = a 4096-token prompt), threads (0 auto, 1 calling thread only, 2 = both cores of the dev
// machine). Counters: bytes_per_second of the kernel, memcpy_GBps of the baseline, vs_memcpy = memcpy time / kernel
// time over the same iterations (>= 1 is faster than memcpy).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "shmkv/paged_kv.h"

namespace shmkv {
namespace {

constexpr uint64_t kNumBlocks = 320;  // 16 chunks x 16 blocks + spare
constexpr uint64_t kMaxChunks = 16;

KvGeometry DemoGeometry(KvLayout layout) {
  KvGeometry g;
  g.layout = layout;
  g.num_layers = 8;
  g.num_blocks = kNumBlocks;
  g.block_size = 16;
  g.num_kv_heads = layout == KvLayout::kMLA ? 1 : 8;
  g.head_size = layout == KvLayout::kMLA ? 576 : 128;
  g.element_size = 2;
  g.chunk_tokens = 256;
  return g;
}

// Page-aligned, prefaulted memory (the pool's slots are page-aligned too).
struct Buffer {
  std::unique_ptr<std::byte, decltype(&std::free)> p{nullptr, &std::free};
  size_t size = 0;
  explicit Buffer(size_t n)
      : p(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096)), &std::free), size(n) {
    std::mt19937_64 rng(n);
    for (size_t i = 0; i < n; i += 8) {
      const uint64_t v = rng();
      std::memcpy(p.get() + i, &v, std::min<size_t>(8, n - i));
    }
  }
  std::byte* data() const { return p.get(); }
};

struct Setup {
  std::vector<Buffer> layers;
  PagedKvCache kv;
  std::vector<int64_t> block_ids;
  std::vector<Buffer> chunks;
  Buffer memcpy_src;

  explicit Setup(KvLayout layout) : memcpy_src(kMaxChunks * DemoGeometry(layout).chunk_bytes()) {
    kv.geometry = DemoGeometry(layout);
    for (uint32_t l = 0; l < kv.geometry.num_layers; ++l) {
      layers.emplace_back(kv.geometry.layer_bytes());
      kv.layers.push_back(layers.back().data());
    }
    block_ids.resize(kNumBlocks);
    std::iota(block_ids.begin(), block_ids.end(), 0);
    std::shuffle(block_ids.begin(), block_ids.end(), std::mt19937_64(42));
    for (uint64_t c = 0; c < kMaxChunks; ++c) chunks.emplace_back(kv.geometry.chunk_bytes());
  }
};

Setup& SetupFor(KvLayout layout) {
  static std::map<KvLayout, std::unique_ptr<Setup>> setups;
  auto& s = setups[layout];
  if (!s) s = std::make_unique<Setup>(layout);
  return *s;
}

template <bool kGather>
void Transfer(benchmark::State& state) {
  const auto layout = static_cast<KvLayout>(state.range(0));
  const auto chunks = static_cast<size_t>(state.range(1));
  const TransferOptions options{.threads = static_cast<unsigned>(state.range(2))};
  Setup& s = SetupFor(layout);
  const uint64_t chunk_bytes = s.kv.geometry.chunk_bytes();
  const uint64_t bytes = chunks * chunk_bytes;
  std::vector<std::span<std::byte>> out;
  std::vector<std::span<const std::byte>> in;
  std::vector<uint32_t> indices;
  for (size_t c = 0; c < chunks; ++c) {
    out.emplace_back(s.chunks[c].data(), chunk_bytes);
    in.emplace_back(s.chunks[c].data(), chunk_bytes);
    indices.push_back(static_cast<uint32_t>(c));
  }
  using Clock = std::chrono::steady_clock;
  double kernel_s = 0;
  double memcpy_s = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    const Status st = kGather ? GatherChunks(s.kv, s.block_ids, indices, out, options)
                              : ScatterChunks(in, s.kv, s.block_ids, 0, options);
    const auto t1 = Clock::now();
    benchmark::ClobberMemory();
    if (!st.ok()) {
      state.SkipWithError(st.ToString().c_str());
      return;
    }
    // The baseline: one memcpy of the same number of bytes, into the same destination memory
    // for a gather (the chunk buffers), out of the same source for a scatter.
    const auto t2 = Clock::now();
    for (size_t c = 0; c < chunks; ++c) {
      std::byte* src_side = s.memcpy_src.data() + c * chunk_bytes;
      if (kGather) {
        std::memcpy(s.chunks[c].data(), src_side, chunk_bytes);
      } else {
        std::memcpy(src_side, s.chunks[c].data(), chunk_bytes);
      }
    }
    const auto t3 = Clock::now();
    benchmark::ClobberMemory();
    const double k = std::chrono::duration<double>(t1 - t0).count();
    kernel_s += k;
    memcpy_s += std::chrono::duration<double>(t3 - t2).count();
    state.SetIterationTime(k);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.counters["memcpy_GBps"] = static_cast<double>(state.iterations() * bytes) / memcpy_s / 1e9;
  state.counters["vs_memcpy"] = memcpy_s / kernel_s;
  state.SetLabel(std::string(KvLayoutName(layout)) + (kGather ? " gather " : " scatter ") + std::to_string(chunks) +
                 " chunk(s) threads=" + (options.threads == 0 ? "auto" : std::to_string(options.threads)));
}

void Args(benchmark::internal::Benchmark* b) {
  for (int64_t layout : {0, 1, 2}) {
    for (int64_t chunks : {1, 16}) {
      for (int64_t threads : {0, 1, 2}) b->Args({layout, chunks, threads});
    }
  }
  b->ArgNames({"layout", "chunks", "threads"})->UseManualTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK(Transfer<true>)->Name("Gather")->Apply(Args);
BENCHMARK(Transfer<false>)->Name("Scatter")->Apply(Args);

}  // namespace
}  // namespace shmkv

BENCHMARK_MAIN();
