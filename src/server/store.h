// Store: all metadata of the L1 pool — the object index, the slot allocator, LRU eviction,
// sessions and their leases. Pure logic with no I/O, so every rule is unit-testable; the server
// drives it from its one event loop.
//
// Object life (DESIGN.md §3): PrepareStore reserves a slot (state `reserved`, invisible to every
// reader) -> CommitStore makes it `committed` (visible) -> readers pin it (PrepareRetrieve, or
// Lookup with pin) and unpin it (CommitRetrieve) -> when committed and unpinned it is evictable.
// A reservation belongs to the session that made it; when that session closes (disconnect,
// crash) every reservation is freed and never admitted, and every pin is released.
//
// Eviction is LRU over committed, unpinned objects and prefix-aware: a batch of keys arrives in
// prefix order and is touched tail first, so within a chain the head is the most recently used
// and the tail is evicted before it; lookups keep returning the longest possible prefix.
//
// Keys given to the Store are already namespaced (the server prepends the session's namespace).
//
// Thread-safety: none; one thread owns a Store.
#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "pool/slot_allocator.h"
#include "shmkv/status.h"

namespace shmkv {

// Slots start on 4096-byte boundaries so O_DIRECT disk I/O works straight from the pool.
inline constexpr uint64_t kSlotAlignment = 4096;

using SessionId = uint64_t;

// Lets the maps below be searched with a string_view, without building a std::string per key.
struct KeyHash {
  using is_transparent = void;
  size_t operator()(std::string_view k) const { return std::hash<std::string_view>{}(k); }
};
template <typename V>
using KeyMap = std::unordered_map<std::string, V, KeyHash, std::equal_to<>>;
using Clock = std::chrono::steady_clock;

enum class SlotOutcome : uint8_t {
  kSlot,     // a slot was handed out (store: reserved; retrieve: pinned)
  kExists,   // store: the key is already committed
  kBusy,     // store: another writer holds the key; remove: readers hold it
  kFull,     // store: no room even after evicting everything evictable
  kMissing,  // retrieve/remove: no committed object under the key
};
std::string_view SlotOutcomeName(SlotOutcome o);

struct SlotResult {
  SlotOutcome outcome = SlotOutcome::kMissing;
  uint64_t offset = 0;
  uint64_t length = 0;
};

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
  uint64_t stores = 0;  // commits
  uint64_t lookups = 0;
  uint64_t lookup_hits = 0;  // keys found by lookups
  uint64_t retrieves = 0;    // slots handed out by PrepareRetrieve
  uint64_t expired_leases = 0;
};

class Store {
 public:
  static Result<Store> Create(const StoreOptions& options);

  void OpenSession(SessionId session);
  // Frees the session's reservations (never admitted) and releases its pins.
  void CloseSession(SessionId session);

  // Per key: kSlot (reserved for this session), kExists, kBusy or kFull. Evicts to make room.
  // Sizes must be > 0 and at most the pool size (kInvalidArgument naming the key index).
  Result<std::vector<SlotResult>> PrepareStore(SessionId session, std::span<const std::string_view> keys,
                                               std::span<const uint64_t> sizes, Clock::time_point now);
  // Makes the session's reservations of `keys` visible, all or none: a key this session has
  // not reserved (unknown, aborted, expired, committed already) fails the whole call.
  Status CommitStore(SessionId session, std::span<const std::string_view> keys, Clock::time_point now);
  // Frees the session's reservations among `keys`; returns how many were freed.
  size_t AbortStore(SessionId session, std::span<const std::string_view> keys);

  // Number of leading keys committed. With `pin`, those objects are pinned for this session
  // until PrepareRetrieve takes them over, or the pin TTL passes.
  size_t Lookup(SessionId session, std::span<const std::string_view> keys, bool pin, Clock::time_point now);
  // Per key: kSlot (pinned for this session) or kMissing.
  std::vector<SlotResult> PrepareRetrieve(SessionId session, std::span<const std::string_view> keys,
                                          Clock::time_point now);
  // Releases one retrieve pin per key; a key this session has not pinned fails the whole call.
  Status CommitRetrieve(SessionId session, std::span<const std::string_view> keys);

  // Per key: kSlot (removed), kMissing, or kBusy (pinned or being written; left in place).
  std::vector<SlotOutcome> Remove(std::span<const std::string_view> keys);
  // Removes every committed, unpinned object whose key starts with `prefix`; returns the count.
  size_t Clear(std::string_view prefix);

  // Drops reservations and pins older than their TTL; returns how many leases expired.
  size_t ExpireLeases(Clock::time_point now);

  StoreStats stats() const;
  // Cross-checks index, LRU, sessions and allocator. O(objects); for tests.
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
    std::list<const std::string*>::iterator lru{};  // valid when committed and unpinned
    bool in_lru = false;
  };
  struct PinLease {
    uint32_t retrieve_pins = 0;  // from PrepareRetrieve
    bool lookup_pin = false;     // from Lookup(pin=true), until PrepareRetrieve takes it over
    Clock::time_point since{};
  };
  struct Session {
    // Keys of this session's reserved objects, as pointers to their index_ keys (stable: the
    // index is node-based), so a key is stored once and committing hashes a pointer, not the key.
    // An entry leaves this set before its object leaves the index. Reserved-at: Object::reserved_at.
    std::unordered_set<const std::string*> reservations;
    KeyMap<PinLease> pins;
  };
  using Index = KeyMap<Object>;

  explicit Store(const StoreOptions& options, SlotAllocator allocator);

  void Touch(Index::iterator it);  // move to the MRU end
  void Pin(Index::iterator it);
  void Unpin(Index::iterator it);
  void Erase(Index::iterator it);  // frees the slot
  bool EvictOne();
  Session* FindSession(SessionId id);
  void ReleasePin(Session& s, std::string_view key, bool all);

  StoreOptions options_;
  SlotAllocator allocator_;
  Index index_;
  std::list<const std::string*> lru_;  // front = least recently used
  std::unordered_map<SessionId, Session> sessions_;
  StoreStats counters_;
};

}  // namespace shmkv
