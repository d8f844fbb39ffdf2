#include "server/store.h"

#include <random>

#include <gtest/gtest.h>

namespace shmkv {
namespace {

constexpr uint64_t kChunk = 4096;
const Clock::time_point kT0{};

Store MakeStore(uint64_t chunks, std::chrono::milliseconds ttl = std::chrono::seconds(60)) {
  StoreOptions o;
  o.pool_size = chunks * kChunk;
  o.reserve_ttl = o.pin_ttl = ttl;
  auto s = Store::Create(o);
  EXPECT_TRUE(s.ok());
  return std::move(s).value();
}

std::vector<std::string_view> Keys(const std::vector<std::string>& k) {
  return {k.begin(), k.end()};
}

void StoreAll(Store& s, SessionId id, const std::vector<std::string>& keys) {
  std::vector<uint64_t> sizes(keys.size(), kChunk);
  auto r = s.PrepareStore(id, Keys(keys), sizes, kT0);
  ASSERT_TRUE(r.ok());
  for (const SlotResult& x : *r) ASSERT_EQ(x.outcome, SlotOutcome::kSlot);
  ASSERT_TRUE(s.CommitStore(id, Keys(keys), kT0).ok());
}

TEST(Store, ReservedObjectsAreInvisibleUntilCommitted) {
  Store s = MakeStore(8);
  s.OpenSession(1);
  s.OpenSession(2);
  std::vector<std::string> k = {"a"};
  std::vector<uint64_t> sz = {100};
  ASSERT_EQ((*s.PrepareStore(1, Keys(k), sz, kT0))[0].outcome, SlotOutcome::kSlot);
  EXPECT_EQ(s.Lookup(2, Keys(k), false, kT0), 0u);
  EXPECT_EQ(s.PrepareRetrieve(2, Keys(k), kT0)[0].outcome, SlotOutcome::kMissing);
  EXPECT_EQ((*s.PrepareStore(2, Keys(k), sz, kT0))[0].outcome, SlotOutcome::kBusy);
  EXPECT_FALSE(s.CommitStore(2, Keys(k), kT0).ok());  // not session 2's reservation
  ASSERT_TRUE(s.CommitStore(1, Keys(k), kT0).ok());
  EXPECT_EQ(s.Lookup(2, Keys(k), false, kT0), 1u);
  EXPECT_EQ((*s.PrepareStore(2, Keys(k), sz, kT0))[0].outcome, SlotOutcome::kExists);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, ClosingASessionFreesReservationsAndPins) {
  Store s = MakeStore(8);
  s.OpenSession(1);
  s.OpenSession(2);
  StoreAll(s, 1, {"c"});
  std::vector<std::string> r = {"r1", "r2"};
  std::vector<uint64_t> sz = {kChunk, kChunk};
  ASSERT_TRUE(s.PrepareStore(2, Keys(r), sz, kT0).ok());
  std::vector<std::string> c = {"c"};
  ASSERT_EQ(s.PrepareRetrieve(2, Keys(c), kT0)[0].outcome, SlotOutcome::kSlot);
  EXPECT_EQ(s.Lookup(2, Keys(c), true, kT0), 1u);
  EXPECT_EQ(s.stats().pinned_objects, 1u);
  EXPECT_EQ(s.stats().reserved_objects, 2u);
  s.CloseSession(2);
  EXPECT_EQ(s.stats().pinned_objects, 0u);
  EXPECT_EQ(s.stats().reserved_objects, 0u);
  EXPECT_EQ(s.Lookup(1, Keys(r), false, kT0), 0u);
  EXPECT_EQ(s.stats().used_bytes, kChunk);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, EvictionTakesChainTailsFirstAndNeverPinnedObjects) {
  Store s = MakeStore(8);
  s.OpenSession(1);
  StoreAll(s, 1, {"h0", "h1", "h2", "h3", "h4", "h5"});
  std::vector<std::string> pinned = {"h5"};
  ASSERT_EQ(s.PrepareRetrieve(1, Keys(pinned), kT0)[0].outcome, SlotOutcome::kSlot);
  StoreAll(s, 1, {"x0", "x1", "x2"});  // needs one eviction beyond the two free chunks
  std::vector<std::string> chain = {"h0", "h1", "h2", "h3", "h4"};
  EXPECT_EQ(s.Lookup(1, Keys(chain), false, kT0), 4u);  // h4, the unpinned tail, went
  EXPECT_EQ(s.stats().evictions, 1u);
  EXPECT_EQ(s.Lookup(1, Keys(pinned), false, kT0), 1u);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, FullWhenEverythingIsPinnedOrReserved) {
  Store s = MakeStore(2);
  s.OpenSession(1);
  StoreAll(s, 1, {"a"});
  std::vector<std::string> a = {"a"};
  s.PrepareRetrieve(1, Keys(a), kT0);
  std::vector<std::string> bc = {"b", "c"};
  std::vector<uint64_t> sz = {kChunk, kChunk};
  auto r = s.PrepareStore(1, Keys(bc), sz, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].outcome, SlotOutcome::kSlot);
  EXPECT_EQ((*r)[1].outcome, SlotOutcome::kFull);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, LeasesExpireAfterTheirTtl) {
  Store s = MakeStore(4, std::chrono::milliseconds(100));
  s.OpenSession(1);
  StoreAll(s, 1, {"a"});
  std::vector<std::string> a = {"a"}, b = {"b"};
  std::vector<uint64_t> sz = {kChunk};
  s.PrepareRetrieve(1, Keys(a), kT0);
  ASSERT_TRUE(s.PrepareStore(1, Keys(b), sz, kT0).ok());
  EXPECT_EQ(s.ExpireLeases(kT0 + std::chrono::milliseconds(50)), 0u);
  EXPECT_EQ(s.ExpireLeases(kT0 + std::chrono::milliseconds(100)), 2u);
  EXPECT_EQ(s.stats().pinned_objects, 0u);
  EXPECT_EQ(s.stats().reserved_objects, 0u);
  EXPECT_FALSE(s.CommitStore(1, Keys(b), kT0).ok());
  EXPECT_FALSE(s.CommitRetrieve(1, Keys(a)).ok());
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, AKeyTwiceInOneBatchGetsOneSlotAndBusy) {
  Store s = MakeStore(8);
  s.OpenSession(1);
  std::vector<std::string> k = {"a", "a"};
  std::vector<uint64_t> sz = {kChunk, kChunk};
  auto r = s.PrepareStore(1, Keys(k), sz, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].outcome, SlotOutcome::kSlot);
  EXPECT_EQ((*r)[1].outcome, SlotOutcome::kBusy);
  EXPECT_EQ(s.stats().reserved_objects, 1u);
  EXPECT_TRUE(s.CommitStore(1, Keys(k), kT0).ok());  // listing it twice commits it once
  EXPECT_EQ(s.stats().objects, 1u);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, AKeyThatGotFullLeavesNoTraceAndCanBeStoredLater) {
  Store s = MakeStore(2);
  s.OpenSession(1);
  std::vector<std::string> held = {"held"}, big = {"big"};
  std::vector<uint64_t> one = {kChunk}, two = {2 * kChunk};
  ASSERT_EQ((*s.PrepareStore(1, Keys(held), one, kT0))[0].outcome, SlotOutcome::kSlot);  // reserved: not evictable
  auto r = s.PrepareStore(1, Keys(big), two, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].outcome, SlotOutcome::kFull);
  EXPECT_EQ(s.stats().reserved_objects, 1u);
  EXPECT_FALSE(s.CommitStore(1, Keys(big), kT0).ok());  // never reserved
  EXPECT_TRUE(s.CheckInvariants().ok());
  EXPECT_EQ(s.AbortStore(1, Keys(held)), 1u);
  r = s.PrepareStore(1, Keys(big), two, kT0);  // the same key, once there is room
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].outcome, SlotOutcome::kSlot);
  EXPECT_TRUE(s.CommitStore(1, Keys(big), kT0).ok());
  EXPECT_EQ(s.Lookup(1, Keys(big), false, kT0), 1u);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, CommitAfterAbortOrExpiryIsAnErrorAndCommitsNothing) {
  Store s = MakeStore(8, std::chrono::milliseconds(100));
  s.OpenSession(1);
  std::vector<std::string> ab = {"a", "b"}, a = {"a"};
  std::vector<uint64_t> sz = {kChunk, kChunk};
  ASSERT_TRUE(s.PrepareStore(1, Keys(ab), sz, kT0).ok());
  EXPECT_EQ(s.AbortStore(1, Keys(a)), 1u);
  Status st = s.CommitStore(1, Keys(ab), kT0);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("key #0 is not reserved"), std::string::npos) << st.message();
  EXPECT_EQ(s.stats().objects, 0u);  // all or nothing: "b" stays reserved
  EXPECT_EQ(s.stats().reserved_objects, 1u);
  EXPECT_EQ(s.ExpireLeases(kT0 + std::chrono::milliseconds(100)), 1u);
  EXPECT_EQ(s.stats().reserved_objects, 0u);
  std::vector<std::string> b = {"b"};
  EXPECT_FALSE(s.CommitStore(1, Keys(b), kT0).ok());
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, RandomisedSessionsKeepEveryInvariant) {
  Store s = MakeStore(64);
  std::mt19937 rng(5);
  for (SessionId id = 1; id <= 4; ++id) s.OpenSession(id);
  auto key = [&] { return "k" + std::to_string(rng() % 96); };
  for (int i = 0; i < 20000; ++i) {
    const SessionId id = rng() % 4 + 1;
    std::vector<std::string> ks = {key(), key()};
    const int op = static_cast<int>(rng() % 8);
    if (op == 0) {
      std::vector<uint64_t> sz = {rng() % (3 * kChunk) + 1, rng() % kChunk + 1};
      ASSERT_TRUE(s.PrepareStore(id, Keys(ks), sz, kT0).ok());
    } else if (op == 1) {
      (void)s.CommitStore(id, Keys(ks), kT0);
    } else if (op == 2) {
      s.AbortStore(id, Keys(ks));
    } else if (op == 3) {
      s.PrepareRetrieve(id, Keys(ks), kT0);
    } else if (op == 4) {
      (void)s.CommitRetrieve(id, Keys(ks));
    } else if (op == 5) {
      s.Lookup(id, Keys(ks), rng() % 2 == 0, kT0);
    } else if (op == 6) {
      s.Remove(Keys(ks));
    } else if (rng() % 50 == 0) {
      s.CloseSession(id);
      s.OpenSession(id);
    }
    Status inv = s.CheckInvariants();
    ASSERT_TRUE(inv.ok()) << "op " << i << ": " << inv.ToString();
  }
}

}  // namespace
}  // namespace shmkv
