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
  for (const SlotResult& x : *r) ASSERT_EQ(x.status, SlotStatus::kOk);
  ASSERT_TRUE(s.CommitStore(id, Keys(keys), kT0).ok());
}

TEST(Store, ReservedObjectsAreInvisibleUntilCommitted) {
  Store s = MakeStore(8);
  s.OpenSession(1);
  s.OpenSession(2);
  std::vector<std::string> k = {"a"};
  std::vector<uint64_t> sz = {100};
  ASSERT_EQ((*s.PrepareStore(1, Keys(k), sz, kT0))[0].status, SlotStatus::kOk);
  EXPECT_EQ(s.Lookup(2, Keys(k), false, kT0), 0u);
  EXPECT_EQ(s.PrepareRetrieve(2, Keys(k), kT0)[0].status, SlotStatus::kMissing);
  EXPECT_EQ((*s.PrepareStore(2, Keys(k), sz, kT0))[0].status, SlotStatus::kBusy);
  EXPECT_FALSE(s.CommitStore(2, Keys(k), kT0).ok());  // not session 2's reservation
  ASSERT_TRUE(s.CommitStore(1, Keys(k), kT0).ok());
  EXPECT_EQ(s.Lookup(2, Keys(k), false, kT0), 1u);
  EXPECT_EQ((*s.PrepareStore(2, Keys(k), sz, kT0))[0].status, SlotStatus::kExists);
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
  ASSERT_EQ(s.PrepareRetrieve(2, Keys(c), kT0)[0].status, SlotStatus::kOk);
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
  ASSERT_EQ(s.PrepareRetrieve(1, Keys(pinned), kT0)[0].status, SlotStatus::kOk);
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
  EXPECT_EQ((*r)[0].status, SlotStatus::kOk);
  EXPECT_EQ((*r)[1].status, SlotStatus::kFull);
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
  EXPECT_EQ(s.CommitStore(1, Keys(b), kT0).code(), StatusCode::kExpired);
  EXPECT_EQ(s.CommitRetrieve(1, Keys(a)).code(), StatusCode::kExpired);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

// The probe's defect: a stalled writer's slot went to the next writer when its reservation
// expired, and the stalled writer then overwrote that writer's committed bytes.
TEST(Store, AnExpiredReservationsSlotNeverGoesToAnotherWriter) {
  Store s = MakeStore(2, std::chrono::milliseconds(100));
  s.OpenSession(1);
  s.OpenSession(2);
  std::vector<std::string> stalled = {"stalled"}, other = {"o1", "o2"};
  std::vector<uint64_t> one = {kChunk}, two = {kChunk, kChunk};
  auto r = s.PrepareStore(1, Keys(stalled), one, kT0);
  ASSERT_TRUE(r.ok());
  const uint64_t stalled_offset = (*r)[0].offset;
  EXPECT_EQ(s.ExpireLeases(kT0 + std::chrono::milliseconds(100)), 1u);
  EXPECT_EQ(s.stats().reserved_objects, 0u);
  EXPECT_EQ(s.stats().quarantined_slots, 1u);
  EXPECT_EQ(s.stats().quarantined_bytes, kChunk);
  // Session 2 fills the pool: only the free chunk is handed out, never the quarantined one.
  r = s.PrepareStore(2, Keys(other), two, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].status, SlotStatus::kOk);
  EXPECT_NE((*r)[0].offset, stalled_offset);
  EXPECT_EQ((*r)[1].status, SlotStatus::kFull);
  // The key itself is free again: another session may store it (into another slot).
  EXPECT_EQ(s.AbortStore(2, Keys(other)), 1u);
  r = s.PrepareStore(2, Keys(stalled), one, kT0);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ((*r)[0].status, SlotStatus::kOk);
  EXPECT_NE((*r)[0].offset, stalled_offset);
  ASSERT_TRUE(s.CommitStore(2, Keys(stalled), kT0).ok());
  // The stalled writer wakes up and commits: told kExpired with the key's index, nothing of its
  // own becomes visible, and its acknowledgement frees the quarantined slot.
  std::vector<uint32_t> expired;
  Status st = s.CommitStore(1, Keys(stalled), kT0, &expired);
  EXPECT_EQ(st.code(), StatusCode::kExpired) << st.ToString();
  EXPECT_NE(st.message().find("key #0"), std::string::npos) << st.message();
  EXPECT_EQ(expired, std::vector<uint32_t>{0});
  EXPECT_EQ(s.stats().quarantined_slots, 0u);
  EXPECT_EQ(s.stats().objects, 1u);
  EXPECT_EQ(s.stats().used_bytes, kChunk);
  // Acknowledged once: a second commit is an ordinary error.
  EXPECT_EQ(s.CommitStore(1, Keys(stalled), kT0).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, AbortAcknowledgesAnExpiredReservation) {
  Store s = MakeStore(2, std::chrono::milliseconds(100));
  s.OpenSession(1);
  std::vector<std::string> k = {"k"};
  std::vector<uint64_t> one = {kChunk};
  ASSERT_TRUE(s.PrepareStore(1, Keys(k), one, kT0).ok());
  s.ExpireLeases(kT0 + std::chrono::milliseconds(100));
  EXPECT_EQ(s.stats().quarantined_slots, 1u);
  EXPECT_EQ(s.AbortStore(1, Keys(k)), 0u);     // no live reservation was freed ...
  EXPECT_EQ(s.stats().quarantined_slots, 0u);  // ... but the quarantined slot was
  EXPECT_EQ(s.stats().used_bytes, 0u);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, AClosedSessionsQuarantineWaitsForItsProcessWhenAsked) {
  Store s = MakeStore(4, std::chrono::milliseconds(100));
  s.OpenSession(1);
  s.OpenSession(2);
  std::vector<std::string> k = {"k1", "k2"}, fresh = {"fresh"};
  std::vector<uint64_t> two = {kChunk, kChunk}, one = {kChunk};
  ASSERT_TRUE(s.PrepareStore(1, Keys(k), two, kT0).ok());
  s.ExpireLeases(kT0 + std::chrono::milliseconds(100));
  ASSERT_TRUE(s.PrepareStore(1, Keys(fresh), one, kT0 + std::chrono::milliseconds(100)).ok());
  // Its process may still run: the live reservation is freed, the quarantine is kept.
  EXPECT_TRUE(s.CloseSession(1, /*writer_may_still_run=*/true));
  EXPECT_EQ(s.stats().reserved_objects, 0u);
  EXPECT_EQ(s.stats().quarantined_slots, 2u);
  EXPECT_EQ(s.stats().used_bytes, 2 * kChunk);
  EXPECT_TRUE(s.CheckInvariants().ok());
  s.ReleaseOrphans(1);
  EXPECT_EQ(s.stats().quarantined_slots, 0u);
  EXPECT_EQ(s.stats().used_bytes, 0u);
  EXPECT_TRUE(s.CheckInvariants().ok());
  // Without a live process, closing frees the quarantine at once.
  ASSERT_TRUE(s.PrepareStore(2, Keys(k), two, kT0).ok());
  s.ExpireLeases(kT0 + std::chrono::milliseconds(100));
  EXPECT_FALSE(s.CloseSession(2));
  EXPECT_EQ(s.stats().used_bytes, 0u);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, AReaderWhosePinExpiredIsToldByCommitRetrieve) {
  Store s = MakeStore(4, std::chrono::milliseconds(100));
  s.OpenSession(1);
  s.OpenSession(2);
  StoreAll(s, 1, {"a", "b", "c"});
  std::vector<std::string> ab = {"a", "b"}, c = {"c"}, abc = {"a", "b", "c"};
  ASSERT_EQ(s.PrepareRetrieve(2, Keys(ab), kT0)[0].status, SlotStatus::kOk);
  ASSERT_EQ(s.PrepareRetrieve(2, Keys(c), kT0 + std::chrono::milliseconds(60))[0].status, SlotStatus::kOk);
  EXPECT_EQ(s.ExpireLeases(kT0 + std::chrono::milliseconds(100)), 2u);  // a and b, not c
  EXPECT_EQ(s.stats().pinned_objects, 1u);
  // The expired objects are evictable again (their slots may be reused while the reader reads).
  std::vector<uint32_t> expired;
  Status st = s.CommitRetrieve(2, Keys(abc), &expired);
  EXPECT_EQ(st.code(), StatusCode::kExpired) << st.ToString();
  EXPECT_EQ(expired, (std::vector<uint32_t>{0, 1}));
  EXPECT_NE(st.message().find("#0, #1"), std::string::npos) << st.message();
  EXPECT_EQ(s.stats().pinned_objects, 0u);  // c was released all the same
  EXPECT_TRUE(s.CheckInvariants().ok());
  // Reported once; the next mention is an ordinary error, and it releases nothing.
  EXPECT_EQ(s.CommitRetrieve(2, Keys(ab)).code(), StatusCode::kInvalidArgument);
  // A batch with a key never pinned releases nothing and reports no expiry.
  ASSERT_EQ(s.PrepareRetrieve(2, Keys(c), kT0)[0].status, SlotStatus::kOk);
  std::vector<std::string> c_and_never = {"c", "never"};
  EXPECT_EQ(s.CommitRetrieve(2, Keys(c_and_never)).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.stats().pinned_objects, 1u);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, AKeyTwiceInOneBatchGetsOneSlotAndBusy) {
  Store s = MakeStore(8);
  s.OpenSession(1);
  std::vector<std::string> k = {"a", "a"};
  std::vector<uint64_t> sz = {kChunk, kChunk};
  auto r = s.PrepareStore(1, Keys(k), sz, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].status, SlotStatus::kOk);
  EXPECT_EQ((*r)[1].status, SlotStatus::kBusy);
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
  ASSERT_EQ((*s.PrepareStore(1, Keys(held), one, kT0))[0].status, SlotStatus::kOk);  // reserved: not evictable
  auto r = s.PrepareStore(1, Keys(big), two, kT0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].status, SlotStatus::kFull);
  EXPECT_EQ(s.stats().reserved_objects, 1u);
  EXPECT_FALSE(s.CommitStore(1, Keys(big), kT0).ok());  // never reserved
  EXPECT_TRUE(s.CheckInvariants().ok());
  EXPECT_EQ(s.AbortStore(1, Keys(held)), 1u);
  r = s.PrepareStore(1, Keys(big), two, kT0);  // the same key, once there is room
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].status, SlotStatus::kOk);
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
  EXPECT_EQ(s.CommitStore(1, Keys(b), kT0).code(), StatusCode::kExpired);
  EXPECT_EQ(s.stats().objects, 0u);
  EXPECT_TRUE(s.CheckInvariants().ok());
}

TEST(Store, CountsLookedUpKeysAndBytesStoredAndRetrieved) {
  Store s = MakeStore(8);
  s.OpenSession(1);
  StoreAll(s, 1, {"a", "b"});
  const std::vector<std::string> asked = {"a", "b", "c"};
  EXPECT_EQ(s.Lookup(1, Keys(asked), false, kT0), 2u);
  const std::vector<std::string> one = {"a"};
  ASSERT_EQ(s.PrepareRetrieve(1, Keys(one), kT0)[0].status, SlotStatus::kOk);
  const StoreStats st = s.stats();
  EXPECT_EQ(st.lookups, 1u);
  EXPECT_EQ(st.lookup_keys, 3u);
  EXPECT_EQ(st.lookup_hits, 2u);
  EXPECT_EQ(st.stores, 2u);
  EXPECT_EQ(st.stored_bytes, 2 * kChunk);
  EXPECT_EQ(st.retrieves, 1u);
  EXPECT_EQ(st.retrieved_bytes, kChunk);
}

TEST(Store, RandomisedSessionsKeepEveryInvariant) {
  Store s = MakeStore(64, std::chrono::milliseconds(100));
  Clock::time_point now = kT0;
  std::mt19937 rng(5);
  for (SessionId id = 1; id <= 4; ++id) s.OpenSession(id);
  auto key = [&] { return "k" + std::to_string(rng() % 96); };
  for (int i = 0; i < 20000; ++i) {
    const SessionId id = rng() % 4 + 1;
    std::vector<std::string> ks = {key(), key()};
    const int op = static_cast<int>(rng() % 8);
    if (op == 0) {
      std::vector<uint64_t> sz = {rng() % (3 * kChunk) + 1, rng() % kChunk + 1};
      ASSERT_TRUE(s.PrepareStore(id, Keys(ks), sz, now).ok());
    } else if (op == 1) {
      (void)s.CommitStore(id, Keys(ks), now);
    } else if (op == 2) {
      s.AbortStore(id, Keys(ks));
    } else if (op == 3) {
      s.PrepareRetrieve(id, Keys(ks), now);
    } else if (op == 4) {
      (void)s.CommitRetrieve(id, Keys(ks));
    } else if (op == 5) {
      s.Lookup(id, Keys(ks), rng() % 2 == 0, now);
    } else if (op == 6) {
      s.Remove(Keys(ks));
    } else if (rng() % 50 == 0) {
      if (s.CloseSession(id, /*writer_may_still_run=*/rng() % 2 == 0)) s.ReleaseOrphans(id);
      s.OpenSession(id);
    } else if (rng() % 20 == 0) {
      now += std::chrono::milliseconds(rng() % 150);
      s.ExpireLeases(now);
    }
    Status inv = s.CheckInvariants();
    ASSERT_TRUE(inv.ok()) << "op " << i << ": " << inv.ToString();
  }
}

}  // namespace
}  // namespace shmkv
