// Paged-KV gather/scatter (include/shmkv/paged_kv.h) against a naive reference written straight
// from the layout formulas, one element at a time.
#include "shmkv/paged_kv.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "kv/paged_kv_pool.h"

#if defined(SHMKV_TEST_CUDA)
#include <cuda_runtime.h>
#endif

namespace shmkv {
namespace {

using Bytes = std::vector<std::byte>;

uint64_t Fnv1a(const Bytes& b) {
  uint64_t h = 1469598103934665603ull;
  for (std::byte x : b) h = (h ^ static_cast<uint8_t>(x)) * 1099511628211ull;
  return h;
}

void FillRandom(Bytes& b, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (auto& x : b) x = static_cast<std::byte>(rng());
}

// An engine cache that owns its layer tensors.
struct Cache {
  std::vector<Bytes> tensors;
  PagedKvCache view;

  Cache(const KvGeometry& g, uint64_t seed) {
    tensors.resize(g.num_layers, Bytes(g.layer_bytes()));
    view.geometry = g;
    for (uint32_t l = 0; l < g.num_layers; ++l) {
      FillRandom(tensors[l], seed * 1000 + l);
      view.layers.push_back(tensors[l].data());
    }
  }
  std::vector<uint64_t> Checksums() const {
    std::vector<uint64_t> sums;
    for (const auto& t : tensors) sums.push_back(Fnv1a(t));
    return sums;
  }
};

std::vector<std::span<std::byte>> Spans(std::vector<Bytes>& bufs) {
  return {bufs.begin(), bufs.end()};
}
std::vector<std::span<const std::byte>> ConstSpans(const std::vector<Bytes>& bufs) {
  return {bufs.begin(), bufs.end()};
}
std::vector<uint64_t> Checksums(const std::vector<Bytes>& bufs) {
  std::vector<uint64_t> sums;
  for (const auto& b : bufs) sums.push_back(Fnv1a(b));
  return sums;
}

// Element offsets, from the formulas in paged_kv.h. kv is 0 for MLA.
uint64_t CacheElement(const KvGeometry& g, uint64_t kv, uint64_t block, uint64_t t, uint64_t h, uint64_t d) {
  const uint64_t NB = g.num_blocks, BS = g.block_size, H = g.num_kv_heads, D = g.head_size;
  switch (g.layout) {
    case KvLayout::kNHD: return (((kv * NB + block) * BS + t) * H + h) * D + d;
    case KvLayout::kHND: return (((kv * NB + block) * H + h) * BS + t) * D + d;
    case KvLayout::kMLA: return (block * BS + t) * D + d;
  }
  return 0;
}
uint64_t ChunkElement(const KvGeometry& g, uint64_t kv, uint64_t layer, uint64_t tok, uint64_t h, uint64_t d) {
  const uint64_t L = g.num_layers, T = g.chunk_tokens, H = g.num_kv_heads, D = g.head_size;
  if (g.layout == KvLayout::kMLA) return (layer * T + tok) * D + d;
  return (((kv * L + layer) * T + tok) * H + h) * D + d;
}

// Calls fn(layer, kv, cache element, chunk element) for every element of sequence chunk c.
template <typename Fn>
void ForEachElement(const KvGeometry& g, const std::vector<int64_t>& block_ids, uint64_t c, Fn&& fn) {
  const uint64_t kvs = g.layout == KvLayout::kMLA ? 1 : 2;
  for (uint64_t kv = 0; kv < kvs; ++kv) {
    for (uint64_t l = 0; l < g.num_layers; ++l) {
      for (uint64_t tok = 0; tok < g.chunk_tokens; ++tok) {
        const uint64_t seq_tok = c * g.chunk_tokens + tok;
        const auto block = static_cast<uint64_t>(block_ids[seq_tok / g.block_size]);
        for (uint64_t h = 0; h < g.num_kv_heads; ++h) {
          for (uint64_t d = 0; d < g.head_size; ++d) {
            fn(l, seq_tok, CacheElement(g, kv, block, seq_tok % g.block_size, h, d), ChunkElement(g, kv, l, tok, h, d));
          }
        }
      }
    }
  }
}

Bytes RefGather(const Cache& cache, const std::vector<int64_t>& block_ids, uint64_t c) {
  const KvGeometry& g = cache.view.geometry;
  Bytes out(g.chunk_bytes());
  const uint64_t E = g.element_size;
  ForEachElement(g, block_ids, c, [&](uint64_t l, uint64_t, uint64_t ce, uint64_t ke) {
    std::memcpy(&out[ke * E], &cache.tensors[l][ce * E], E);
  });
  return out;
}

void RefScatter(Cache& cache, const std::vector<int64_t>& block_ids, uint64_t c, const Bytes& in, uint64_t skip) {
  const KvGeometry& g = cache.view.geometry;
  const uint64_t E = g.element_size;
  ForEachElement(g, block_ids, c, [&](uint64_t l, uint64_t seq_tok, uint64_t ce, uint64_t ke) {
    if (seq_tok >= skip) std::memcpy(&cache.tensors[l][ce * E], &in[ke * E], E);
  });
}

KvGeometry SmallGeometry(KvLayout layout, uint32_t element_size) {
  KvGeometry g;
  g.layout = layout;
  g.num_layers = 3;
  g.num_blocks = 37;
  g.block_size = 4;
  g.num_kv_heads = layout == KvLayout::kMLA ? 1 : 3;
  g.head_size = 5;  // odd: row copies are not a power of two
  g.element_size = element_size;
  g.chunk_tokens = 12;
  return g;
}

// A shuffled, duplicate-free block table of n ids.
std::vector<int64_t> BlockTable(const KvGeometry& g, uint64_t n, uint64_t seed) {
  std::vector<int64_t> ids(g.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937_64(seed));
  ids.resize(n);
  return ids;
}

struct Param {
  KvLayout layout;
  uint32_t element_size;
  uint32_t head_size;
};

void PrintTo(const Param& p, std::ostream* os) {
  *os << KvLayoutName(p.layout) << " element_size " << p.element_size << " head_size " << p.head_size;
}

class RoundTripTest : public ::testing::TestWithParam<Param> {};

TEST_P(RoundTripTest, GatherAndScatterMatchTheReferenceElementForElement) {
  KvGeometry g = SmallGeometry(GetParam().layout, GetParam().element_size);
  g.head_size = GetParam().head_size;
  ASSERT_TRUE(g.Validate().ok()) << g.Validate().ToString();
  const uint64_t chunks = 3;
  const auto block_ids = BlockTable(g, chunks * g.blocks_per_chunk() + 2, 7);  // 2 ids past the last chunk
  Cache src(g, 1);
  const auto src_sums = src.Checksums();

  std::vector<Bytes> out(chunks, Bytes(g.chunk_bytes()));
  std::vector<uint32_t> indices = {0, 1, 2};
  ASSERT_TRUE(GatherChunks(src.view, block_ids, indices, Spans(out)).ok());
  for (uint32_t c = 0; c < chunks; ++c) EXPECT_EQ(out[c], RefGather(src, block_ids, c)) << "chunk " << c;
  EXPECT_EQ(src.Checksums(), src_sums) << "gather wrote into the cache it reads";

  Cache dst(g, 2), want(g, 2);
  for (uint32_t c = 0; c < chunks; ++c) RefScatter(want, block_ids, c, out[c], 0);
  ASSERT_TRUE(ScatterChunks(ConstSpans(out), dst.view, block_ids, 0).ok());
  EXPECT_EQ(dst.tensors, want.tensors);

  // Round trip: every block the sequence names now holds the source's bytes again.
  std::vector<Bytes> again(chunks, Bytes(g.chunk_bytes()));
  ASSERT_TRUE(GatherChunks(dst.view, block_ids, indices, Spans(again)).ok());
  EXPECT_EQ(again, out);
}

INSTANTIATE_TEST_SUITE_P(Layouts, RoundTripTest,
                         ::testing::Values(Param{KvLayout::kNHD, 1, 5}, Param{KvLayout::kNHD, 2, 5},
                                           Param{KvLayout::kNHD, 4, 5}, Param{KvLayout::kHND, 1, 5},
                                           Param{KvLayout::kHND, 2, 5}, Param{KvLayout::kHND, 4, 5},
                                           Param{KvLayout::kHND, 2, 64}, Param{KvLayout::kHND, 2, 128},
                                           Param{KvLayout::kHND, 4, 128}, Param{KvLayout::kMLA, 1, 5},
                                           Param{KvLayout::kMLA, 2, 5}, Param{KvLayout::kMLA, 4, 5},
                                           Param{KvLayout::kMLA, 2, 576}),
                         [](const ::testing::TestParamInfo<Param>& p) {
                           return std::string(KvLayoutName(p.param.layout)) + "_e" +
                                  std::to_string(p.param.element_size) + "_d" + std::to_string(p.param.head_size);
                         });

TEST(PagedKvTest, GatherWritesOnlyTheNamedChunksIntoTheirBuffers) {
  const KvGeometry g = SmallGeometry(KvLayout::kHND, 2);
  const auto block_ids = BlockTable(g, 4 * g.blocks_per_chunk(), 3);
  Cache src(g, 5);
  // Four slots; only slots 1 and 3 received chunks (3 and 1 of the sequence), the others keep
  // whatever they held.
  std::vector<Bytes> slots(4, Bytes(g.chunk_bytes()));
  for (size_t i = 0; i < slots.size(); ++i) FillRandom(slots[i], 100 + i);
  const auto before = Checksums(slots);
  std::vector<std::span<std::byte>> out = {slots[1], slots[3]};
  std::vector<uint32_t> indices = {3, 1};
  ASSERT_TRUE(GatherChunks(src.view, block_ids, indices, out).ok());
  EXPECT_EQ(slots[1], RefGather(src, block_ids, 3));
  EXPECT_EQ(slots[3], RefGather(src, block_ids, 1));
  EXPECT_EQ(Fnv1a(slots[0]), before[0]);
  EXPECT_EQ(Fnv1a(slots[2]), before[2]);
}

TEST(PagedKvTest, GatherOfAHighChunkNeedsOnlyBlockIdsUpToIt) {
  const KvGeometry g = SmallGeometry(KvLayout::kNHD, 2);
  const auto block_ids = BlockTable(g, 3 * g.blocks_per_chunk(), 4);  // exactly chunks 0..2
  Cache src(g, 6);
  std::vector<Bytes> out(1, Bytes(g.chunk_bytes()));
  std::vector<uint32_t> indices = {2};
  ASSERT_TRUE(GatherChunks(src.view, block_ids, indices, Spans(out)).ok());
  EXPECT_EQ(out[0], RefGather(src, block_ids, 2));
}

TEST(PagedKvTest, ScatterLeavesTheSkippedBlocksUntouchedAndWritesTheRest) {
  for (KvLayout layout : {KvLayout::kNHD, KvLayout::kHND, KvLayout::kMLA}) {
    SCOPED_TRACE(std::string(KvLayoutName(layout)));
    const KvGeometry g = SmallGeometry(layout, 2);
    const uint64_t chunks = 3;
    const auto block_ids = BlockTable(g, chunks * g.blocks_per_chunk(), 9);
    std::vector<Bytes> in(chunks, Bytes(g.chunk_bytes()));
    for (size_t i = 0; i < chunks; ++i) FillRandom(in[i], 200 + i);
    // 5 blocks: all of chunk 0 (3 blocks) and 2 of chunk 1's 3.
    const uint64_t skip = 5 * g.block_size;
    Cache dst(g, 8), want(g, 8), before(g, 8);
    for (uint64_t c = 0; c < chunks; ++c) RefScatter(want, block_ids, c, in[c], skip);
    ASSERT_TRUE(ScatterChunks(ConstSpans(in), dst.view, block_ids, skip).ok());
    EXPECT_EQ(dst.tensors, want.tensors);
    // Directly: every byte of the skipped blocks is as before, every byte of the rest is new.
    const uint64_t kvs = layout == KvLayout::kMLA ? 1 : 2;
    const uint64_t block_bytes = g.layer_bytes() / kvs / g.num_blocks;
    for (uint64_t b = 0; b < block_ids.size(); ++b) {
      for (uint32_t l = 0; l < g.num_layers; ++l) {
        for (uint64_t kv = 0; kv < kvs; ++kv) {
          const uint64_t off = (kv * g.num_blocks + static_cast<uint64_t>(block_ids[b])) * block_bytes;
          const bool same = std::memcmp(&dst.tensors[l][off], &before.tensors[l][off], block_bytes) == 0;
          EXPECT_EQ(same, b < 5) << "sequence block " << b << " layer " << l << " kv " << kv;
        }
      }
    }
  }
}

TEST(PagedKvTest, ScatterSkippingEveryTokenWritesNothing) {
  const KvGeometry g = SmallGeometry(KvLayout::kNHD, 2);
  const auto block_ids = BlockTable(g, 2 * g.blocks_per_chunk(), 10);
  std::vector<Bytes> in(2, Bytes(g.chunk_bytes()));
  Cache dst(g, 11);
  const auto sums = dst.Checksums();
  ASSERT_TRUE(ScatterChunks(ConstSpans(in), dst.view, block_ids, 2 * g.chunk_tokens).ok());
  ASSERT_TRUE(ScatterChunks(ConstSpans(in), dst.view, block_ids, 10 * g.chunk_tokens).ok());
  EXPECT_EQ(dst.Checksums(), sums);
}

TEST(PagedKvTest, EmptyCallsSucceedAndWriteNothing) {
  const KvGeometry g = SmallGeometry(KvLayout::kNHD, 2);
  Cache cache(g, 12);
  const auto sums = cache.Checksums();
  EXPECT_TRUE(GatherChunks(cache.view, {}, {}, {}).ok());
  EXPECT_TRUE(ScatterChunks({}, cache.view, {}, 0).ok());
  EXPECT_EQ(cache.Checksums(), sums);
}

// Large enough that every thread gets several units.
KvGeometry ThreadedGeometry(KvLayout layout) {
  KvGeometry g;
  g.layout = layout;
  g.num_layers = 4;
  g.num_blocks = 64;
  g.block_size = 16;
  g.num_kv_heads = layout == KvLayout::kMLA ? 1 : 4;
  g.head_size = layout == KvLayout::kMLA ? 576 : 64;
  g.element_size = 2;
  g.chunk_tokens = 64;
  return g;
}

TEST(PagedKvTest, OneThreadAndManyThreadsProduceIdenticalBytes) {
  for (KvLayout layout : {KvLayout::kNHD, KvLayout::kHND, KvLayout::kMLA}) {
    SCOPED_TRACE(std::string(KvLayoutName(layout)));
    const KvGeometry g = ThreadedGeometry(layout);
    const uint64_t chunks = 6;
    const auto block_ids = BlockTable(g, chunks * g.blocks_per_chunk(), 13);
    Cache src(g, 14);
    std::vector<uint32_t> indices = {5, 0, 3, 1, 4, 2};
    std::vector<Bytes> one(chunks, Bytes(g.chunk_bytes())), many(chunks, Bytes(g.chunk_bytes()));
    ASSERT_TRUE(GatherChunks(src.view, block_ids, indices, Spans(one), {.threads = 1}).ok());
    ASSERT_TRUE(GatherChunks(src.view, block_ids, indices, Spans(many), {.threads = 8}).ok());
    EXPECT_EQ(one, many);
    for (size_t i = 0; i < chunks; ++i) EXPECT_EQ(one[i], RefGather(src, block_ids, indices[i])) << "out " << i;
    EXPECT_GE(kv_internal::WorkerPool::Instance().workers(), 7u) << "threads=8 did not use the worker pool";

    Cache dst_one(g, 15), dst_many(g, 15), dst_auto(g, 15);
    const uint64_t skip = 3 * g.block_size;
    ASSERT_TRUE(ScatterChunks(ConstSpans(one), dst_one.view, block_ids, skip, {.threads = 1}).ok());
    ASSERT_TRUE(ScatterChunks(ConstSpans(one), dst_many.view, block_ids, skip, {.threads = 8}).ok());
    ASSERT_TRUE(ScatterChunks(ConstSpans(one), dst_auto.view, block_ids, skip, {.threads = 0}).ok());
    EXPECT_EQ(dst_one.tensors, dst_many.tensors);
    EXPECT_EQ(dst_one.tensors, dst_auto.tensors);
  }
}

TEST(PagedKvTest, ScatterWithARepeatedBlockIdGivesTheSingleThreadResult) {
  const KvGeometry g = ThreadedGeometry(KvLayout::kNHD);
  const uint64_t chunks = 4;
  auto block_ids = BlockTable(g, chunks * g.blocks_per_chunk(), 16);
  block_ids.back() = block_ids.front();  // chunk 3's last block is chunk 0's first
  std::vector<Bytes> in(chunks, Bytes(g.chunk_bytes()));
  for (size_t i = 0; i < chunks; ++i) FillRandom(in[i], 300 + i);
  Cache one(g, 17), many(g, 17);
  ASSERT_TRUE(ScatterChunks(ConstSpans(in), one.view, block_ids, 0, {.threads = 1}).ok());
  ASSERT_TRUE(ScatterChunks(ConstSpans(in), many.view, block_ids, 0, {.threads = 8}).ok());
  EXPECT_EQ(one.tensors, many.tensors);
}

TEST(PagedKvTest, ConcurrentCallsFromSeveralThreadsAllComplete) {
  const KvGeometry g = ThreadedGeometry(KvLayout::kHND);
  const uint64_t chunks = 4;
  const auto block_ids = BlockTable(g, chunks * g.blocks_per_chunk(), 18);
  Cache src(g, 19);
  std::vector<uint32_t> indices = {0, 1, 2, 3};
  std::vector<Bytes> want(chunks, Bytes(g.chunk_bytes()));
  ASSERT_TRUE(GatherChunks(src.view, block_ids, indices, Spans(want), {.threads = 1}).ok());
  std::vector<std::vector<Bytes>> outs(4, std::vector<Bytes>(chunks, Bytes(g.chunk_bytes())));
  std::vector<std::thread> callers;
  std::vector<int> ok(outs.size(), 0);
  for (size_t t = 0; t < outs.size(); ++t) {
    callers.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep) {
        ok[t] += GatherChunks(src.view, block_ids, indices, Spans(outs[t]), {.threads = 3}).ok() ? 1 : 0;
      }
    });
  }
  for (auto& c : callers) c.join();
  for (size_t t = 0; t < outs.size(); ++t) {
    EXPECT_EQ(ok[t], 5);
    EXPECT_EQ(outs[t], want) << "caller " << t;
  }
}

TEST(PagedKvTest, AForkedChildCopiesOnItsOwnThreadAndExitsCleanly) {
#if defined(__SANITIZE_ADDRESS__)
  // ASan's allocator is not fork-safe while other threads run: a pool worker freeing memory at
  // the moment of fork() leaves the allocator's lock held in the child, whose exit-time leak
  // check then waits on it forever (seen in CI-like runs). The release build runs this test.
  GTEST_SKIP() << "fork() of a multi-threaded process is not supported under AddressSanitizer";
#endif
  const KvGeometry g = ThreadedGeometry(KvLayout::kNHD);
  const uint64_t chunks = 4;
  const auto block_ids = BlockTable(g, chunks * g.blocks_per_chunk(), 26);
  Cache src(g, 27);
  std::vector<uint32_t> indices = {0, 1, 2, 3};
  std::vector<Bytes> want(chunks, Bytes(g.chunk_bytes()));
  // The parent's pool exists and has workers before the fork.
  ASSERT_TRUE(GatherChunks(src.view, block_ids, indices, Spans(want), {.threads = 4}).ok());
  ASSERT_GE(kv_internal::WorkerPool::Instance().workers(), 3u);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<Bytes> out(chunks, Bytes(g.chunk_bytes()));
    const bool ok = GatherChunks(src.view, block_ids, indices, Spans(out), {.threads = 4}).ok() && out == want;
    std::exit(ok ? 0 : 3);  // runs static destructors, the pool's included
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died: status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3: wrong bytes; other: the exit path failed";
}

// ---- bad input: the right code, a message naming the problem, nothing written ---------------

struct BadInputFixture : ::testing::Test {
  KvGeometry g = SmallGeometry(KvLayout::kHND, 2);
  Cache cache{g, 20};
  std::vector<int64_t> block_ids = BlockTable(g, 3 * g.blocks_per_chunk(), 21);
  std::vector<Bytes> bufs = std::vector<Bytes>(3, Bytes(g.chunk_bytes()));
  std::vector<uint32_t> indices = {0, 1, 2};
  std::vector<uint64_t> cache_sums, buf_sums;

  void SetUp() override {
    for (size_t i = 0; i < bufs.size(); ++i) FillRandom(bufs[i], 400 + i);
    cache_sums = cache.Checksums();
    buf_sums = Checksums(bufs);
  }
  void ExpectRejected(const Status& s, std::string_view needle) {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find(needle), std::string::npos)
        << "message '" << s.message() << "' lacks '" << needle << "'";
    EXPECT_EQ(cache.Checksums(), cache_sums) << "the cache was written";
    EXPECT_EQ(Checksums(bufs), buf_sums) << "a chunk buffer was written";
  }
  Status Gather(const PagedKvCache& kv) { return GatherChunks(kv, block_ids, indices, Spans(bufs), {.threads = 4}); }
  Status Gather() { return Gather(cache.view); }
  Status Scatter(const PagedKvCache& kv, uint64_t skip = 0) {
    return ScatterChunks(ConstSpans(bufs), kv, block_ids, skip, {.threads = 4});
  }
  Status Scatter(uint64_t skip = 0) { return Scatter(cache.view, skip); }
};

TEST_F(BadInputFixture, AWrongSizedBufferIsRejected) {
  bufs[2].pop_back();
  buf_sums = Checksums(bufs);
  ExpectRejected(Gather(), "out[2] is 2159 bytes; a chunk object of this geometry is 2160");
  ExpectRejected(Scatter(), "in[2] is 2159 bytes");
  bufs[2].resize(2 * g.chunk_bytes());
  buf_sums = Checksums(bufs);
  ExpectRejected(Gather(), "out[2] is 4320 bytes");
}

TEST_F(BadInputFixture, ChunkIndicesMustMatchTheBuffers) {
  indices.pop_back();
  ExpectRejected(Gather(), "2 chunk indices for 3 output buffers");
}

TEST_F(BadInputFixture, TooFewBlockIdsAreRejected) {
  block_ids.pop_back();
  ExpectRejected(Gather(), "only 8 block ids, 9 needed for chunk index 2");
  ExpectRejected(Scatter(), "only 8 block ids, 9 needed for 3 chunks");
  indices = {0, 5, 1};
  block_ids = BlockTable(g, 9, 22);
  ExpectRejected(Gather(), "only 9 block ids, 18 needed for chunk index 5");
}

TEST_F(BadInputFixture, OutOfRangeBlockIdsAreRejected) {
  block_ids[8] = static_cast<int64_t>(g.num_blocks);  // the last chunk's last block
  ExpectRejected(Gather(), "block_ids[8] = 37 is out of range [0, 37)");
  ExpectRejected(Scatter(), "block_ids[8] = 37 is out of range");
  block_ids[8] = -1;
  ExpectRejected(Gather(), "block_ids[8] = -1 is out of range");
  ExpectRejected(Scatter(), "block_ids[8] = -1 is out of range");
}

TEST_F(BadInputFixture, ASkipNotAlignedToBlocksIsRejected) {
  ExpectRejected(Scatter(g.block_size + 1), "skip_first_n_tokens 5 is not a multiple of block_size 4");
}

TEST_F(BadInputFixture, LayerPointersMustMatchTheGeometry) {
  PagedKvCache kv = cache.view;
  kv.layers.pop_back();
  ExpectRejected(Gather(kv), "2 layer pointers for a geometry of num_layers 3");
  ExpectRejected(Scatter(kv), "2 layer pointers");
  kv = cache.view;
  kv.layers[1] = nullptr;
  ExpectRejected(Gather(kv), "layer 1 pointer is null");
  ExpectRejected(Scatter(kv), "layer 1 pointer is null");
}

TEST_F(BadInputFixture, AnInvalidGeometryIsRejected) {
  auto with = [&](auto edit) {
    PagedKvCache kv = cache.view;
    edit(kv.geometry);
    return kv;
  };
  ExpectRejected(Gather(with([](KvGeometry& x) { x.element_size = 3; })), "element_size is 3; it must be 1, 2 or 4");
  ExpectRejected(Scatter(with([](KvGeometry& x) { x.chunk_tokens = 10; })),
                 "chunk_tokens 10 is not a multiple of block_size 4");
  ExpectRejected(Gather(with([](KvGeometry& x) { x.block_size = 0; })), "block_size is 0");
  ExpectRejected(Gather(with([](KvGeometry& x) { x.layout = KvLayout::kMLA; })), "num_kv_heads is 3; the MLA layout");
  ExpectRejected(Gather(with([](KvGeometry& x) { x.layout = static_cast<KvLayout>(7); })), "layout 7");
  ExpectRejected(Scatter(with([](KvGeometry& x) { x.num_blocks = uint64_t{1} << 62; })), "overflows 64 bits");
}

// ---- strided caches --------------------------------------------------------------------------
//
// Every engine layout the adapters meet, as one physical buffer holding all layers, addressed by
// an element formula written from the layout's shape (not from strides). The strided kernels get
// strides derived separately (StridesOf) and must agree with the formula element for element.

enum class Phys {
  kNHD,          // per layer (2, B, N, H, D)
  kHND,          // per layer (2, B, H, N, D): the logical (2, B, N, H, D) with HND strides
  kBlocksFirst,  // per layer (B, 2, N, H, D)
  kPacked,       // per layer (B, H, N, 2D): K and V side by side in the last dimension
  kLBHNC,        // one buffer (L, B, H, N, 2D), and the five other standardized orders
  kLBNHC,
  kLHBNC,
  kBLHNC,
  kBLNHC,
  kBHLNC,
  kCrossLayer,         // one buffer (B, L, 2, N, H, D): all layers of a block together
  kInterleaved,        // per layer (B, N, H, D, 2): K and V alternate element by element
  kMLA,                // per layer (B, N, D)
  kSgPageFirst,        // SGLang host pool (2, size, L, H, D); a block is a page of `size` tokens
  kSgLayerFirst,       // (2, L, size, H, D)
  kSgPageFirstDirect,  // (2, page_num, L, page_size, H, D)
};

const char* PhysName(Phys p) {
  static const char* names[] = {
      "NHD",   "HND",   "BlocksFirst", "Packed",      "LBHNC", "LBNHC",       "LHBNC",        "BLHNC",
      "BLNHC", "BHLNC", "CrossLayer",  "Interleaved", "MLA",   "SgPageFirst", "SgLayerFirst", "SgPageFirstDirect"};
  return names[static_cast<int>(p)];
}

// Element index of (kv, layer, block, token, head, d) in the buffer holding every layer.
uint64_t PhysElement(Phys p, const KvGeometry& g, uint64_t kv, uint64_t l, uint64_t b, uint64_t t, uint64_t h,
                     uint64_t d) {
  const uint64_t L = g.num_layers, B = g.num_blocks, N = g.block_size, H = g.num_kv_heads, D = g.head_size;
  const uint64_t C = 2 * D, c = kv * D + d;
  const uint64_t per_layer = (p == Phys::kMLA ? 1 : 2) * B * N * H * D;
  switch (p) {
    case Phys::kNHD: return l * per_layer + ((((kv * B + b) * N + t) * H + h) * D + d);
    case Phys::kHND: return l * per_layer + ((((kv * B + b) * H + h) * N + t) * D + d);
    case Phys::kBlocksFirst: return l * per_layer + ((((b * 2 + kv) * N + t) * H + h) * D + d);
    case Phys::kPacked: return l * per_layer + (((b * H + h) * N + t) * C + c);
    case Phys::kLBHNC: return (((l * B + b) * H + h) * N + t) * C + c;
    case Phys::kLBNHC: return (((l * B + b) * N + t) * H + h) * C + c;
    case Phys::kLHBNC: return (((l * H + h) * B + b) * N + t) * C + c;
    case Phys::kBLHNC: return (((b * L + l) * H + h) * N + t) * C + c;
    case Phys::kBLNHC: return (((b * L + l) * N + t) * H + h) * C + c;
    case Phys::kBHLNC: return (((b * H + h) * L + l) * N + t) * C + c;
    case Phys::kCrossLayer: return ((((b * L + l) * 2 + kv) * N + t) * H + h) * D + d;
    case Phys::kInterleaved: return l * per_layer + ((((b * N + t) * H + h) * D + d) * 2 + kv);
    case Phys::kMLA: return l * per_layer + (b * N + t) * D + d;
    case Phys::kSgPageFirst: return (((kv * B * N + b * N + t) * L + l) * H + h) * D + d;
    case Phys::kSgLayerFirst: return (((kv * L + l) * B * N + b * N + t) * H + h) * D + d;
    case Phys::kSgPageFirstDirect: return (((((kv * B + b) * L + l) * N + t) * H + h) * D + d);
  }
  return 0;
}

// The element strides (kv, block, token, head, element) and each layer's first element, derived
// as an adapter would derive them from the tensor's shape and strides.
struct ElementStrides {
  int64_t kv, block, token, head, element, layer;
};
ElementStrides StridesOf(Phys p, const KvGeometry& g) {
  const int64_t L = g.num_layers, B = static_cast<int64_t>(g.num_blocks), N = g.block_size, H = g.num_kv_heads,
                D = g.head_size, C = 2 * D;
  switch (p) {
    case Phys::kNHD: return {B * N * H * D, N * H * D, H * D, D, 1, 2 * B * N * H * D};
    case Phys::kHND: return {B * H * N * D, H * N * D, D, N * D, 1, 2 * B * N * H * D};
    case Phys::kBlocksFirst: return {N * H * D, 2 * N * H * D, H * D, D, 1, 2 * B * N * H * D};
    case Phys::kPacked: return {D, H * N * C, C, N * C, 1, 2 * B * N * H * D};
    case Phys::kLBHNC: return {D, H * N * C, C, N * C, 1, B * H * N * C};
    case Phys::kLBNHC: return {D, N * H * C, H * C, C, 1, B * N * H * C};
    case Phys::kLHBNC: return {D, N * C, C, B * N * C, 1, H * B * N * C};
    case Phys::kBLHNC: return {D, L * H * N * C, C, N * C, 1, H * N * C};
    case Phys::kBLNHC: return {D, L * N * H * C, H * C, C, 1, N * H * C};
    case Phys::kBHLNC: return {D, H * L * N * C, C, L * N * C, 1, N * C};
    case Phys::kCrossLayer: return {N * H * D, L * 2 * N * H * D, H * D, D, 1, 2 * N * H * D};
    case Phys::kInterleaved: return {1, N * H * D * 2, H * D * 2, D * 2, 2, 2 * B * N * H * D};
    case Phys::kMLA: return {0, N * D, D, 0, 1, B * N * D};
    case Phys::kSgPageFirst: return {B * N * L * H * D, N * L * H * D, L * H * D, D, 1, H * D};
    case Phys::kSgLayerFirst: return {L * B * N * H * D, N * H * D, H * D, D, 1, B * N * H * D};
    case Phys::kSgPageFirstDirect: return {B * L * N * H * D, L * N * H * D, H * D, D, 1, N * H * D};
  }
  return {};
}

// One buffer with every layer of a cache in layout p, and its strided view.
struct PhysCache {
  Phys phys;
  KvGeometry g;
  Bytes buf;
  StridedKvCache view;
  PhysCache(Phys p, const KvGeometry& geometry, uint64_t seed) : phys(p), g(geometry) {
    const uint64_t elements =
        (p == Phys::kMLA ? 1 : 2) * g.num_layers * g.num_blocks * g.block_size * g.num_kv_heads * g.head_size;
    buf.resize(elements * g.element_size);
    FillRandom(buf, seed);
    const ElementStrides s = StridesOf(p, g);
    const int64_t e = g.element_size;
    view.geometry = g;
    view.strides = {s.kv * e, s.block * e, s.token * e, s.head * e, s.element * e};
    for (uint32_t l = 0; l < g.num_layers; ++l) {
      view.layers.push_back(buf.data() + l * s.layer * e);
      view.extents.emplace_back(buf.data(), buf.size());
    }
  }
  template <typename Fn>  // fn(seq_token, buffer byte offset, chunk byte offset) for chunk c
  void ForEach(const std::vector<int64_t>& block_ids, uint64_t c, Fn&& fn) const {
    const uint64_t kvs = phys == Phys::kMLA ? 1 : 2, E = g.element_size;
    for (uint64_t kv = 0; kv < kvs; ++kv)
      for (uint64_t l = 0; l < g.num_layers; ++l)
        for (uint64_t tok = 0; tok < g.chunk_tokens; ++tok) {
          const uint64_t seq = c * g.chunk_tokens + tok;
          const auto b = static_cast<uint64_t>(block_ids[seq / g.block_size]);
          for (uint64_t h = 0; h < g.num_kv_heads; ++h)
            for (uint64_t d = 0; d < g.head_size; ++d)
              fn(seq, PhysElement(phys, g, kv, l, b, seq % g.block_size, h, d) * E,
                 ChunkElement(g, kv, l, tok, h, d) * E);
        }
  }
  Bytes RefGather(const std::vector<int64_t>& block_ids, uint64_t c) const {
    Bytes out(g.chunk_bytes());
    ForEach(block_ids, c, [&](uint64_t, uint64_t pe, uint64_t ke) { std::memcpy(&out[ke], &buf[pe], g.element_size); });
    return out;
  }
  void RefScatter(const std::vector<int64_t>& block_ids, uint64_t c, const Bytes& in, uint64_t skip) {
    ForEach(block_ids, c, [&](uint64_t seq, uint64_t pe, uint64_t ke) {
      if (seq >= skip) std::memcpy(&buf[pe], &in[ke], g.element_size);
    });
  }
};

struct StridedParam {
  Phys phys;
  uint32_t element_size;
  uint32_t head_size;
};
void PrintTo(const StridedParam& p, std::ostream* os) {
  *os << PhysName(p.phys) << " e" << p.element_size << " d" << p.head_size;
}

class StridedTest : public ::testing::TestWithParam<StridedParam> {};

TEST_P(StridedTest, GatherAndScatterMatchTheLayoutFormulaElementForElement) {
  const StridedParam p = GetParam();
  KvGeometry g = SmallGeometry(p.phys == Phys::kMLA ? KvLayout::kMLA : KvLayout::kNHD, p.element_size);
  g.head_size = p.head_size;
  ASSERT_TRUE(g.Validate().ok());
  const uint64_t chunks = 3;
  const auto block_ids = BlockTable(g, chunks * g.blocks_per_chunk() + 1, 41);
  for (unsigned threads : {1u, 3u}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    PhysCache src(p.phys, g, 42);
    const uint64_t src_sum = Fnv1a(src.buf);
    std::vector<Bytes> out(chunks, Bytes(g.chunk_bytes()));
    std::vector<uint32_t> indices = {2, 0, 1};
    const Status gs = GatherChunksStrided(src.view, block_ids, indices, Spans(out), {.threads = threads});
    ASSERT_TRUE(gs.ok()) << gs.ToString();
    for (size_t i = 0; i < indices.size(); ++i) EXPECT_EQ(out[i], src.RefGather(block_ids, indices[i])) << "out " << i;
    EXPECT_EQ(Fnv1a(src.buf), src_sum) << "gather wrote into the cache it reads";

    // Scatter chunks 0..2 (in sequence order) into another cache, skipping 2 blocks: every other
    // byte of the buffer keeps its value.
    std::vector<Bytes> in = {out[1], out[2], out[0]};
    PhysCache dst(p.phys, g, 43), want(p.phys, g, 43);
    const uint64_t skip = 2 * g.block_size;
    for (uint64_t c = 0; c < chunks; ++c) want.RefScatter(block_ids, c, in[c], skip);
    const Status ss = ScatterChunksStrided(ConstSpans(in), dst.view, block_ids, skip, {.threads = threads});
    ASSERT_TRUE(ss.ok()) << ss.ToString();
    EXPECT_TRUE(dst.buf == want.buf) << "scatter differs from the formula";
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, StridedTest,
                         ::testing::Values(StridedParam{Phys::kNHD, 2, 5}, StridedParam{Phys::kNHD, 2, 64},
                                           StridedParam{Phys::kHND, 2, 5}, StridedParam{Phys::kHND, 2, 64},
                                           StridedParam{Phys::kHND, 4, 128}, StridedParam{Phys::kBlocksFirst, 2, 5},
                                           StridedParam{Phys::kPacked, 2, 5}, StridedParam{Phys::kPacked, 1, 64},
                                           StridedParam{Phys::kLBHNC, 2, 5}, StridedParam{Phys::kLBNHC, 2, 5},
                                           StridedParam{Phys::kLBNHC, 2, 64}, StridedParam{Phys::kLHBNC, 2, 5},
                                           StridedParam{Phys::kBLHNC, 2, 5}, StridedParam{Phys::kBLNHC, 4, 5},
                                           StridedParam{Phys::kBHLNC, 1, 5}, StridedParam{Phys::kCrossLayer, 2, 5},
                                           StridedParam{Phys::kInterleaved, 2, 5},
                                           StridedParam{Phys::kInterleaved, 1, 3}, StridedParam{Phys::kMLA, 2, 5},
                                           StridedParam{Phys::kMLA, 2, 576}, StridedParam{Phys::kSgPageFirst, 2, 5},
                                           StridedParam{Phys::kSgLayerFirst, 2, 5},
                                           StridedParam{Phys::kSgPageFirstDirect, 2, 5},
                                           // Runs of 128, 256 and 1024 bytes (the copy routines
                                           // specialised on the run length).
                                           StridedParam{Phys::kLBNHC, 2, 128}, StridedParam{Phys::kPacked, 2, 64},
                                           StridedParam{Phys::kSgPageFirst, 2, 128}, StridedParam{Phys::kBHLNC, 4, 64}),
                         [](const ::testing::TestParamInfo<StridedParam>& p) {
                           return std::string(PhysName(p.param.phys)) + "_e" + std::to_string(p.param.element_size) +
                                  "_d" + std::to_string(p.param.head_size);
                         });

// With one layer and one block per chunk, K and V of a (blocks, 2, ...) block lie next to each
// other in the cache and in the chunk: the copy merges them into one run. The same geometry in the
// interleaved view (K and V alternate element by element) has no run longer than an element.
TEST(StridedTest, OneLayerOneBlockChunksMatchTheFormula) {
  for (Phys phys : {Phys::kBlocksFirst, Phys::kLBNHC, Phys::kInterleaved, Phys::kSgPageFirst}) {
    SCOPED_TRACE(PhysName(phys));
    KvGeometry g = SmallGeometry(KvLayout::kNHD, 2);
    g.num_layers = 1;
    g.chunk_tokens = g.block_size;
    ASSERT_TRUE(g.Validate().ok());
    const auto block_ids = BlockTable(g, 4, 48);
    PhysCache src(phys, g, 49);
    std::vector<Bytes> out(4, Bytes(g.chunk_bytes()));
    std::vector<uint32_t> indices = {3, 1, 0, 2};
    ASSERT_TRUE(GatherChunksStrided(src.view, block_ids, indices, Spans(out)).ok());
    for (size_t i = 0; i < indices.size(); ++i) EXPECT_EQ(out[i], src.RefGather(block_ids, indices[i])) << "out " << i;
    PhysCache dst(phys, g, 50), want(phys, g, 50);
    for (uint64_t c = 0; c < 4; ++c) want.RefScatter(block_ids, c, out[c], g.block_size);
    ASSERT_TRUE(ScatterChunksStrided(ConstSpans(out), dst.view, block_ids, g.block_size).ok());
    EXPECT_TRUE(dst.buf == want.buf) << "scatter differs from the formula";
  }
}

// Transfers of 256 KiB and more with runs of whole 16-byte vectors use streaming stores when the
// destination is 16-byte aligned, and cached stores when it is not: both give the formula's
// bytes. (Which stores ran is not observable here; the two alignments cover both paths.)
TEST(StridedTest, LargeTransfersMatchTheFormulaWithAlignedAndUnalignedChunks) {
  for (Phys phys : {Phys::kLBNHC, Phys::kSgPageFirst, Phys::kHND}) {
    SCOPED_TRACE(PhysName(phys));
    KvGeometry g;
    g.layout = KvLayout::kNHD;
    g.num_layers = 2;
    g.num_blocks = 40;
    g.block_size = 16;
    g.num_kv_heads = 4;
    g.head_size = 64;
    g.element_size = 2;
    g.chunk_tokens = 64;
    ASSERT_TRUE(g.Validate().ok());
    const uint64_t chunks = 3;  // 3 x 128 KiB
    const auto block_ids = BlockTable(g, chunks * g.blocks_per_chunk(), 51);
    PhysCache src(phys, g, 52);
    std::vector<uint32_t> indices = {1, 2, 0};
    for (size_t offset : {size_t{0}, size_t{8}}) {
      SCOPED_TRACE("chunk buffers at offset " + std::to_string(offset));
      std::vector<Bytes> store(chunks, Bytes(g.chunk_bytes() + 16));
      std::vector<std::span<std::byte>> out;
      for (Bytes& b : store) {
        // Vectors' data is at least 16-byte aligned: offset 8 is not.
        ASSERT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 16, 0u);
        out.emplace_back(b.data() + offset, g.chunk_bytes());
      }
      ASSERT_TRUE(GatherChunksStrided(src.view, block_ids, indices, out, {.threads = 1}).ok());
      for (size_t i = 0; i < chunks; ++i) {
        EXPECT_TRUE(Bytes(out[i].begin(), out[i].end()) == src.RefGather(block_ids, indices[i])) << "out " << i;
      }
    }
    std::vector<Bytes> in;
    for (uint64_t c = 0; c < chunks; ++c) in.push_back(src.RefGather(block_ids, c));
    PhysCache dst(phys, g, 53), want(phys, g, 53);
    for (uint64_t c = 0; c < chunks; ++c) want.RefScatter(block_ids, c, in[c], 0);
    ASSERT_TRUE(ScatterChunksStrided(ConstSpans(in), dst.view, block_ids, 0, {.threads = 2}).ok());
    EXPECT_TRUE(dst.buf == want.buf) << "scatter differs from the formula";
  }
}

TEST(StridedTest, TheContiguousLayoutsAsStridedGiveTheSameBytes) {
  for (KvLayout layout : {KvLayout::kNHD, KvLayout::kHND, KvLayout::kMLA}) {
    SCOPED_TRACE(std::string(KvLayoutName(layout)));
    const KvGeometry g = SmallGeometry(layout, 2);
    const auto block_ids = BlockTable(g, 2 * g.blocks_per_chunk(), 44);
    Cache cache(g, 45);
    std::vector<Bytes> want(2, Bytes(g.chunk_bytes())), got(2, Bytes(g.chunk_bytes()));
    std::vector<uint32_t> indices = {1, 0};
    ASSERT_TRUE(GatherChunks(cache.view, block_ids, indices, Spans(want)).ok());
    ASSERT_TRUE(GatherChunksStrided(ToStrided(cache.view), block_ids, indices, Spans(got)).ok());
    EXPECT_EQ(got, want);
  }
}

TEST(StridedTest, AViewReachingOutsideItsExtentIsRejectedBeforeAnyWrite) {
  const KvGeometry g = SmallGeometry(KvLayout::kNHD, 2);
  PhysCache cache(Phys::kLBNHC, g, 46);
  const uint64_t sum = Fnv1a(cache.buf);
  const auto block_ids = BlockTable(g, g.blocks_per_chunk(), 47);
  std::vector<Bytes> in(1, Bytes(g.chunk_bytes()));
  StridedKvCache kv = cache.view;
  kv.extents[2] = std::span<const std::byte>(cache.buf.data(), cache.buf.size() - 1);  // one byte short
  Status s = ScatterChunksStrided(ConstSpans(in), kv, block_ids, 0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("layer 2: the view"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("outside its extent"), std::string::npos) << s.message();
  kv = cache.view;
  kv.strides.block *= 2;  // as if the buffer had twice the blocks: the last layer runs past its end
  s = ScatterChunksStrided(ConstSpans(in), kv, block_ids, 0);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("layer 2: the view (strides kv 10, block 480"), std::string::npos) << s.message();
  kv = cache.view;
  kv.extents.pop_back();
  s = ScatterChunksStrided(ConstSpans(in), kv, block_ids, 0);
  EXPECT_NE(s.message().find("3 layer pointers and 2 extents"), std::string::npos) << s.message();
  std::vector<Bytes> out(1, Bytes(g.chunk_bytes() - 2));
  std::vector<uint32_t> indices = {0};
  s = GatherChunksStrided(cache.view, block_ids, indices, Spans(out));
  EXPECT_NE(s.message().find("out[0] is 2158 bytes"), std::string::npos) << s.message();
  EXPECT_EQ(Fnv1a(cache.buf), sum) << "a rejected call wrote into the cache";
}

// ---- geometry and layout names ---------------------------------------------------------------

TEST(KvGeometryTest, TheDemoGeometryHasEightMiBChunks) {
  KvGeometry g{.layout = KvLayout::kNHD,
               .num_layers = 8,
               .num_blocks = 1024,
               .block_size = 16,
               .num_kv_heads = 8,
               .head_size = 128,
               .element_size = 2,
               .chunk_tokens = 256};
  ASSERT_TRUE(g.Validate().ok());
  EXPECT_EQ(g.chunk_bytes(), uint64_t{8} << 20);
  EXPECT_EQ(g.layer_bytes(), uint64_t{2} * 1024 * 16 * 8 * 128 * 2);
  EXPECT_EQ(g.blocks_per_chunk(), 16u);
  g.layout = KvLayout::kMLA;
  g.num_kv_heads = 1;
  g.head_size = 576;
  ASSERT_TRUE(g.Validate().ok());
  EXPECT_EQ(g.chunk_bytes(), uint64_t{8} * 256 * 576 * 2);  // no K/V split
  EXPECT_EQ(g.layer_bytes(), uint64_t{1024} * 16 * 576 * 2);
}

TEST(KvGeometryTest, OverflowingSizesAreZeroAndInvalid) {
  KvGeometry g{.layout = KvLayout::kNHD,
               .num_layers = 0xffffffff,
               .num_blocks = 1,
               .block_size = 0xffff,
               .num_kv_heads = 0xffff,
               .head_size = 0xffff,
               .element_size = 4,
               .chunk_tokens = 0xffff};
  EXPECT_EQ(g.chunk_bytes(), 0u);
  const Status s = g.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("a chunk of 4294967295 layers"), std::string::npos) << s.message();
}

TEST(KvLayoutTest, NamesParseCaseInsensitively) {
  for (KvLayout l : {KvLayout::kNHD, KvLayout::kHND, KvLayout::kMLA}) {
    auto parsed = ParseKvLayout(KvLayoutName(l));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, l);
  }
  auto lower = ParseKvLayout("hnd");
  ASSERT_TRUE(lower.ok());
  EXPECT_EQ(*lower, KvLayout::kHND);
  auto bad = ParseKvLayout("NDH");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'NDH'"), std::string::npos) << bad.status().message();
}

// ---- CUDA entry points on a machine or build without CUDA ------------------------------------

TEST(PagedKvCudaTest, WithoutCudaTheCallsAreUnavailableAndWriteNothing) {
  const KvGeometry g = SmallGeometry(KvLayout::kNHD, 2);
  Cache cache(g, 23);
  const auto block_ids = BlockTable(g, g.blocks_per_chunk(), 24);
  std::vector<Bytes> bufs(1, Bytes(g.chunk_bytes()));
  const auto cache_sums = cache.Checksums();
  const auto buf_sums = Checksums(bufs);
  std::vector<uint32_t> indices = {0};
  const Status gather = GatherChunksCuda(cache.view, block_ids, indices, Spans(bufs), nullptr);
  const Status scatter = ScatterChunksCuda(ConstSpans(bufs), cache.view, block_ids, 0, nullptr);
  RecordProperty("gather_status", gather.ToString());  // in --gtest_output=xml, for the record
  if (PagedKvCudaCompiled() && (gather.code() != StatusCode::kUnavailable)) {
    // A device is present: host memory is not device-addressable cache memory.
    EXPECT_EQ(gather.code(), StatusCode::kInvalidArgument) << gather.ToString();
    GTEST_SKIP() << "a CUDA device is present; this test covers machines without one";
  }
  EXPECT_EQ(gather.code(), StatusCode::kUnavailable) << gather.ToString();
  EXPECT_EQ(scatter.code(), StatusCode::kUnavailable) << scatter.ToString();
  const std::string_view want = PagedKvCudaCompiled() ? "cuda" : "SHMKV_CUDA";
  EXPECT_NE(gather.message().find(want), std::string::npos) << gather.message();
  EXPECT_NE(scatter.message().find(want), std::string::npos) << scatter.message();
  EXPECT_EQ(cache.Checksums(), cache_sums);
  EXPECT_EQ(Checksums(bufs), buf_sums);
}

TEST(PagedKvCudaTest, BadInputIsRejectedBeforeAnyDeviceCheckInACudaBuild) {
  if (!PagedKvCudaCompiled()) GTEST_SKIP() << "built without SHMKV_CUDA";
  const KvGeometry g = SmallGeometry(KvLayout::kNHD, 2);
  Cache cache(g, 25);
  std::vector<Bytes> bufs(1, Bytes(g.chunk_bytes() - 1));
  std::vector<uint32_t> indices = {0};
  const Status s = GatherChunksCuda(cache.view, {}, indices, Spans(bufs), nullptr);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("out[0] is 2159 bytes"), std::string::npos) << s.message();
  const Status t = ScatterChunksCuda(ConstSpans(bufs), cache.view, {}, 1, nullptr);
  EXPECT_EQ(t.code(), StatusCode::kInvalidArgument) << t.ToString();
}

// ---- CUDA kernels on a real device (built with SHMKV_CUDA; skipped where no device exists) ----

#if defined(SHMKV_TEST_CUDA)

// Device memory holding a copy of one host buffer.
struct DeviceBuffer {
  void* p = nullptr;
  explicit DeviceBuffer(const Bytes& host) {
    EXPECT_EQ(cudaMalloc(&p, host.size()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, host.data(), host.size(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceBuffer() { (void)cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  Bytes Read(size_t n) const {
    Bytes b(n);
    EXPECT_EQ(cudaMemcpy(b.data(), p, n, cudaMemcpyDeviceToHost), cudaSuccess);
    return b;
  }
};

// Host buffers registered with cudaHostRegister, as the pool is.
struct Registered {
  std::vector<Bytes>& bufs;
  explicit Registered(std::vector<Bytes>& b) : bufs(b) {
    for (auto& x : bufs) EXPECT_EQ(cudaHostRegister(x.data(), x.size(), cudaHostRegisterPortable), cudaSuccess);
  }
  ~Registered() {
    for (auto& x : bufs) (void)cudaHostUnregister(x.data());
  }
};

bool HaveDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

TEST(PagedKvCudaDeviceTest, KernelsMatchTheCpuPathByteForByte) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  for (KvLayout layout : {KvLayout::kNHD, KvLayout::kHND, KvLayout::kMLA}) {
    for (uint32_t element_size : {1u, 2u, 4u}) {
      SCOPED_TRACE(std::string(KvLayoutName(layout)) + " e" + std::to_string(element_size));
      KvGeometry g = ThreadedGeometry(layout);
      g.element_size = element_size;
      if (element_size == 1) g.head_size = layout == KvLayout::kMLA ? 5 : 3;  // odd rows: byte access
      const uint64_t chunks = 4;
      const auto block_ids = BlockTable(g, chunks * g.blocks_per_chunk(), 30);
      Cache host(g, 31);
      std::vector<std::unique_ptr<DeviceBuffer>> dev;
      PagedKvCache dkv{g, {}};
      for (const auto& t : host.tensors) {
        dev.push_back(std::make_unique<DeviceBuffer>(t));
        dkv.layers.push_back(static_cast<std::byte*>(dev.back()->p));
      }
      std::vector<uint32_t> indices = {2, 0, 3};
      std::vector<Bytes> want(indices.size(), Bytes(g.chunk_bytes())), got(indices.size(), Bytes(g.chunk_bytes()));
      ASSERT_TRUE(GatherChunks(host.view, block_ids, indices, Spans(want)).ok());
      {
        Registered reg(got);
        cudaStream_t stream = nullptr;
        ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
        const Status s = GatherChunksCuda(dkv, block_ids, indices, Spans(got), stream);
        ASSERT_TRUE(s.ok()) << s.ToString();
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);  // before commit_store
        (void)cudaStreamDestroy(stream);
      }
      EXPECT_EQ(got, want);

      // Scatter all four chunks back into a second device cache, skipping the first 3 blocks.
      std::vector<Bytes> in(chunks, Bytes(g.chunk_bytes()));
      for (size_t i = 0; i < chunks; ++i) FillRandom(in[i], 500 + i);
      Cache host_dst(g, 32);
      std::vector<std::unique_ptr<DeviceBuffer>> dev_dst;
      PagedKvCache ddst{g, {}};
      for (const auto& t : host_dst.tensors) {
        dev_dst.push_back(std::make_unique<DeviceBuffer>(t));
        ddst.layers.push_back(static_cast<std::byte*>(dev_dst.back()->p));
      }
      const uint64_t skip = 3 * g.block_size;
      ASSERT_TRUE(ScatterChunks(ConstSpans(in), host_dst.view, block_ids, skip).ok());
      {
        Registered reg(in);
        const Status s = ScatterChunksCuda(ConstSpans(in), ddst, block_ids, skip, nullptr);
        ASSERT_TRUE(s.ok()) << s.ToString();
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // before release
      }
      for (uint32_t l = 0; l < g.num_layers; ++l) {
        EXPECT_EQ(dev_dst[l]->Read(g.layer_bytes()), host_dst.tensors[l]) << "layer " << l;
      }
    }
  }
}

TEST(PagedKvCudaDeviceTest, PageableHostBuffersAreRejectedNamingTheBuffer) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const KvGeometry g = SmallGeometry(KvLayout::kNHD, 2);
  Cache host(g, 33);
  std::vector<std::unique_ptr<DeviceBuffer>> dev;
  PagedKvCache dkv{g, {}};
  for (const auto& t : host.tensors) {
    dev.push_back(std::make_unique<DeviceBuffer>(t));
    dkv.layers.push_back(static_cast<std::byte*>(dev.back()->p));
  }
  const auto block_ids = BlockTable(g, g.blocks_per_chunk(), 34);
  std::vector<Bytes> out(1, Bytes(g.chunk_bytes()));  // not registered
  const auto before = Checksums(out);
  std::vector<uint32_t> indices = {0};
  const Status s = GatherChunksCuda(dkv, block_ids, indices, Spans(out), nullptr);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find("out[0] is not device-addressable"), std::string::npos) << s.message();
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(Checksums(out), before);
}

#endif  // SHMKV_TEST_CUDA

}  // namespace
}  // namespace shmkv
