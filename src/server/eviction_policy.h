// Eviction and admission for the L1 pool (docs/eviction.md): which committed object goes when a
// new one needs room.
//
// The policy is a window TinyLFU adapted to prefix chains, whose one knob (the share of the pool
// given to the recency window) is tuned online by miniature simulations:
//
// - Segments. A new object enters the *window*, an LRU. Objects leave the window's cold end for
//   the *main* area, itself a segmented LRU: *probation* (never touched in main) and *protected*
//   (touched again in main, at most `protected_fraction` of main; its overflow falls back to
//   probation). Window, probation and protected are byte budgets over the pool.
// - Admission. When the window is at its budget and room is needed, its coldest object (the
//   candidate) competes with main's coldest (the victim, probation first): the one looked up less
//   often (a count-min sketch of recent lookups, halved periodically so it forgets) is evicted, a
//   tie keeps the incumbent. One-off prompts therefore pass through the window without flushing
//   the prefixes that are reused.
// - Prefix chains. Every lookup that reaches a chain's block also passes its parent, so a parent
//   is never counted less often than its child and never loses a contest to it; within a segment
//   the Store touches a batch tail first, so a chain's head is the more recent and its tail goes
//   first. Lookups therefore keep returning the longest prefix the pool can hold.
// - Adaptation. Which window share is best depends on the traffic and on the pool size relative
//   to the reuse distances: a small window (frequency) wins where reuse is rarer than the pool
//   turns over, a window of the whole pool (plain LRU) where most reuse fits. Shadow caches
//   (keys only, the same algorithm) run one per candidate share on a spatially sampled subset of
//   the looked-up keys, scaled down by the sampling rate; at the end of each epoch the real pool
//   switches to the share whose shadow had the most prefix hits (decayed over epochs), only when
//   it beats the current share's by `switch_margin`. It starts as plain LRU.
// - Lru mode (`EvictionMode::kLru`) is a window of the whole pool with no sketch and no shadows:
//   exactly the LRU shmkv had before (touch order, tail first).
//
// Objects under a session pin are not in the policy (the Store removes them and restores them to
// the same segment when the last pin goes); objects under a lower tier's io pin stay in place and
// are skipped when choosing a victim.
//
// Thread-safety: none; the Store's thread owns its policy.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "shmkv/status.h"

namespace shmkv {

enum class EvictionMode : uint8_t {
  kAdaptive,  // window TinyLFU with the window share tuned online (the default)
  kLru,       // plain LRU, tail-first within a batch
};

// Parses "adaptive" or "lru" (the server's --eviction-policy).
Result<EvictionMode> ParseEvictionMode(std::string_view text);
std::string_view EvictionModeName(EvictionMode mode);

struct EvictionOptions {
  EvictionMode mode = EvictionMode::kAdaptive;
  // Window shares the shadows compare, each in (0, 1]; 1 is plain LRU. The pool starts at the
  // largest.
  std::vector<double> window_fractions = {0.01, 0.1, 0.5, 1.0};
  // Share of main (pool minus window) that protected may hold.
  double protected_fraction = 0.8;
  // Largest number of objects one shadow cache holds; the sampling rate is the power of two that
  // brings the pool's object count down to it (1 for small pools: every key is simulated).
  size_t shadow_objects = 2048;
  // A better shadow must beat the current share's decayed hits by this much (stops flapping).
  double switch_margin = 0.10;
  // Weight of the previous epochs' hits in a shadow's score (per epoch).
  double score_decay = 0.5;
};

// Approximate lookup counts: a count-min sketch of 4-bit counters (4 rows), every counter halved
// after `10 × width` increments so that old popularity fades. Width follows the pool's object
// count (EnsureCapacity), so estimates stay accurate for the keys that matter.
class FrequencySketch {
 public:
  void EnsureCapacity(size_t objects);
  void Increment(uint64_t hash);
  uint32_t Estimate(uint64_t hash) const;
  size_t width() const { return table_.size() / 4; }

 private:
  size_t Index(uint64_t hash, int row) const;
  void Halve();

  size_t capacity_ = 0;         // objects the sketch is sized for
  std::vector<uint8_t> table_;  // 4 rows interleaved: [4 * slot + row]
  uint64_t increments_ = 0;
  uint64_t sample_ = 0;
};

// The segmented core (window LRU + probation + protected, admission contest), used by the pool
// and by each shadow. Weights are bytes for the pool and 1 for a shadow.
class SegmentedTinyLfu {
 public:
  enum Segment : uint8_t { kWindow = 0, kProbation = 1, kProtected = 2 };
  struct Node {
    uint64_t hash = 0;
    uint64_t weight = 0;
    const std::string* key = nullptr;  // the Store's index key (null in shadows)
    uint32_t depth = 0;                // position in its prefix chain (0: the chain's first block)
    Segment segment = kWindow;
    bool io_pinned = false;  // a lower tier's I/O holds the slot: never a victim
  };
  using List = std::list<Node>;
  using Handle = List::iterator;

  SegmentedTinyLfu(uint64_t capacity, double window_fraction, double protected_fraction);

  void SetWindowFraction(double fraction);
  double window_fraction() const { return window_fraction_; }
  uint64_t capacity() const { return capacity_; }

  // New object: the window's hot end; the window's overflow moves on to probation while main
  // has room for it.
  Handle Insert(Node node);
  // An object back from a session pin: the hot end of the segment it left.
  Handle Restore(Node node, Segment segment);
  void Touch(Handle h);
  Segment Remove(Handle h);

  enum class Pick : uint8_t {
    kVictim,          // *out is the object to evict
    kNothing,         // nothing is evictable (empty, or every object io-pinned)
    kRejectIncoming,  // the object asking for room is not admitted (see PickVictim)
  };
  // Chooses the object to evict, deciding the admission contest on the way (a winning window
  // candidate moves to probation). `incoming`: the hash of the object the room is for, if it
  // may be refused: when the window has no candidate left it competes with main's victim
  // itself. `sketch` null: no contests (recency only).
  struct Incoming {
    uint64_t hash = 0;
    uint32_t depth = 0;
  };
  Pick PickVictim(const FrequencySketch* sketch, std::optional<Incoming> incoming, Handle* out);

  size_t size() const { return lists_[0].size() + lists_[1].size() + lists_[2].size(); }
  uint64_t bytes(Segment s) const { return bytes_[s]; }
  uint64_t total_bytes() const { return bytes_[0] + bytes_[1] + bytes_[2]; }
  const List& list(Segment s) const { return lists_[s]; }
  uint64_t contests_won() const { return contests_won_; }
  uint64_t contests_lost() const { return contests_lost_; }
  Status CheckInvariants() const;

 private:
  void MoveTo(Handle h, Segment to);  // to the hot end of `to`
  void BalanceProtected();
  void MigrateWindow();
  Handle FirstEvictable(Segment s);

  uint64_t capacity_;
  double window_fraction_ = 1.0;
  double protected_fraction_;
  uint64_t window_target_ = 0;
  uint64_t protected_target_ = 0;
  List lists_[3];  // front = cold end
  uint64_t bytes_[3] = {0, 0, 0};
  uint64_t contests_won_ = 0;
  uint64_t contests_lost_ = 0;
};

// One miniature simulation: a keys-only SegmentedTinyLfu of `capacity` objects with its own
// sketch, fed the sampled keys of each lookup as one request (hits, then the misses stored).
class ShadowCache {
 public:
  ShadowCache(size_t capacity, double window_fraction, double protected_fraction);
  // `depths`: each key's position in its chain. Returns the number of leading sampled keys that
  // were present.
  size_t Request(std::span<const uint64_t> hashes, std::span<const uint32_t> depths);
  double window_fraction() const { return core_.window_fraction(); }

 private:
  SegmentedTinyLfu core_;
  FrequencySketch sketch_;
  std::unordered_map<uint64_t, SegmentedTinyLfu::Handle> map_;
  std::vector<size_t> admitted_;  // scratch: indices into the request
};

struct EvictionStats {
  double window_fraction = 1.0;      // the pool's current window share
  uint64_t window_switches = 0;      // times the adaptation changed it
  uint64_t admissions_rejected = 0;  // contests the candidate lost (evicted from the window)
  uint64_t admissions_won = 0;       // contests the candidate won (main's victim evicted)
  uint64_t shadow_sample_rate = 0;   // 1 in N keys simulated; 0 before the first epoch
};

class EvictionPolicy {
 public:
  using Handle = SegmentedTinyLfu::Handle;
  using Segment = SegmentedTinyLfu::Segment;

  // Validates the options (kInvalidArgument naming the field).
  static Result<EvictionPolicy> Create(uint64_t capacity_bytes, const EvictionOptions& options);

  // A committed object joins (the window's hot end). `depth`: its position in its prefix chain,
  // as far as the Store knows it (the position in the batch that stored it, raised by lookups).
  Handle Insert(const std::string* key, uint64_t bytes, uint32_t depth);
  // An object whose last session pin went: back to the hot end of `segment`.
  Handle Restore(const std::string* key, uint64_t bytes, uint32_t depth, Segment segment);
  void SetDepth(Handle h, uint32_t depth) { h->depth = depth; }
  void Touch(Handle h) { core_.Touch(h); }
  // Leaves the policy (evicted, removed, or session-pinned); returns the segment it was in.
  Segment Remove(Handle h) { return core_.Remove(h); }
  void SetIoPinned(Handle h, bool pinned) { h->io_pinned = pinned; }

  struct Victim {
    const std::string* key = nullptr;  // evict this (it stays tracked until the Store removes it)
    bool reject_incoming = false;      // or: do not admit the incoming object (answer it `full`)
  };
  // The next object to evict; both fields empty when every tracked object is io-pinned or none
  // is tracked. `incoming`: the key the room is for, when it may be refused admission (a new
  // store; not a load from a lower tier, which serves a hit).
  Victim PickVictim(std::optional<std::string_view> incoming = std::nullopt, uint32_t incoming_depth = 0);

  // One lookup batch, keys in prefix order: counts each key once in the sketch and feeds the
  // sampled ones to the shadows; at an epoch's end, may change the window share. No-op in Lru
  // mode.
  void RecordLookup(std::span<const std::string_view> keys);

  size_t size() const { return core_.size(); }
  EvictionMode mode() const { return options_.mode; }
  EvictionStats stats() const;
  Status CheckInvariants() const { return core_.CheckInvariants(); }

 private:
  EvictionPolicy(uint64_t capacity_bytes, const EvictionOptions& options);
  static uint64_t HashKey(std::string_view key);
  void StartShadows();
  void EndEpoch();

  EvictionOptions options_;
  SegmentedTinyLfu core_;
  FrequencySketch sketch_;
  uint64_t inserted_bytes_ = 0;    // running sum and count of inserted objects: their mean size
  uint64_t inserted_objects_ = 0;  // sets the pool's capacity in objects for the shadows
  // Miniature simulations (adaptive mode, once the pool's object size is known).
  std::vector<ShadowCache> shadows_;
  std::vector<double> scores_;
  std::vector<uint64_t> epoch_hits_;
  uint64_t sample_mask_ = 0;  // a key is simulated when (mixed hash & mask) == 0
  uint64_t shadow_capacity_ = 0;
  uint64_t epoch_keys_ = 0;
  uint64_t epoch_length_ = 0;
  std::vector<uint64_t> sampled_;         // scratch
  std::vector<uint32_t> sampled_depths_;  // scratch
  EvictionStats stats_;
};

}  // namespace shmkv
