// Tier: a storage layer below L1 (the pool), as the KvService sees it. The L2 disk tier
// (DiskTier) is one implementation, a Redis Cluster tier would be another, and the unit tests'
// FakeTier a third. The service reaches every lower tier only through this interface; a tier in
// turn works with L1 through the Store it is given (dirty objects to write, io pins, loader
// reservations for its loads).
//
// Keys are the Store's: the 16-byte namespace digest followed by the client's key.
//
// Completion: calls that may wait (lookups that need I/O, loads) take a completion that the tier
// calls exactly once, on the event loop. It may call it before returning (an answer known without
// I/O), so a caller must not hold state that the completion changes across the call. Keys passed
// as views are valid only during the call: a tier that completes later copies what it needs.
//
// Thread-safety: none; every method runs on the server's event-loop thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shmkv {

// A counter of a tier's, as stats reports it (the name carries the tier's prefix, e.g. "l2_").
using TierCounter = std::pair<std::string_view, uint64_t>;

struct TierHealth {
  bool up = true;
  std::string reason;  // why it is down; empty while up
};

class Tier {
 public:
  using CountDone = std::function<void(size_t count)>;
  // `io_pinned`: the keys the tier io-pinned in L1 for the caller (the loaded ones, and committed
  // L1 keys of the batch it protected while making room); the caller releases each with
  // Store::IoUnpin once it has pinned them for its reader.
  using LoadDone = std::function<void(std::vector<std::string> io_pinned)>;

  virtual ~Tier() = default;

  // Short name, e.g. "l2"; used in logs and health reasons.
  virtual std::string_view name() const = 0;

  // Whether a key is committed in L1 or held by another tier (as Holds says, without I/O): a
  // prefix may alternate between the tiers. Valid only during the call it is passed to.
  using Covered = std::function<bool(std::string_view key)>;

  // lookup, after the runs of L1 and the tiers above: how many leading keys of `keys` are held
  // by this tier or `covered`. Counts the keys it holds (and nobody covers) as its hits.
  virtual void LookupLeading(std::span<const std::string_view> keys, const Covered& covered, CountDone done) = 0;

  // A key this tier holds was counted in a run that another tier's LookupLeading extended (it
  // was `covered` there): the tier counts it as its own hit, once.
  virtual void CountedHit(std::string_view key) = 0;

  // Whether a Load of `key` may succeed, known without I/O. prepare_store answers `exists` for a
  // key that L1 lacks and a tier holds; prepare_retrieve waits for loads only when some key is
  // held by a tier.
  virtual bool Holds(std::string_view key) const = 0;

  // Loads into L1 the keys of `keys` that L1 lacks and this tier holds, io-pinning those L1
  // holds; skips keys another tier holds (`covered`; that tier loads them) and stops at the first
  // key nobody holds (later keys would not extend the prefix). A failed load frees its slot, so
  // a reader never sees a partial object.
  virtual void Load(std::vector<std::string> keys, const Covered& covered, LoadDone done) = 0;

  // After a commit: the keys that became committed in L1 (for a tier that copies every commit).
  virtual void Committed(std::span<const std::string_view> keys) { (void)keys; }

  // After L1 changed (a commit, or a reservation that may have evicted): starts the background
  // writes the tier's policy asks for (write-behind, write-through). Cheap when there is nothing
  // to do.
  virtual void AfterL1Change() = 0;

  // remove: drops the tier's copy; true when it had one.
  virtual bool Remove(std::string_view key) = 0;

  // clear of a namespace (before L1 is cleared): drops every copy of the namespace and cancels
  // its I/O in flight; returns how many of them L1 does not hold (so the union is counted once).
  virtual size_t Clear(std::string_view namespace_prefix) = 0;

  // Appends the tier's counters to `out`.
  virtual void AppendStats(std::vector<TierCounter>& out) const = 0;

  virtual TierHealth Health() const = 0;

  // Shutdown: finishes what the tier promised (write-through writes) within `limit`, then calls
  // `done` (at once when there is nothing to finish).
  virtual void Drain(std::chrono::milliseconds limit, std::function<void()> done) = 0;
};

}  // namespace shmkv
