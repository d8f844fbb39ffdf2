// KvService over a real Store (L1) and FakeTier, a lower tier whose answers the test releases when
// it chooses: lookups and loads that answer later, loads that fail, loads that arrive after a
// remove, a clear or the reader's disconnect.
#include "server/kv_service.h"

#include <gtest/gtest.h>

#include <deque>
#include <map>
#include <set>

namespace shmkv {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kObject = kSlotAlignment;
const Clock::time_point kT0 = Clock::now();

// A lower tier holding `held` (key -> size). Completions wait in `pending` until RunPending()
// when `async` is set: the test plays the event loop.
class FakeTier final : public Tier {
 public:
  explicit FakeTier(Store& l1, std::string name = "fake") : l1_(l1), name_(std::move(name)) {}

  std::map<std::string, uint64_t, std::less<>> held;
  bool async = true;
  bool fail_loads = false;
  bool up = true;
  int after_l1_changes = 0;
  int counted_hits = 0;
  std::vector<std::string>* drained_log = nullptr;

  void RunPending() {
    while (!pending_.empty()) {
      auto f = std::move(pending_.front());
      pending_.pop_front();
      f();
    }
  }
  size_t pending() const { return pending_.size(); }

  std::string_view name() const override { return name_; }

  void LookupLeading(std::span<const std::string_view> keys, const Covered& covered, CountDone done) override {
    // Per the contract the views and `covered` die with the call: keep what the answer needs.
    std::vector<std::string> copy(keys.begin(), keys.end());
    std::vector<bool> by_others;
    for (std::string_view k : keys) by_others.push_back(covered(k));
    auto answer = [this, copy = std::move(copy), by_others = std::move(by_others), done = std::move(done)] {
      size_t n = 0;
      while (n < copy.size() && (held.contains(copy[n]) || by_others[n])) ++n;
      done(n);
    };
    Later(std::move(answer));
  }

  bool Holds(std::string_view key) const override { return up && held.contains(key); }
  void CountedHit(std::string_view) override { ++counted_hits; }

  void Load(std::vector<std::string> keys, const Covered& covered, LoadDone done) override {
    auto pinned = std::make_shared<std::vector<std::string>>();
    std::vector<std::string> loading;
    for (const std::string& key : keys) {
      if (l1_.IsCommitted(key)) {
        if (l1_.IoPin(key)) pinned->push_back(key);
        continue;
      }
      auto it = held.find(key);
      if (it == held.end() && covered(key)) continue;  // another tier's
      if (it == held.end() || l1_.Contains(key)) break;
      if (!l1_.ReserveForLoad(key, it->second).ok()) break;
      loading.push_back(key);
      loading_.insert(key);
    }
    Later([this, loading, pinned, done = std::move(done)] {
      for (const std::string& key : loading) {
        const bool ok = !fail_loads && loading_.erase(key) > 0;  // removed or cleared meanwhile: not ok
        l1_.FinishLoad(key, ok);
        if (ok && l1_.IoPin(key)) pinned->push_back(key);
      }
      done(std::move(*pinned));
    });
  }

  void AfterL1Change() override { ++after_l1_changes; }

  bool Remove(std::string_view key) override {
    loading_.erase(std::string(key));
    return held.erase(std::string(key)) > 0;
  }

  size_t Clear(std::string_view prefix) override {
    size_t not_in_l1 = 0;
    for (auto it = held.begin(); it != held.end();) {
      if (it->first.starts_with(prefix)) {
        if (!l1_.IsCommitted(it->first)) ++not_in_l1;
        it = held.erase(it);
      } else {
        ++it;
      }
    }
    std::erase_if(loading_, [&](const std::string& k) { return k.starts_with(prefix); });
    return not_in_l1;
  }

  void AppendStats(std::vector<TierCounter>& out) const override { out.emplace_back("fake_objects", held.size()); }

  TierHealth Health() const override { return up ? TierHealth{} : TierHealth{false, "unplugged"}; }

  void Drain(std::chrono::milliseconds, std::function<void()> done) override {
    Later([this, done = std::move(done)] {
      if (drained_log != nullptr) drained_log->push_back(name_);
      done();
    });
  }

 private:
  void Later(std::function<void()> f) {
    if (async) {
      pending_.push_back(std::move(f));
    } else {
      f();
    }
  }

  Store& l1_;
  std::string name_;
  std::deque<std::function<void()>> pending_;
  std::set<std::string, std::less<>> loading_;
};

// Records what the service answers through a deferral.
struct RecordingDeferral final : Deferral {
  int deferred = 0;
  std::optional<uint64_t> count;
  std::optional<std::vector<SlotResult>> slots;
  LookupDone DeferLookup() override {
    ++deferred;
    return [this](uint64_t c) { count = c; };
  }
  RetrieveDone DeferRetrieve() override {
    ++deferred;
    return [this](std::span<const SlotResult> s) { slots.emplace(s.begin(), s.end()); };
  }
};

class KvServiceTest : public ::testing::Test {
 protected:
  KvServiceTest() : service_(MakeStore(), {"lmcache_l1_pool_test", 64 * kObject, 7, ""}) {
    service_.OpenSession(kWriter);
    service_.OpenSession(kReader);
  }

  static Store MakeStore() {
    StoreOptions o;
    o.pool_size = 64 * kObject;
    o.track_dirty = true;  // as the server runs it with a lower tier
    return std::move(Store::Create(o)).value();
  }

  FakeTier& AddFake(std::string name = "fake") {
    auto tier = std::make_unique<FakeTier>(service_.l1(), std::move(name));
    FakeTier& ref = *tier;
    service_.AddTier(std::move(tier));
    return ref;
  }

  // Stores `keys` in L1 through the service, as a client would.
  void Put(std::vector<std::string_view> keys) {
    std::vector<uint64_t> sizes(keys.size(), kObject);
    std::vector<SlotResult> slots;
    ASSERT_TRUE(service_.PrepareStore(kWriter, keys, sizes, kT0, slots).ok());
    for (const SlotResult& s : slots) ASSERT_EQ(s.status, SlotStatus::kOk);
    ASSERT_TRUE(service_.CommitStore(kWriter, keys, kT0, nullptr).ok());
  }

  void ExpectClean() {
    ASSERT_TRUE(service_.l1().CheckInvariants().ok()) << service_.l1().CheckInvariants().ToString();
  }

  static constexpr SessionId kWriter = 1, kReader = 2;
  KvService service_;
};

std::vector<SlotStatus> Statuses(const std::vector<SlotResult>& slots) {
  std::vector<SlotStatus> out;
  for (const SlotResult& s : slots) out.push_back(s.status);
  return out;
}

TEST_F(KvServiceTest, WithoutTiersEveryAnswerComesAtOnceFromL1) {
  Put({"a", "b"});
  RecordingDeferral d;
  const std::string_view keys[] = {"a", "b", "c"};
  EXPECT_EQ(service_.Lookup(kReader, keys, false, kT0, d), 2u);
  std::vector<SlotResult> slots;
  EXPECT_TRUE(service_.PrepareRetrieve(kReader, keys, kT0, slots, d));
  EXPECT_EQ(Statuses(slots), (std::vector{SlotStatus::kOk, SlotStatus::kOk, SlotStatus::kMissing}));
  EXPECT_EQ(d.deferred, 0);
}

TEST_F(KvServiceTest, ATierContinuesL1sRunAndAnAnswerAtOnceIsNotDeferred) {
  FakeTier& tier = AddFake();
  tier.async = false;
  Put({"a", "c"});
  tier.held = {{"b", kObject}, {"d", kObject}};
  RecordingDeferral d;
  const std::string_view keys[] = {"a", "b", "c", "d", "e", "f"};
  EXPECT_EQ(service_.Lookup(kReader, keys, false, kT0, d), 4u);  // L1, tier, L1, tier
  EXPECT_EQ(d.deferred, 0);
}

TEST_F(KvServiceTest, ALookupThatATierAnswersLaterKeepsItsKeysAndGoesOnToTheNextTier) {
  FakeTier& slow = AddFake("slow");
  FakeTier& fast = AddFake("fast");
  fast.async = false;
  Put({"a"});
  slow.held = {{"b", kObject}};
  fast.held = {{"c", kObject}};
  RecordingDeferral d;
  std::vector<std::string> storage = {"a", "b", "c", "x"};
  std::vector<std::string_view> keys(storage.begin(), storage.end());
  EXPECT_EQ(service_.Lookup(kReader, keys, false, kT0, d), std::nullopt);
  EXPECT_EQ(d.deferred, 1);
  // The request's memory is reused before the tier answers: the service kept its own copy.
  for (std::string& k : storage) k = "zz";
  EXPECT_FALSE(d.count.has_value());
  slow.RunPending();
  EXPECT_EQ(d.count, 3u);
}

TEST_F(KvServiceTest, ARunAlternatingBetweenL1AndTwoTiersIsCountedWholeAndLoadedFromEachTier) {
  FakeTier& upper = AddFake("upper");
  FakeTier& lower = AddFake("lower");
  Put({"l1-a", "l1-b"});
  upper.held = {{"up-a", kObject}, {"up-b", kObject}};
  lower.held = {{"low-a", kObject}, {"low-b", kObject}, {"low-c", kObject}};
  // L1, upper, lower, L1, upper, lower, nowhere, lower: the run is the first six.
  const std::string_view keys[] = {"l1-a", "up-a", "low-a", "l1-b", "up-b", "low-b", "none", "low-c"};
  RecordingDeferral d;
  EXPECT_EQ(service_.Lookup(kReader, keys, false, kT0, d), std::nullopt);
  upper.RunPending();
  lower.RunPending();
  EXPECT_EQ(d.count, 6u);
  // The upper tier's pass went through the lower tier's keys (covered): they are the lower's hits.
  EXPECT_EQ(lower.counted_hits, 2);
  EXPECT_EQ(upper.counted_hits, 0);

  std::vector<SlotResult> slots;
  EXPECT_FALSE(service_.PrepareRetrieve(kReader, keys, kT0, slots, d));
  for (int round = 0; round < 3 && !d.slots; ++round) {
    upper.RunPending();
    lower.RunPending();
  }
  ASSERT_TRUE(d.slots.has_value());
  EXPECT_EQ(Statuses(*d.slots),
            (std::vector{SlotStatus::kOk, SlotStatus::kOk, SlotStatus::kOk, SlotStatus::kOk, SlotStatus::kOk,
                         SlotStatus::kOk, SlotStatus::kMissing, SlotStatus::kMissing}));
  // "low-c" comes after the gap: not loaded.
  EXPECT_FALSE(service_.l1().Contains("low-c"));
  ASSERT_TRUE(service_.CommitRetrieve(kReader, std::span(keys).first(6), nullptr).ok());
  EXPECT_EQ(service_.l1().stats().pinned_objects, 0u);
  ExpectClean();
}

TEST_F(KvServiceTest, PrepareStoreOfAKeyATierHoldsIsExistsAndReservesTheRest) {
  FakeTier& tier = AddFake();
  tier.held = {{"below", kObject}};
  std::vector<SlotResult> slots;
  const std::string_view keys[] = {"below", "new"};
  const uint64_t sizes[] = {kObject, kObject};
  ASSERT_TRUE(service_.PrepareStore(kWriter, keys, sizes, kT0, slots).ok());
  EXPECT_EQ(Statuses(slots), (std::vector{SlotStatus::kExists, SlotStatus::kOk}));
  EXPECT_FALSE(service_.l1().Contains("below"));
  EXPECT_GE(tier.after_l1_changes, 1);  // a reservation may have evicted: write-behind may start
  ASSERT_TRUE(service_.CommitStore(kWriter, std::span(keys).subspan(1), kT0, nullptr).ok());
  EXPECT_GE(tier.after_l1_changes, 2);
  ExpectClean();
}

TEST_F(KvServiceTest, ARetrieveWaitsForTheLoadsThenPinsTheWholeRunAndReleasesTheTiersPins) {
  FakeTier& tier = AddFake();
  Put({"a"});
  tier.held = {{"b", kObject}};
  RecordingDeferral d;
  const std::string_view keys[] = {"a", "b"};
  std::vector<SlotResult> slots;
  EXPECT_FALSE(service_.PrepareRetrieve(kReader, keys, kT0, slots, d));
  EXPECT_EQ(d.deferred, 1);
  EXPECT_FALSE(d.slots.has_value());
  tier.RunPending();
  ASSERT_TRUE(d.slots.has_value());
  EXPECT_EQ(Statuses(*d.slots), (std::vector{SlotStatus::kOk, SlotStatus::kOk}));
  EXPECT_EQ(service_.l1().stats().pinned_objects, 2u);
  ASSERT_TRUE(service_.CommitRetrieve(kReader, keys, nullptr).ok());
  // Only the reader's pins existed: the tier's io pins were released, so both are evictable.
  EXPECT_EQ(service_.l1().stats().pinned_objects, 0u);
  ExpectClean();
}

TEST_F(KvServiceTest, AFailedLoadReportsMissingAndLeavesNothingBehind) {
  FakeTier& tier = AddFake();
  tier.fail_loads = true;
  Put({"a"});
  tier.held = {{"b", kObject}};
  RecordingDeferral d;
  const std::string_view keys[] = {"a", "b"};
  std::vector<SlotResult> slots;
  EXPECT_FALSE(service_.PrepareRetrieve(kReader, keys, kT0, slots, d));
  tier.RunPending();
  ASSERT_TRUE(d.slots.has_value());
  EXPECT_EQ(Statuses(*d.slots), (std::vector{SlotStatus::kOk, SlotStatus::kMissing}));
  EXPECT_FALSE(service_.l1().Contains("b"));
  ASSERT_TRUE(service_.CommitRetrieve(kReader, std::span(keys).first(1), nullptr).ok());
  EXPECT_EQ(service_.l1().stats().pinned_objects, 0u);
  ExpectClean();
}

TEST_F(KvServiceTest, ALoadThatCompletesBeforeTheCallReturnsIsAnsweredThroughTheDeferral) {
  FakeTier& tier = AddFake();
  tier.async = false;
  tier.held = {{"b", kObject}};
  RecordingDeferral d;
  const std::string_view keys[] = {"b"};
  std::vector<SlotResult> slots;
  EXPECT_FALSE(service_.PrepareRetrieve(kReader, keys, kT0, slots, d));
  ASSERT_TRUE(d.slots.has_value());  // answered already: the handler writes it as an ordinary reply
  EXPECT_EQ(Statuses(*d.slots), std::vector{SlotStatus::kOk});
  ASSERT_TRUE(service_.CommitRetrieve(kReader, keys, nullptr).ok());
  ExpectClean();
}

TEST_F(KvServiceTest, ARemoveDuringALoadIsBusyAndTheLoadStillArrives) {
  FakeTier& tier = AddFake();
  tier.held = {{"b", kObject}};
  RecordingDeferral d;
  const std::string_view keys[] = {"b"};
  std::vector<SlotResult> slots;
  EXPECT_FALSE(service_.PrepareRetrieve(kReader, keys, kT0, slots, d));
  std::vector<RemoveOutcome> removed;
  service_.Remove(keys, removed);  // another client, while the load runs: like an object being written
  EXPECT_EQ(removed, std::vector{RemoveOutcome::kBusy});
  EXPECT_TRUE(tier.held.contains("b"));
  tier.RunPending();
  EXPECT_EQ(Statuses(*d.slots), std::vector{SlotStatus::kOk});
  ASSERT_TRUE(service_.CommitRetrieve(kReader, keys, nullptr).ok());
  service_.Remove(keys, removed);
  EXPECT_EQ(removed, std::vector{RemoveOutcome::kRemoved});
  EXPECT_FALSE(service_.l1().Contains("b"));
  EXPECT_FALSE(tier.held.contains("b"));
  ExpectClean();
}

TEST_F(KvServiceTest, ALoadArrivingAfterAClearIsNotCommitted) {
  FakeTier& tier = AddFake();
  tier.held = {{"ns1/b", kObject}, {"ns2/b", kObject}};
  RecordingDeferral d;
  const std::string_view keys[] = {"ns1/b"};
  std::vector<SlotResult> slots;
  EXPECT_FALSE(service_.PrepareRetrieve(kReader, keys, kT0, slots, d));
  EXPECT_EQ(service_.Clear("ns1/"), 1u);  // the copy only the tier had; the loading slot is not committed
  tier.RunPending();
  EXPECT_EQ(Statuses(*d.slots), std::vector{SlotStatus::kMissing});
  EXPECT_TRUE(tier.held.contains("ns2/b"));  // another namespace is untouched
  ExpectClean();
}

TEST_F(KvServiceTest, ALoadArrivingAfterTheReaderLeftPinsNothing) {
  FakeTier& tier = AddFake();
  tier.held = {{"b", kObject}};
  RecordingDeferral d;
  const std::string_view keys[] = {"b"};
  std::vector<SlotResult> slots;
  EXPECT_FALSE(service_.PrepareRetrieve(kReader, keys, kT0, slots, d));
  service_.CloseSession(kReader, false);
  tier.RunPending();
  ASSERT_TRUE(d.slots.has_value());
  EXPECT_TRUE(d.slots->empty());
  EXPECT_TRUE(service_.l1().IsCommitted("b"));  // loaded all the same, and evictable
  EXPECT_EQ(service_.l1().stats().pinned_objects, 0u);
  ExpectClean();
}

TEST_F(KvServiceTest, RemoveDropsEveryCopyButNeverAPinnedOne) {
  FakeTier& tier = AddFake();
  Put({"both", "pinned"});
  tier.held = {{"both", kObject}, {"below", kObject}, {"pinned", kObject}};
  const std::string_view pin[] = {"pinned"};
  RecordingDeferral d;
  std::vector<SlotResult> slots;
  ASSERT_TRUE(service_.PrepareRetrieve(kReader, pin, kT0, slots, d));
  std::vector<RemoveOutcome> out;
  const std::string_view keys[] = {"both", "below", "pinned", "nowhere"};
  service_.Remove(keys, out);
  EXPECT_EQ(out, (std::vector{RemoveOutcome::kRemoved, RemoveOutcome::kRemoved, RemoveOutcome::kBusy,
                              RemoveOutcome::kMissing}));
  EXPECT_FALSE(tier.held.contains("both"));
  EXPECT_TRUE(tier.held.contains("pinned"));  // the reader may still need it
  ExpectClean();
}

TEST_F(KvServiceTest, ClearCountsAnObjectHeldByL1AndATierOnce) {
  FakeTier& tier = AddFake();
  Put({"n/a", "n/b", "m/a"});
  tier.held = {{"n/a", kObject}, {"n/c", kObject}, {"m/z", kObject}};
  EXPECT_EQ(service_.Clear("n/"), 3u);  // n/a (both), n/b (L1), n/c (tier)
  EXPECT_TRUE(service_.l1().IsCommitted("m/a"));
  EXPECT_TRUE(tier.held.contains("m/z"));
}

TEST_F(KvServiceTest, StatsAndHealthIncludeEveryTier) {
  FakeTier& tier = AddFake();
  tier.held = {{"x", kObject}};
  tier.up = false;
  std::vector<TierCounter> stats;
  service_.Stats(stats);
  std::map<std::string_view, uint64_t> by_name(stats.begin(), stats.end());
  EXPECT_EQ(by_name.at("fake_objects"), 1u);
  EXPECT_EQ(by_name.at("generation"), 7u);
  EXPECT_TRUE(by_name.contains("l2_dirty_objects"));
  const auto health = service_.TierHealths();
  ASSERT_EQ(health.size(), 1u);
  EXPECT_EQ(health[0].first, "fake");
  EXPECT_FALSE(health[0].second.up);
  EXPECT_EQ(health[0].second.reason, "unplugged");
  // A tier that is down holds nothing as far as the service is concerned.
  std::vector<SlotResult> slots;
  const std::string_view keys[] = {"x"};
  const uint64_t sizes[] = {kObject};
  ASSERT_TRUE(service_.PrepareStore(kWriter, keys, sizes, kT0, slots).ok());
  EXPECT_EQ(Statuses(slots), std::vector{SlotStatus::kOk});
}

TEST_F(KvServiceTest, DrainRunsEveryTierInOrderThenFinishes) {
  std::vector<std::string> log;
  FakeTier& first = AddFake("first");
  FakeTier& second = AddFake("second");
  first.drained_log = second.drained_log = &log;
  bool done = false;
  service_.Drain(1s, [&] { done = true; });
  EXPECT_FALSE(done);
  first.RunPending();
  EXPECT_FALSE(done);
  EXPECT_EQ(log, std::vector<std::string>{"first"});
  second.RunPending();
  EXPECT_TRUE(done);
  EXPECT_EQ(log, (std::vector<std::string>{"first", "second"}));
}

}  // namespace
}  // namespace shmkv
