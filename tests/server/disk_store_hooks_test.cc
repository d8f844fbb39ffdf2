// The Store's lower-tier hooks that the L2 tier drives (dirty queue, io pins, loads).
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

}  // namespace
}  // namespace shmkv
