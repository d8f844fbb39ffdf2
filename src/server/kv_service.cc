#include "server/kv_service.h"

#include <algorithm>

namespace shmkv {

// A lookup that went past L1's run. The keys are views into the request while the first call
// runs; they are copied only when a tier answers later.
struct KvService::PendingLookup {
  std::span<const std::string_view> keys;
  std::vector<std::string> owned;
  std::vector<std::string_view> owned_views;
  uint64_t count = 0;
  size_t tier = 0;        // the next tier to ask
  bool answered = false;  // the current tier has answered
  bool in_call = false;   // inside the first, synchronous call
  Deferral::LookupDone done;
};

struct KvService::PendingRetrieve {
  SessionId session = 0;
  std::vector<std::string> keys;
  size_t tier = 0;
  std::vector<std::string> io_pinned;
  Deferral::RetrieveDone done;
};

KvService::KvService(Store store, ServiceIdentity identity)
    : store_(std::move(store)), identity_(std::move(identity)) {}

KvService::~KvService() {
  tiers_.clear();  // before the Store they reference
}

void KvService::AddTier(std::unique_ptr<Tier> tier) {
  tiers_.push_back(std::move(tier));
}

void KvService::OpenSession(SessionId session) {
  store_.OpenSession(session);
  open_sessions_.insert(session);
}

bool KvService::CloseSession(SessionId session, bool writer_may_still_run) {
  open_sessions_.erase(session);
  const StoreStats before = store_.stats();
  const bool quarantined = store_.CloseSession(session, writer_may_still_run);
  const StoreStats after = store_.stats();
  // Objects no longer reserved or pinned: what the disconnect gave back (O(1): counters).
  leases_reclaimed_on_disconnect_ +=
      (before.reserved_objects - std::min(before.reserved_objects, after.reserved_objects)) +
      (before.pinned_objects - std::min(before.pinned_objects, after.pinned_objects));
  return quarantined;
}

void KvService::ReleaseOrphans(SessionId session) {
  store_.ReleaseOrphans(session);
}

size_t KvService::ExpireLeases(Clock::time_point now) {
  return store_.ExpireLeases(now);
}

void KvService::Stats(std::vector<TierCounter>& out) const {
  const StoreStats s = store_.stats();
  out.insert(
      out.end(),
      {
          {"objects", s.objects},
          {"used_bytes", s.used_bytes},
          {"pool_size", s.pool_size},
          {"reserved_objects", s.reserved_objects},
          {"pinned_objects", s.pinned_objects},
          {"sessions", s.sessions},
          {"evictions", s.evictions},
          {"evicted_bytes", s.evicted_bytes},
          {"stores", s.stores},
          {"lookups", s.lookups},
          {"lookup_hits", s.lookup_hits},
          {"retrieves", s.retrieves},
          {"expired_leases", s.expired_leases},
          {"quarantined_slots", s.quarantined_slots},
          {"quarantined_bytes", s.quarantined_bytes},
          {"generation", identity_.generation},
          {"lookup_keys", s.lookup_keys},
          {"lookup_hit_keys", lookup_hit_keys_},
          {"l1_misses", s.lookup_keys - std::min(s.lookup_keys, s.lookup_hits)},
          {"stored_bytes", s.stored_bytes},
          {"retrieved_bytes", s.retrieved_bytes},
          {"rejected_frames", rejected_frames_},
          {"leases_reclaimed_on_disconnect", leases_reclaimed_on_disconnect_},
          {"uptime_seconds",
           static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - started_).count())},
      });
  for (const auto& tier : tiers_) tier->AppendStats(out);
  if (!tiers_.empty()) {
    // L1's side of the write-behind: what no lower tier has a copy of yet.
    out.insert(out.end(), {{"l2_dirty_objects", s.dirty_objects},
                           {"l2_dirty_bytes", s.dirty_bytes},
                           {"l2_evicted_dirty", s.evicted_dirty}});
  }
}

std::vector<std::pair<std::string_view, TierHealth>> KvService::TierHealths() const {
  std::vector<std::pair<std::string_view, TierHealth>> out;
  for (const auto& tier : tiers_) out.emplace_back(tier->name(), tier->Health());
  return out;
}

uint64_t KvService::Clear(std::string_view namespace_prefix) {
  // The tiers first: each counts only what L1 does not hold, so an object in both counts once.
  uint64_t below = 0;
  for (const auto& tier : tiers_) below += tier->Clear(namespace_prefix);
  return store_.Clear(namespace_prefix) + below;
}

Status KvService::PrepareStore(SessionId session, std::span<const std::string_view> keys,
                               std::span<const uint64_t> sizes, Clock::time_point now, std::vector<SlotResult>& out) {
  // A key that a tier holds and L1 lacks is not written again: chunks are content-addressed.
  auto held_below = [&](std::string_view key) {
    return std::any_of(tiers_.begin(), tiers_.end(), [&](const auto& t) { return t->Holds(key); }) &&
           !store_.Contains(key);
  };
  const bool any_below =
      keys.size() == sizes.size() && !tiers_.empty() && std::any_of(keys.begin(), keys.end(), held_below);
  if (!any_below) {
    auto r = store_.PrepareStore(session, keys, sizes, now);
    if (!r.ok()) return r.status();
    out = std::move(r).value();
    AfterL1Change();  // a reservation may have evicted
    return Status::Ok();
  }
  std::vector<bool> below(keys.size());
  std::vector<std::string_view> rest_keys;
  std::vector<uint64_t> rest_sizes;
  for (size_t i = 0; i < keys.size(); ++i) {
    below[i] = held_below(keys[i]);
    if (below[i]) continue;
    rest_keys.push_back(keys[i]);
    rest_sizes.push_back(sizes[i]);
  }
  auto rest = store_.PrepareStore(session, rest_keys, rest_sizes, now);
  if (!rest.ok()) return rest.status();
  out.assign(keys.size(), SlotResult{});
  for (size_t i = 0, j = 0; i < keys.size(); ++i) {
    out[i] = below[i] ? SlotResult{SlotStatus::kExists, 0, 0} : (*rest)[j++];
  }
  AfterL1Change();
  return Status::Ok();
}

Status KvService::CommitStore(SessionId session, std::span<const std::string_view> keys, Clock::time_point now,
                              std::vector<uint32_t>* expired) {
  Status s = store_.CommitStore(session, keys, now, expired);
  if (s.ok()) {  // all or nothing
    for (const auto& tier : tiers_) tier->Committed(keys);
  }
  AfterL1Change();
  return s;
}

void KvService::AttributeHits(size_t counted_by, std::span<const std::string_view> run) {
  for (std::string_view key : run) {
    if (store_.IsCommitted(key) || tiers_[counted_by]->Holds(key)) continue;  // L1's, or the tier's own
    for (size_t t = 0; t < tiers_.size(); ++t) {
      if (t != counted_by && tiers_[t]->Holds(key)) {
        tiers_[t]->CountedHit(key);
        break;
      }
    }
  }
}

Tier::Covered KvService::CoveredFor(size_t self) const {
  return [this, self](std::string_view key) {
    if (store_.IsCommitted(key)) return true;
    for (size_t t = 0; t < tiers_.size(); ++t) {
      if (t != self && tiers_[t]->Holds(key)) return true;
    }
    return false;
  };
}

uint64_t KvService::AbortStore(SessionId session, std::span<const std::string_view> keys) {
  return store_.AbortStore(session, keys);
}

std::optional<uint64_t> KvService::Lookup(SessionId session, std::span<const std::string_view> keys, bool pin,
                                          Clock::time_point now, Deferral& deferral) {
  const size_t in_l1 = store_.Lookup(session, keys, pin, now);
  if (in_l1 == keys.size() || tiers_.empty()) {
    lookup_hit_keys_ += in_l1;
    return in_l1;
  }
  auto p = std::make_shared<PendingLookup>();
  p->keys = keys;
  p->count = in_l1;
  if (StepLookup(p)) {
    lookup_hit_keys_ += p->count;
    return p->count;
  }
  // A tier answers later: keep the keys and the request's way to answer.
  p->owned.assign(keys.begin(), keys.end());
  p->owned_views.assign(p->owned.begin(), p->owned.end());
  p->keys = p->owned_views;
  p->done = [this, done = deferral.DeferLookup()](uint64_t count) {
    lookup_hit_keys_ += count;
    done(count);
  };
  return std::nullopt;
}

bool KvService::StepLookup(const std::shared_ptr<PendingLookup>& p) {
  while (p->tier < tiers_.size() && p->count < p->keys.size()) {
    Tier& tier = *tiers_[p->tier++];
    p->answered = false;
    p->in_call = true;
    const size_t self = p->tier - 1;
    tier.LookupLeading(p->keys.subspan(p->count), CoveredFor(self), [this, p, self](size_t n) {
      AttributeHits(self, p->keys.subspan(p->count, n));
      p->count += n;
      p->answered = true;
      if (p->in_call) return;  // answered at once: the loop goes on
      // Answered later: go on with the next tiers, then answer the request.
      if (StepLookup(p)) p->done(p->count);
    });
    p->in_call = false;
    if (!p->answered) return false;
  }
  return true;
}

bool KvService::PrepareRetrieve(SessionId session, std::span<const std::string_view> keys, Clock::time_point now,
                                std::vector<SlotResult>& out, Deferral& deferral) {
  auto needs_load = [&](std::string_view key) {
    return !store_.IsCommitted(key) &&
           std::any_of(tiers_.begin(), tiers_.end(), [&](const auto& t) { return t->Holds(key); });
  };
  if (tiers_.empty() || std::none_of(keys.begin(), keys.end(), needs_load)) {
    out = store_.PrepareRetrieve(session, keys, now);
    return true;
  }
  auto p = std::make_shared<PendingRetrieve>();
  p->session = session;
  p->keys.assign(keys.begin(), keys.end());
  p->done = deferral.DeferRetrieve();
  StepRetrieve(p);
  return false;
}

void KvService::StepRetrieve(const std::shared_ptr<PendingRetrieve>& p) {
  while (p->tier < tiers_.size()) {
    Tier& tier = *tiers_[p->tier++];
    const bool holds_some = std::any_of(p->keys.begin(), p->keys.end(),
                                        [&](const std::string& k) { return !store_.IsCommitted(k) && tier.Holds(k); });
    if (!holds_some) continue;
    tier.Load(p->keys, CoveredFor(p->tier - 1), [this, p](std::vector<std::string> pinned) {
      std::move(pinned.begin(), pinned.end(), std::back_inserter(p->io_pinned));
      StepRetrieve(p);
    });
    return;
  }
  // Every load has settled: pin what L1 holds now for the reader, if it is still there.
  std::vector<SlotResult> slots;
  if (open_sessions_.contains(p->session)) {
    std::vector<std::string_view> views(p->keys.begin(), p->keys.end());
    slots = store_.PrepareRetrieve(p->session, views, Clock::now());
  }
  for (const std::string& k : p->io_pinned) store_.IoUnpin(k);
  p->done(slots);
}

Status KvService::CommitRetrieve(SessionId session, std::span<const std::string_view> keys,
                                 std::vector<uint32_t>* expired) {
  return store_.CommitRetrieve(session, keys, expired);
}

void KvService::Remove(std::span<const std::string_view> keys, std::vector<RemoveOutcome>& out) {
  out = store_.Remove(keys);
  for (const auto& tier : tiers_) {
    for (size_t i = 0; i < out.size(); ++i) {
      // Objects that readers hold stay everywhere: the reader may still need the lower copy.
      if (out[i] != RemoveOutcome::kBusy && tier->Remove(keys[i])) out[i] = RemoveOutcome::kRemoved;
    }
  }
}

void KvService::AfterL1Change() {
  for (const auto& tier : tiers_) tier->AfterL1Change();
}

void KvService::Drain(std::chrono::milliseconds limit, std::function<void()> done) {
  DrainFrom(0, limit, std::move(done));
}

void KvService::DrainFrom(size_t tier, std::chrono::milliseconds limit, std::function<void()> done) {
  if (tier >= tiers_.size()) return done();
  tiers_[tier]->Drain(
      limit, [this, tier, limit, done = std::move(done)]() mutable { DrainFrom(tier + 1, limit, std::move(done)); });
}

}  // namespace shmkv
