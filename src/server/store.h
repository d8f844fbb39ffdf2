// Store: all metadata of the L1 pool — the object index, the slot allocator, LRU eviction,
// sessions and their leases. Pure logic with no I/O, so every rule is unit-testable; the server
// drives it from its one event loop.
//
// Object life (docs/design.md §3): PrepareStore reserves a slot (state `reserved`, invisible to every
// reader) -> CommitStore makes it `committed` (visible) -> readers pin it (PrepareRetrieve, or
// Lookup with pin) and unpin it (CommitRetrieve) -> when committed and unpinned it is evictable.
// A reservation belongs to the session that made it; when that session closes (disconnect,
// crash) every reservation is freed and never admitted, and every pin is released.
//
// Eviction (server/eviction_policy.h, docs/eviction.md) chooses among committed objects that no
// session pins and no lower tier is copying; by default a window TinyLFU whose window share adapts
// to the traffic, or plain LRU. It is prefix-aware: a batch of keys arrives in prefix order and is
// touched tail first, so within a chain the head is the most recently used and the tail is
// evicted before it; lookups keep returning the longest possible prefix.
//
// With a lower tier (track_dirty), committed objects are dirty until the tier has copied them;
// a tier's io pins keep a slot alive during its I/O without moving the object in the LRU
// (eviction skips it). See docs/l2-tier.md.
//
// Expired leases (the TTL backstop) never put a slot that a stalled client may still write into
// another writer's hands: an expired reservation leaves the index (its key is free again) but its
// slot stays allocated in the session's quarantine until the client acknowledges (commit_store or
// abort_store naming the key, which answer kExpired / count nothing) or the session closes; a
// session closed while its process may still run hands the quarantine over as orphans, which the
// server frees once the process is gone (ReleaseOrphans). An expired retrieve pin is remembered,
// so the reader's commit_retrieve reports kExpired for that key: the bytes it copied out may have
// been overwritten and must not be used.
//
// Keys given to the Store are already namespaced (the server prepends the session's namespace).
//
// Thread-safety: none; one thread owns a Store.
#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "pool/slot_allocator.h"
#include "server/eviction_policy.h"
#include "shmkv/status.h"
#include "shmkv/types.h"

namespace shmkv {

// Slots start on 4096-byte boundaries so O_DIRECT disk I/O works straight from the pool.
inline constexpr uint64_t kSlotAlignment = 4096;

using SessionId = uint64_t;
// The owner of slots being filled from a lower tier (no client session has id 0).
inline constexpr SessionId kLoaderSession = 0;

// Lets the maps below be searched with a string_view, without building a std::string per key.
struct KeyHash {
  using is_transparent = void;
  size_t operator()(std::string_view k) const { return std::hash<std::string_view>{}(k); }
};
template <typename V>
using KeyMap = std::unordered_map<std::string, V, KeyHash, std::equal_to<>>;
using Clock = std::chrono::steady_clock;

struct StoreOptions {
  // Pool bytes the allocator manages (the segment size).
  uint64_t pool_size = 0;
  // Slot alignment in bytes (4096 keeps O_DIRECT possible straight from the pool).
  uint64_t alignment = kSlotAlignment;
  // A reservation not committed or aborted within this time is freed (backstop for clients
  // that hang while connected; a disconnect frees at once).
  std::chrono::milliseconds reserve_ttl{std::chrono::seconds(60)};
  // A pin (from PrepareRetrieve or Lookup with pin) not released within this time is dropped.
  std::chrono::milliseconds pin_ttl{std::chrono::seconds(60)};
  // With a lower tier (L2, docs/l2-tier.md): committed objects start dirty (not yet copied down)
  // and are queued for write-behind, oldest commit first.
  bool track_dirty = false;
  // Which committed object is evicted when room is needed (docs/eviction.md).
  EvictionOptions eviction;
};

struct StoreStats {
  uint64_t objects = 0;  // committed
  uint64_t reserved_objects = 0;
  uint64_t pinned_objects = 0;
  uint64_t used_bytes = 0;  // in slots, committed and reserved
  uint64_t pool_size = 0;
  uint64_t sessions = 0;
  uint64_t evictions = 0;
  uint64_t evicted_bytes = 0;
  uint64_t stores = 0;        // commits
  uint64_t stored_bytes = 0;  // bytes of the committed objects
  uint64_t lookups = 0;
  uint64_t lookup_keys = 0;      // keys asked for by lookups
  uint64_t lookup_hits = 0;      // keys found by lookups (the leading run in L1)
  uint64_t retrieves = 0;        // slots handed out by PrepareRetrieve
  uint64_t retrieved_bytes = 0;  // their bytes
  uint64_t expired_leases = 0;
  uint64_t dirty_objects = 0;  // committed, not yet on a lower tier (track_dirty only)
  uint64_t dirty_bytes = 0;
  uint64_t evicted_dirty = 0;      // evicted before a lower tier had a copy: dropped
  uint64_t quarantined_slots = 0;  // slots of expired reservations not yet safe to reuse
  uint64_t quarantined_bytes = 0;
  EvictionStats eviction;  // the policy's state: window share, switches, admission contests
};

// A committed object handed to a lower tier for I/O: its slot stays allocated (io-pinned, so
// neither eviction nor remove can free it) until the tier calls FinishWrite / IoUnpin.
struct IoSlot {
  std::string key;
  uint64_t offset = 0;
  uint64_t length = 0;
};

class Store {
 public:
  static Result<Store> Create(const StoreOptions& options);

  void OpenSession(SessionId session);
  // Frees the session's reservations (never admitted) and releases its pins. The quarantined
  // slots of its expired reservations are freed too, unless `writer_may_still_run` (its process
  // may still be alive and writing): then they stay allocated as orphans of `session` until
  // ReleaseOrphans(session). Returns whether orphans were kept.
  bool CloseSession(SessionId session, bool writer_may_still_run = false);
  // Frees the orphaned quarantine of a closed session (its process is gone).
  void ReleaseOrphans(SessionId session);

  // Per key: kSlot (reserved for this session), kExists, kBusy or kFull. Evicts to make room.
  // Sizes must be > 0 and at most the pool size (kInvalidArgument naming the key index).
  Result<std::vector<SlotResult>> PrepareStore(SessionId session, std::span<const std::string_view> keys,
                                               std::span<const uint64_t> sizes, Clock::time_point now);
  // Makes the session's reservations of `keys` visible, all or none: a key this session has
  // not reserved (unknown, aborted, committed already) fails the whole call (kInvalidArgument).
  // Keys whose reservation expired fail it with kExpired, their indices in `expired`; that
  // acknowledges them (their quarantined slots are freed) and commits nothing.
  Status CommitStore(SessionId session, std::span<const std::string_view> keys, Clock::time_point now,
                     std::vector<uint32_t>* expired = nullptr);
  // Frees the session's reservations among `keys`; returns how many were freed. Also
  // acknowledges expired reservations of these keys (frees their quarantined slots).
  size_t AbortStore(SessionId session, std::span<const std::string_view> keys);

  // Number of leading keys committed. With `pin`, those objects are pinned for this session
  // until PrepareRetrieve takes them over, or the pin TTL passes.
  size_t Lookup(SessionId session, std::span<const std::string_view> keys, bool pin, Clock::time_point now);
  // Per key: kSlot (pinned for this session) or kMissing.
  std::vector<SlotResult> PrepareRetrieve(SessionId session, std::span<const std::string_view> keys,
                                          Clock::time_point now);
  // Releases one retrieve pin per key; a key this session has not pinned fails the whole call
  // (kInvalidArgument, nothing released). Keys whose pin expired are reported with kExpired and
  // their indices in `expired`; the other keys' pins are released all the same.
  Status CommitRetrieve(SessionId session, std::span<const std::string_view> keys,
                        std::vector<uint32_t>* expired = nullptr);

  // Per key: kSlot (removed), kMissing, or kBusy (pinned or being written; left in place).
  std::vector<RemoveOutcome> Remove(std::span<const std::string_view> keys);
  // Removes every committed, unpinned object whose key starts with `prefix`; returns the count.
  size_t Clear(std::string_view prefix);

  // Expires reservations (quarantined) and pins (remembered) older than their TTL; returns how
  // many leases expired.
  size_t ExpireLeases(Clock::time_point now);

  // ---- Lower-tier hooks (used by DiskTier; docs/l2-tier.md). ----
  bool IsCommitted(std::string_view key) const;
  uint64_t used_bytes() const { return allocator_.used_bytes(); }
  uint64_t dirty_bytes() const { return dirty_bytes_; }
  uint64_t pool_size() const { return allocator_.pool_size(); }
  bool Contains(std::string_view key) const;  // in any state
  // Up to `max_objects` of the oldest dirty objects, io-pinned and marked as being written.
  std::vector<IoSlot> TakeDirty(size_t max_objects);
  // Ends a write taken by TakeDirty: unpins; `requeue` puts the object back at the tail of the
  // dirty queue (the write failed), otherwise it is clean (dropping it later loses nothing).
  void FinishWrite(std::string_view key, bool requeue);
  // Reserves a slot for bytes coming up from a lower tier, evicting as needed; the object is
  // invisible (reserved, owned by no session) until FinishLoad. kFull when nothing fits.
  Result<uint64_t> ReserveForLoad(std::string_view key, uint64_t length);
  // ok: the object becomes committed and clean; otherwise its slot is freed, nothing visible.
  void FinishLoad(std::string_view key, bool ok);
  // An extra pin owned by no session (keeps a loaded object until its retrieve has pinned it).
  bool IoPin(std::string_view key);
  // IoPin that also says where the object lies (for a tier that reads the pool itself); nullopt
  // when `key` is not committed.
  std::optional<IoSlot> IoPinSlot(std::string_view key);
  void IoUnpin(std::string_view key);

  // O(1) in the number of objects, sessions and leases: every count is kept as it changes
  // (CheckInvariants verifies each against a full walk), so stats and metrics can be collected
  // as often as wanted.
  StoreStats stats() const;
  // Cross-checks index, eviction policy, sessions, allocator and the incremental counters of
  // stats(). O(objects); for tests.
  Status CheckInvariants() const;

 private:
  enum class State : uint8_t { kReserved, kCommitted };
  struct Object {
    uint64_t offset = 0;
    uint64_t length = 0;  // requested bytes (the slot may be larger)
    State state = State::kReserved;
    uint32_t pins = 0;
    SessionId writer = 0;  // reserved objects only
    Clock::time_point reserved_at{};
    EvictionPolicy::Handle node{};  // valid when in_policy: committed and no session pins it
    bool in_policy = false;
    EvictionPolicy::Segment segment = EvictionPolicy::Segment::kWindow;  // where it was, while pinned
    uint32_t depth = 0;    // its position in its prefix chain, as batches have shown it (eviction)
    uint32_t io_pins = 0;  // pins of a lower tier, part of `pins`
    std::list<const std::string*>::iterator dirty{};  // valid when in_dirty
    bool in_dirty = false;                            // queued for write-behind
    bool writing = false;                             // taken by TakeDirty, not yet finished
  };
  struct PinLease {
    uint32_t retrieve_pins = 0;  // from PrepareRetrieve
    bool lookup_pin = false;     // from Lookup(pin=true), until PrepareRetrieve takes it over
    Clock::time_point since{};
  };
  // Slots of one key's expired reservations (usually one), still allocated.
  using Quarantine = KeyMap<std::vector<uint64_t>>;
  struct Session {
    // Keys of this session's reserved objects, as pointers to their index_ keys (stable: the
    // index is node-based), so a key is stored once and committing hashes a pointer, not the key.
    // An entry leaves this set before its object leaves the index. Reserved-at: Object::reserved_at.
    std::unordered_set<const std::string*> reservations;
    KeyMap<PinLease> pins;
    Quarantine quarantine;          // expired reservations, until acknowledged or closed
    KeyMap<uint32_t> expired_pins;  // retrieve pins that expired, until commit_retrieve reports them
  };
  using Index = KeyMap<Object>;

  Store(const StoreOptions& options, SlotAllocator allocator, EvictionPolicy policy);

  void Touch(Index::iterator it);          // a use: the policy moves it towards the hot end
  uint64_t Weight(const Object& o) const;  // the object's bytes in the pool (its slot, rounded)
  void Pin(Index::iterator it);
  void Unpin(Index::iterator it);
  void Erase(Index::iterator it);  // frees the slot
  // Every change of an object's pins and of the index goes through these, which keep the
  // counters of stats() (pinned, reserved, committed objects) current.
  void AddPin(Object& o);
  void DropPin(Object& o);
  void Indexed(const Object& o);     // o just became a reserved object of the index
  void Committed(const Object& o);   // o went from reserved to committed
  void Unindexing(const Object& o);  // o is about to leave the index
  enum class Eviction : uint8_t { kEvicted, kNothing, kRejected };
  // Evicts one object to make room for `incoming` (a new store the policy may refuse: kRejected)
  // or for a load from a lower tier (nullopt: never refused).
  Eviction EvictOne(std::optional<std::string_view> incoming, uint32_t incoming_depth = 0);
  Session* FindSession(SessionId id);
  void ReleasePin(Session& s, std::string_view key, bool all);
  void QuarantineReservation(Session& s, Index::iterator it);  // leaves the index, keeps the slot
  void FreeQuarantined(std::span<const uint64_t> offsets);
  void AcknowledgeExpired(Session& s, std::string_view key);  // frees the key's quarantined slots

  StoreOptions options_;
  SlotAllocator allocator_;
  Index index_;
  EvictionPolicy policy_;                // committed objects no session pins
  std::list<const std::string*> dirty_;  // track_dirty: front = oldest commit not yet written
  uint64_t dirty_bytes_ = 0;
  std::unordered_map<SessionId, Session> sessions_;
  // Quarantined slots of closed sessions whose process may still run (ReleaseOrphans).
  std::unordered_map<SessionId, std::vector<uint64_t>> orphans_;
  std::unordered_map<uint64_t, uint64_t> quarantined_length_;  // offset -> object bytes, every quarantined slot
  // Event counts and quarantined_* are kept here; objects, reserved_objects and pinned_objects
  // too (Indexed/Committed/Unindexing, AddPin/DropPin). stats() adds what the allocator, the
  // policy, sessions_ and dirty_ keep in O(1).
  StoreStats counters_;
};

}  // namespace shmkv
