// KvService: the server's answer to every operation of the control protocol, over L1 (the Store)
// and the tiers below it (docs/architecture.md). It owns the Store and the tiers; the sessions'
// RequestHandlers decode requests and call it, and nothing else reaches a tier.
//
// Policy, in one place:
//  - lookup: L1's leading run, continued by each tier in order (a tier counts keys it holds, L1
//    holds or another tier holds, since a prefix may alternate between them);
//  - prepare_store: a key that L1 lacks and a tier holds is `exists` (chunks are content-addressed,
//    so it is never written twice); the rest is reserved in L1;
//  - prepare_retrieve: when a tier holds keys L1 lacks, the tiers load them into L1 first (the
//    reply waits; other sessions are served meanwhile), then L1 pins the leading run;
//  - commit/abort/commit_retrieve: L1, then each tier is told what was committed and that L1
//    changed (write-behind);
//  - remove and clear: L1 and every tier.
//
// Keys are namespaced (the session's 16-byte namespace digest + the client's key).
//
// Thread-safety: none; the service and its tiers live on the server's event-loop thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "server/store.h"
#include "server/tier.h"
#include "shmkv/status.h"
#include "shmkv/types.h"

namespace shmkv {

// What a registration reports about the server.
struct ServiceIdentity {
  std::string shm_name;     // the segment, exactly as created
  uint64_t pool_size = 0;   // its bytes
  uint64_t generation = 0;  // random per start, never 0
  std::string shm_path;     // the segment's file (Linux), reported at registration; empty: none
};

// How an operation whose answer waits for a tier is answered later. The handler of the request
// implements it; the service calls one Defer* at most once per request, and the function it
// returns exactly once, on the event loop.
class Deferral {
 public:
  using LookupDone = std::function<void(uint64_t count)>;
  // Empty slots when the session closed before the loads settled (nothing was pinned).
  using RetrieveDone = std::function<void(std::span<const SlotResult> slots)>;
  virtual LookupDone DeferLookup() = 0;
  virtual RetrieveDone DeferRetrieve() = 0;

 protected:
  ~Deferral() = default;
};

class KvService {
 public:
  KvService(Store store, ServiceIdentity identity);
  ~KvService();
  KvService(const KvService&) = delete;
  KvService& operator=(const KvService&) = delete;

  // Adds the next tier below those added before (L2, then L3). Before serving starts.
  void AddTier(std::unique_ptr<Tier> tier);

  // L1, for the tiers (built before they are added) and for tests.
  Store& l1() { return store_; }
  const ServiceIdentity& identity() const { return identity_; }

  // ---- sessions ----
  void OpenSession(SessionId session);
  // Frees the session's reservations and pins; true when slots stay quarantined until its
  // process exits (then call ReleaseOrphans). See Store::CloseSession.
  bool CloseSession(SessionId session, bool writer_may_still_run);
  void ReleaseOrphans(SessionId session);
  // The TTL backstop; returns how many leases expired.
  size_t ExpireLeases(Clock::time_point now);

  // ---- operations (docs/protocol.md) ----
  // Every counter of L1 and the tiers, by name.
  void Stats(std::vector<TierCounter>& out) const;
  // Each tier's health, in tier order.
  std::vector<std::pair<std::string_view, TierHealth>> TierHealths() const;
  uint64_t Clear(std::string_view namespace_prefix);
  Status PrepareStore(SessionId session, std::span<const std::string_view> keys, std::span<const uint64_t> sizes,
                      Clock::time_point now, std::vector<SlotResult>& out);
  // `expired` receives the indices of keys whose reservation had expired (kExpired).
  Status CommitStore(SessionId session, std::span<const std::string_view> keys, Clock::time_point now,
                     std::vector<uint32_t>* expired);
  uint64_t AbortStore(SessionId session, std::span<const std::string_view> keys);
  // The leading run held anywhere; nullopt when a tier answers later (through `deferral`).
  std::optional<uint64_t> Lookup(SessionId session, std::span<const std::string_view> keys, bool pin,
                                 Clock::time_point now, Deferral& deferral);
  // Pins the leading run in L1 into `out`; false when tiers must load first (answered later
  // through `deferral`).
  bool PrepareRetrieve(SessionId session, std::span<const std::string_view> keys, Clock::time_point now,
                       std::vector<SlotResult>& out, Deferral& deferral);
  Status CommitRetrieve(SessionId session, std::span<const std::string_view> keys, std::vector<uint32_t>* expired);
  void Remove(std::span<const std::string_view> keys, std::vector<RemoveOutcome>& out);

  // A frame the server refused (too large, buffers full) before any operation ran: counted.
  void CountRejectedFrame() { rejected_frames_++; }

  // Shutdown: lets each tier finish what it promised (within `limit` each), then calls `done`.
  void Drain(std::chrono::milliseconds limit, std::function<void()> done);

 private:
  struct PendingLookup;
  struct PendingRetrieve;
  // Runs the tiers of a lookup from p->tier on; false when one of them answers later.
  bool StepLookup(const std::shared_ptr<PendingLookup>& p);
  void StepRetrieve(const std::shared_ptr<PendingRetrieve>& p);
  void AfterL1Change();
  // For tier `self`: committed in L1, or held by another tier.
  Tier::Covered CoveredFor(size_t self) const;
  // Keys of `run` (counted by tier `counted_by` as covered) that another tier holds are that
  // tier's hits: per-tier hit counters add up to the lookups' tier hits without double counting.
  void AttributeHits(size_t counted_by, std::span<const std::string_view> run);
  void DrainFrom(size_t tier, std::chrono::milliseconds limit, std::function<void()> done);

  // Declared before the tiers, which hold a reference to it: destroyed after them.
  Store store_;
  ServiceIdentity identity_;
  std::vector<std::unique_ptr<Tier>> tiers_;
  std::unordered_set<SessionId> open_sessions_;  // a deferred retrieve pins only for a live session
  uint64_t lookup_hit_keys_ = 0;                 // keys of lookups' leading runs, every tier
  Clock::time_point started_ = Clock::now();     // for uptime_seconds
  uint64_t rejected_frames_ = 0;
  uint64_t leases_reclaimed_on_disconnect_ = 0;  // reservations and pins a closing session held
};

}  // namespace shmkv
