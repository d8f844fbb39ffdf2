#include "pool/slot_allocator.h"

#include <cstdlib>
#include <map>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace shmkv {
namespace {

constexpr uint64_t kUnit = 4096;

SlotAllocator Make(uint64_t pool) {
  auto r = SlotAllocator::Create(pool, kUnit);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return std::move(r).value();
}

void ExpectSameStats(const SlotAllocatorStats& a, const SlotAllocatorStats& b) {
  EXPECT_EQ(a.used_bytes, b.used_bytes);
  EXPECT_EQ(a.live_slots, b.live_slots);
  EXPECT_EQ(a.free_blocks, b.free_blocks);
  EXPECT_EQ(a.largest_free, b.largest_free);
}

TEST(SlotAllocator, CreateRejectsBadGeometry) {
  EXPECT_EQ(SlotAllocator::Create(1 << 20, 3000).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SlotAllocator::Create(1 << 20, 32).status().code(), StatusCode::kInvalidArgument);
  auto tiny = SlotAllocator::Create(100, 4096);
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.status().message().find("smaller than one"), std::string::npos);
  EXPECT_EQ(SlotAllocator::Create(uint64_t{1} << 45, 4096).status().code(), StatusCode::kInvalidArgument);
}

TEST(SlotAllocator, SlotsAreAlignedInsideThePoolAndDisjoint) {
  SlotAllocator a = Make(64 * kUnit);
  std::vector<std::pair<uint64_t, uint64_t>> slots;
  for (uint64_t size : {uint64_t{1}, uint64_t{4096}, uint64_t{4097}, uint64_t{10000}, 3 * kUnit}) {
    auto off = a.Allocate(size);
    ASSERT_TRUE(off.ok()) << off.status().ToString();
    EXPECT_EQ(*off % kUnit, 0u);
    const uint64_t rounded = (size + kUnit - 1) / kUnit * kUnit;
    EXPECT_EQ(*a.SlotSize(*off), rounded);
    EXPECT_LE(*off + rounded, a.pool_size());
    for (auto [o, n] : slots) EXPECT_TRUE(*off + rounded <= o || o + n <= *off) << "overlap";
    slots.emplace_back(*off, rounded);
  }
  EXPECT_TRUE(a.CheckInvariants().ok());
}

TEST(SlotAllocator, SizeZeroAndSizesBeyondThePoolAreInvalid) {
  SlotAllocator a = Make(16 * kUnit);
  auto zero = a.Allocate(0);
  EXPECT_EQ(zero.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(zero.status().message().find("0 bytes"), std::string::npos);
  auto huge = a.Allocate(16 * kUnit + 1);
  EXPECT_EQ(huge.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(huge.status().message().find("larger than the whole pool"), std::string::npos);
  EXPECT_EQ(a.stats().live_slots, 0u);
  EXPECT_TRUE(a.CheckInvariants().ok());
}

TEST(SlotAllocator, AFullPoolSaysFullAndRecoversAfterAFree) {
  SlotAllocator a = Make(16 * kUnit);
  auto whole = a.Allocate(16 * kUnit);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(*whole, 0u);
  auto more = a.Allocate(1);
  EXPECT_EQ(more.status().code(), StatusCode::kFull);
  ASSERT_TRUE(a.Free(*whole).ok());
  EXPECT_TRUE(a.Allocate(1).ok());
  EXPECT_TRUE(a.CheckInvariants().ok());
}

TEST(SlotAllocator, DoubleFreeIsRefusedAndChangesNothing) {
  SlotAllocator a = Make(16 * kUnit);
  uint64_t x = *a.Allocate(kUnit), y = *a.Allocate(kUnit), z = *a.Allocate(kUnit);
  ASSERT_TRUE(a.Free(y).ok());  // y's neighbours are live: y stays its own free block
  const SlotAllocatorStats before = a.stats();
  Status again = a.Free(y);
  EXPECT_EQ(again.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(again.message().find("double free"), std::string::npos) << again.message();
  ExpectSameStats(a.stats(), before);
  EXPECT_TRUE(a.CheckInvariants().ok());
  // Once merged into a neighbour, the offset starts no slot at all.
  ASSERT_TRUE(a.Free(x).ok());
  Status merged = a.Free(y);
  EXPECT_EQ(merged.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(merged.message().find("already freed"), std::string::npos) << merged.message();
  EXPECT_TRUE(a.CheckInvariants().ok());
  EXPECT_TRUE(a.Free(z).ok());
}

TEST(SlotAllocator, UnknownOffsetsAreRefusedAndChangeNothing) {
  SlotAllocator a = Make(16 * kUnit);
  uint64_t s = *a.Allocate(4 * kUnit);
  const SlotAllocatorStats before = a.stats();
  struct Case {
    uint64_t offset;
    const char* why;
  };
  for (Case c : {Case{s + 1, "not aligned"}, Case{s + kUnit, "no slot starts there"},
                 Case{16 * kUnit, "beyond the end"}, Case{UINT64_MAX - 4095, "beyond the end"},
                 Case{8 * kUnit, "no slot starts there"},  // inside the free remainder
                 Case{4 * kUnit, "already free"}}) {       // the start of the free remainder
    Status st = a.Free(c.offset);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << c.offset;
    EXPECT_NE(st.message().find(c.why), std::string::npos) << st.message();
    EXPECT_NE(st.message().find(std::to_string(c.offset)), std::string::npos);
    ExpectSameStats(a.stats(), before);
    EXPECT_TRUE(a.CheckInvariants().ok());
  }
}

TEST(SlotAllocator, FreedNeighboursCoalesceBackIntoOneExtent) {
  SlotAllocator a = Make(256 * kUnit);
  std::vector<uint64_t> offs;
  for (int i = 0; i < 64; ++i) offs.push_back(*a.Allocate((i % 4 + 1) * kUnit));
  std::mt19937 rng(7);
  std::shuffle(offs.begin(), offs.end(), rng);
  for (uint64_t o : offs) {
    ASSERT_TRUE(a.Free(o).ok());
    ASSERT_TRUE(a.CheckInvariants().ok());
  }
  const SlotAllocatorStats s = a.stats();
  EXPECT_EQ(s.free_blocks, 1u);
  EXPECT_EQ(s.largest_free, a.pool_size());
  EXPECT_EQ(s.used_bytes, 0u);
  EXPECT_EQ(*a.Allocate(a.pool_size()), 0u);  // the whole pool is one slot again
}

TEST(SlotAllocator, GoodFitLeavesLargeExtentsWhole) {
  // A small request must not split the only large extent when a small hole exists.
  SlotAllocator a = Make(1024 * kUnit);
  uint64_t small = *a.Allocate(kUnit);
  uint64_t guard = *a.Allocate(kUnit);
  ASSERT_TRUE(a.Free(small).ok());
  auto again = a.Allocate(kUnit);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, small);
  (void)guard;
  EXPECT_TRUE(a.CheckInvariants().ok());
}

// Randomised property test: a shadow map of live slots checks disjointness and bounds on its
// own, and CheckInvariants runs after every operation. Bad frees are mixed in.
void RunProperty(uint32_t seed, uint64_t pool_units, int ops, int max_live) {
  SlotAllocator a = Make(pool_units * kUnit);
  std::mt19937_64 rng(seed);
  std::map<uint64_t, uint64_t> live;  // offset -> rounded size
  std::vector<uint64_t> order;
  auto random_size = [&] {
    // Mixed sizes: mostly small, some large, occasionally unaligned byte counts.
    const int kind = static_cast<int>(rng() % 10);
    if (kind < 6) return (rng() % 8 + 1) * kUnit;
    if (kind < 9) return rng() % (64 * kUnit) + 1;
    return rng() % (pool_units * kUnit / 4) + 1;
  };
  for (int i = 0; i < ops; ++i) {
    const uint64_t r = rng() % 100;
    if (r < 55 && static_cast<int>(live.size()) < max_live) {
      const uint64_t size = random_size();
      auto off = a.Allocate(size);
      if (!off.ok()) {
        ASSERT_EQ(off.status().code(), StatusCode::kFull) << off.status().ToString();
      } else {
        const uint64_t rounded = (size + kUnit - 1) / kUnit * kUnit;
        ASSERT_EQ(*off % kUnit, 0u);
        ASSERT_LE(*off + rounded, a.pool_size());
        auto next = live.lower_bound(*off);
        ASSERT_TRUE(next == live.end() || *off + rounded <= next->first) << "overlaps the next slot";
        ASSERT_TRUE(next == live.begin() || std::prev(next)->first + std::prev(next)->second <= *off)
            << "overlaps the previous slot";
        live.emplace(*off, rounded);
        order.push_back(*off);
      }
    } else if (r < 97 && !order.empty()) {
      const size_t idx = rng() % order.size();
      const uint64_t off = order[idx];
      order[idx] = order.back();
      order.pop_back();
      ASSERT_TRUE(a.Free(off).ok());
      live.erase(off);
    } else {
      // A bad free: an offset that is no live slot start.
      const SlotAllocatorStats before = a.stats();
      uint64_t bad = rng() % (a.pool_size() + 8 * kUnit);
      if (live.count(bad) != 0) bad += 1;
      ASSERT_EQ(a.Free(bad).code(), StatusCode::kInvalidArgument);
      ExpectSameStats(a.stats(), before);
    }
    Status inv = a.CheckInvariants();
    ASSERT_TRUE(inv.ok()) << "seed " << seed << " op " << i << ": " << inv.ToString();
    uint64_t used = 0;
    for (auto& [o, n] : live) used += n;
    ASSERT_EQ(a.stats().used_bytes, used);
    ASSERT_EQ(a.stats().live_slots, live.size());
  }
  for (uint64_t off : order) ASSERT_TRUE(a.Free(off).ok());
  ASSERT_TRUE(a.CheckInvariants().ok());
  EXPECT_EQ(a.stats().free_blocks, 1u);
}

int Scale() {
  const char* s = std::getenv("SHMKV_TEST_SCALE");  // the sanitizer build runs fewer operations
  return s ? std::max(1, std::atoi(s)) : 100;
}

TEST(SlotAllocatorProperty, SmallPoolHighChurn) {
  for (uint32_t seed : {1u, 2u, 3u, 4u}) RunProperty(seed, 512, 5000 * Scale(), 48);
}

TEST(SlotAllocatorProperty, LargePoolManyLiveSlots) {
  for (uint32_t seed : {11u, 12u}) RunProperty(seed, 1u << 20, 2000 * Scale(), 160);
}

}  // namespace
}  // namespace shmkv
