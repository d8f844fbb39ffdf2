// The Store's lower-tier hooks that the L2 tier drives (dirty queue, io pins, loads).
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/store.h"

namespace shmkv {
namespace {

constexpr uint64_t kChunk = 4096;
const Clock::time_point kT0{};

Store MakeStore(uint64_t chunks) {
  StoreOptions o;
  o.pool_size = chunks * kChunk;
  o.track_dirty = true;
  auto s = Store::Create(o);
  EXPECT_TRUE(s.ok());
  return std::move(s).value();
}

void Put(Store& s, SessionId id, std::string_view key) {
  std::string_view keys[] = {key};
  uint64_t sizes[] = {kChunk};
  auto r = s.PrepareStore(id, keys, sizes, kT0);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ((*r)[0].status, SlotStatus::kOk);
  ASSERT_TRUE(s.CommitStore(id, keys, kT0).ok());
}

TEST(StoreDiskHooks, CommitsAreDirtyOldestFirstAndAWriteKeepsTheSlot) {
  Store s = MakeStore(2);
  s.OpenSession(1);
  Put(s, 1, "a");
  Put(s, 1, "b");
  EXPECT_EQ(s.stats().dirty_objects, 2u);
  auto taken = s.TakeDirty(1);
  ASSERT_EQ(taken.size(), 1u);
  EXPECT_EQ(taken[0].key, "a");
  // While "a" is being written it cannot be evicted, removed or reused: "c" evicts "b".
  std::string_view rm[] = {"a"};
  EXPECT_EQ(s.Remove(rm)[0], RemoveOutcome::kBusy);
  Put(s, 1, "c");
  EXPECT_TRUE(s.IsCommitted("a"));
  EXPECT_FALSE(s.IsCommitted("b"));
  EXPECT_EQ(s.stats().evicted_dirty, 1u);  // "b" was dropped before any write: counted
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants().ToString();
  s.FinishWrite("a", /*requeue=*/false);
  // Clean now: evicting it loses nothing and is not counted as a dirty drop.
  Put(s, 1, "d");
  EXPECT_FALSE(s.IsCommitted("a"));
  EXPECT_EQ(s.stats().evicted_dirty, 1u);
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants().ToString();
}

// Review finding 5: a failed write goes to the tail, so an object that always fails does not
// keep the others from being written.
TEST(StoreDiskHooks, AFailedWriteRequeuesAtTheTail) {
  Store s = MakeStore(4);
  s.OpenSession(1);
  Put(s, 1, "a");
  Put(s, 1, "b");
  auto taken = s.TakeDirty(1);
  ASSERT_EQ(taken[0].key, "a");
  s.FinishWrite(taken[0].key, /*requeue=*/true);
  EXPECT_EQ(s.stats().dirty_objects, 2u);
  EXPECT_EQ(s.TakeDirty(1)[0].key, "b");
  EXPECT_EQ(s.TakeDirty(1)[0].key, "a");
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants().ToString();
}

TEST(StoreDiskHooks, LoadsAreInvisibleUntilFinishedAndFailuresLeaveNothing) {
  Store s = MakeStore(4);
  s.OpenSession(1);
  auto off = s.ReserveForLoad("x", 100);
  ASSERT_TRUE(off.ok());
  std::string_view keys[] = {"x"};
  EXPECT_EQ(s.Lookup(1, keys, false, kT0), 0u);
  EXPECT_EQ(s.PrepareRetrieve(1, keys, kT0)[0].status, SlotStatus::kMissing);
  EXPECT_EQ(s.ReserveForLoad("x", 100).status().code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants().ToString();
  s.FinishLoad("x", /*ok=*/false);
  EXPECT_FALSE(s.Contains("x"));
  EXPECT_EQ(s.stats().used_bytes, 0u);

  ASSERT_TRUE(s.ReserveForLoad("y", 100).ok());
  s.FinishLoad("y", /*ok=*/true);
  std::string_view ykeys[] = {"y"};
  EXPECT_EQ(s.Lookup(1, ykeys, false, kT0), 1u);
  EXPECT_EQ(s.stats().dirty_objects, 0u);  // it came from disk: clean
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants().ToString();
}

TEST(StoreDiskHooks, IoPinsKeepLoadedObjectsUntilTheRetrievePinsThem) {
  Store s = MakeStore(2);
  s.OpenSession(1);
  ASSERT_TRUE(s.ReserveForLoad("a", kChunk).ok());
  s.FinishLoad("a", true);
  ASSERT_TRUE(s.IoPin("a"));
  // The pool is full of "a" and "b"; a further load must not evict the io-pinned "a".
  ASSERT_TRUE(s.ReserveForLoad("b", kChunk).ok());
  s.FinishLoad("b", true);
  ASSERT_TRUE(s.ReserveForLoad("c", kChunk).ok());  // evicts "b"
  EXPECT_TRUE(s.IsCommitted("a"));
  EXPECT_FALSE(s.Contains("b"));
  EXPECT_EQ(s.ReserveForLoad("d", kChunk).status().code(), StatusCode::kFull);  // a pinned, c reserved
  std::string_view keys[] = {"a"};
  EXPECT_EQ(s.PrepareRetrieve(1, keys, kT0)[0].status, SlotStatus::kOk);
  s.IoUnpin("a");
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants().ToString();
  EXPECT_TRUE(s.CommitRetrieve(1, keys).ok());
  s.FinishLoad("c", false);
  EXPECT_TRUE(s.CheckInvariants().ok()) << s.CheckInvariants().ToString();
}

// stats() is kept incrementally (O(1) in the objects); CheckInvariants compares every counter
// with a full walk. Random sessions interleaved with the lower-tier hooks (dirty writes, io pins,
// loads), which change pins and states outside the client operations.
TEST(StoreDiskHooks, IncrementalStatsMatchAWalkUnderRandomTierTraffic) {
  Store s = MakeStore(48);
  std::mt19937 rng(13);
  for (SessionId id = 1; id <= 3; ++id) s.OpenSession(id);
  auto key = [&] { return "k" + std::to_string(rng() % 80); };
  std::vector<std::string> writing;
  std::vector<std::string> io_pinned;
  std::vector<std::string> loading;
  Clock::time_point now = kT0;
  for (int i = 0; i < 20000; ++i) {
    const SessionId id = rng() % 3 + 1;
    std::vector<std::string> ks = {key(), key()};
    std::vector<std::string_view> kv = {ks[0], ks[1]};
    switch (rng() % 12) {
      case 0: {
        std::vector<uint64_t> sz = {rng() % (2 * kChunk) + 1, rng() % kChunk + 1};
        ASSERT_TRUE(s.PrepareStore(id, kv, sz, now).ok());
        break;
      }
      case 1: (void)s.CommitStore(id, kv, now); break;
      case 2: s.AbortStore(id, kv); break;
      case 3: s.PrepareRetrieve(id, kv, now); break;
      case 4: (void)s.CommitRetrieve(id, kv); break;
      case 5: s.Lookup(id, kv, rng() % 2 == 0, now); break;
      case 6: s.Remove(kv); break;
      case 7:
        for (IoSlot& t : s.TakeDirty(rng() % 3)) writing.push_back(t.key);
        break;
      case 8:
        if (!writing.empty()) {
          s.FinishWrite(writing.back(), rng() % 3 == 0);
          writing.pop_back();
        }
        break;
      case 9:
        if (s.IoPin(ks[0])) io_pinned.push_back(ks[0]);
        if (!io_pinned.empty() && rng() % 2 == 0) {
          s.IoUnpin(io_pinned.front());
          io_pinned.erase(io_pinned.begin());
        }
        break;
      case 10:
        if (s.ReserveForLoad(ks[0], rng() % kChunk + 1).ok()) loading.push_back(ks[0]);
        if (!loading.empty() && rng() % 2 == 0) {
          s.FinishLoad(loading.front(), rng() % 4 != 0);
          loading.erase(loading.begin());
        }
        break;
      default:
        if (rng() % 40 == 0) {
          if (s.CloseSession(id, rng() % 2 == 0)) s.ReleaseOrphans(id);
          s.OpenSession(id);
        } else if (rng() % 10 == 0) {
          now += std::chrono::seconds(rng() % 90);
          s.ExpireLeases(now);
        }
    }
    Status inv = s.CheckInvariants();
    ASSERT_TRUE(inv.ok()) << "op " << i << ": " << inv.ToString();
  }
  const StoreStats st = s.stats();
  EXPECT_GT(st.stores, 0u);
  EXPECT_GT(st.evictions, 0u);
  EXPECT_LE(st.used_bytes, st.pool_size);
}

}  // namespace
}  // namespace shmkv
