#include "server/eviction_policy.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include <fmt/format.h>

namespace shmkv {

namespace {

// splitmix64's finaliser: spreads any 64-bit hash over all bits.
uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

constexpr uint64_t kRowSeeds[4] = {0x9e3779b97f4a7c15ULL, 0xc2b2ae3d27d4eb4fULL, 0x165667b19e3779f9ULL,
                                   0xd6e8feb86659fd93ULL};
constexpr uint8_t kCounterMax = 15;  // 4-bit counters: 15 lookups is "hot" already
constexpr size_t kMinSketchWidth = 256;
constexpr size_t kCountersPerObject = 16;

}  // namespace

Result<EvictionMode> ParseEvictionMode(std::string_view text) {
  if (text == "adaptive") return EvictionMode::kAdaptive;
  if (text == "lru") return EvictionMode::kLru;
  return Status::InvalidArgument(fmt::format("eviction policy '{}' is not one of: adaptive, lru", text));
}

std::string_view EvictionModeName(EvictionMode mode) {
  return mode == EvictionMode::kLru ? "lru" : "adaptive";
}

// ---- FrequencySketch ---------------------------------------------------------------------------

void FrequencySketch::EnsureCapacity(size_t objects) {
  const size_t capacity = std::bit_ceil(std::max(objects, kMinSketchWidth));
  if (capacity <= capacity_) return;
  // Growing forgets the counts: the pool has just grown past what the old table could tell apart.
  // Between two halvings about 10 x capacity lookups arrive, many of them of keys seen once; rows
  // of 16 x capacity counters keep those from inflating each other's estimates.
  capacity_ = capacity;
  table_.assign(capacity * kCountersPerObject * 4, 0);
  increments_ = 0;
  sample_ = 10 * uint64_t{capacity};
}

size_t FrequencySketch::Index(uint64_t hash, int row) const {
  const uint64_t x = Mix(hash + kRowSeeds[row]);
  return static_cast<size_t>(x & (width() - 1)) * 4 + static_cast<size_t>(row);
}

void FrequencySketch::Increment(uint64_t hash) {
  if (table_.empty()) EnsureCapacity(kMinSketchWidth);
  for (int row = 0; row < 4; ++row) {
    uint8_t& c = table_[Index(hash, row)];
    if (c < kCounterMax) ++c;
  }
  if (++increments_ >= sample_) Halve();
}

uint32_t FrequencySketch::Estimate(uint64_t hash) const {
  if (table_.empty()) return 0;
  uint32_t m = kCounterMax;
  for (int row = 0; row < 4; ++row) m = std::min<uint32_t>(m, table_[Index(hash, row)]);
  return m;
}

void FrequencySketch::Halve() {
  for (uint8_t& c : table_) c >>= 1;
  increments_ /= 2;
}

// ---- SegmentedTinyLfu ----------------------------------------------------------------------------

SegmentedTinyLfu::SegmentedTinyLfu(uint64_t capacity, double window_fraction, double protected_fraction)
    : capacity_(capacity), protected_fraction_(protected_fraction) {
  SetWindowFraction(window_fraction);
}

void SegmentedTinyLfu::SetWindowFraction(double fraction) {
  window_fraction_ = fraction;
  window_target_ = static_cast<uint64_t>(std::llround(static_cast<double>(capacity_) * fraction));
  window_target_ = std::clamp<uint64_t>(window_target_, 1, capacity_);
  protected_target_ = static_cast<uint64_t>(static_cast<double>(capacity_ - window_target_) * protected_fraction_);
  // A smaller window hands its overflow to main lazily (at eviction, through the contest); a
  // smaller protected segment demotes at once, which is cheap and keeps the budgets honest.
  BalanceProtected();
}

void SegmentedTinyLfu::MoveTo(Handle h, Segment to) {
  bytes_[h->segment] -= h->weight;
  lists_[to].splice(lists_[to].end(), lists_[h->segment], h);
  h->segment = to;
  bytes_[to] += h->weight;
}

void SegmentedTinyLfu::BalanceProtected() {
  List& p = lists_[kProtected];
  while (bytes_[kProtected] > protected_target_ && p.size() > 1) MoveTo(p.begin(), kProbation);
}

void SegmentedTinyLfu::MigrateWindow() {
  List& w = lists_[kWindow];
  const uint64_t main_target = capacity_ - window_target_;
  while (bytes_[kWindow] > window_target_ && !w.empty() &&
         bytes_[kProbation] + bytes_[kProtected] + w.front().weight <= main_target) {
    MoveTo(w.begin(), kProbation);
  }
}

SegmentedTinyLfu::Handle SegmentedTinyLfu::Insert(Node node) {
  node.segment = kWindow;
  bytes_[kWindow] += node.weight;
  Handle h = lists_[kWindow].insert(lists_[kWindow].end(), node);
  MigrateWindow();
  return h;
}

SegmentedTinyLfu::Handle SegmentedTinyLfu::Restore(Node node, Segment segment) {
  node.segment = segment;
  bytes_[segment] += node.weight;
  Handle h = lists_[segment].insert(lists_[segment].end(), node);
  if (segment == kProtected) BalanceProtected();
  if (segment == kWindow) MigrateWindow();
  return h;
}

void SegmentedTinyLfu::Touch(Handle h) {
  if (h->segment == kProbation) {
    MoveTo(h, kProtected);  // a second use in main: protected
    BalanceProtected();
  } else {
    lists_[h->segment].splice(lists_[h->segment].end(), lists_[h->segment], h);
  }
}

SegmentedTinyLfu::Segment SegmentedTinyLfu::Remove(Handle h) {
  const Segment s = h->segment;
  bytes_[s] -= h->weight;
  lists_[s].erase(h);
  return s;
}

SegmentedTinyLfu::Handle SegmentedTinyLfu::FirstEvictable(Segment s) {
  Handle h = lists_[s].begin();
  while (h != lists_[s].end() && h->io_pinned) ++h;
  return h;
}

namespace {
// The contest: does `a` deserve its slot more than `b`? Looked up more often, or as often and
// nearer the head of its chain: a parent is looked up whenever its child is, so on equal counts
// keeping the deeper block could only leave it behind an evicted parent, useless.
bool Beats(uint32_t a_count, uint32_t a_depth, uint32_t b_count, uint32_t b_depth) {
  return a_count > b_count || (a_count == b_count && a_depth < b_depth);
}
}  // namespace

SegmentedTinyLfu::Pick SegmentedTinyLfu::PickVictim(const FrequencySketch* sketch, std::optional<Incoming> incoming,
                                                    Handle* out) {
  Handle cand = FirstEvictable(kWindow);
  Handle vict = FirstEvictable(kProbation);
  if (vict == lists_[kProbation].end()) vict = FirstEvictable(kProtected);
  const bool have_cand = cand != lists_[kWindow].end();
  const bool have_vict = vict != lists_[kProbation].end() && vict != lists_[kProtected].end();
  // Main within its budget: the room must come out of the window's overflow (the object being
  // made room for will land in the window), so its coldest object faces the contest. Main over
  // its budget (the window share has just grown): main gives back first.
  const bool main_within = bytes_[kProbation] + bytes_[kProtected] <= capacity_ - window_target_;
  if (have_cand && (main_within || !have_vict)) {
    *out = cand;
    if (have_vict && sketch != nullptr) {
      // The admission contest: the candidate enters main only if it was looked up more often.
      if (Beats(sketch->Estimate(cand->hash), cand->depth, sketch->Estimate(vict->hash), vict->depth)) {
        MoveTo(cand, kProbation);
        *out = vict;
        contests_won_++;
      } else {
        contests_lost_++;
      }
    }
    return Pick::kVictim;
  }
  if (!have_vict) return Pick::kNothing;
  if (!have_cand && main_within && sketch != nullptr && incoming.has_value()) {
    // The window is empty (a burst of new objects used it up): the object asking for room is
    // the candidate. Unless it beats main's victim it is not admitted at all; a victim never
    // looked up (count 0) always gives way, so traffic without lookups keeps plain recency.
    const uint32_t victim_count = sketch->Estimate(vict->hash);
    if (victim_count > 0 && !Beats(sketch->Estimate(incoming->hash), incoming->depth, victim_count, vict->depth)) {
      contests_lost_++;
      return Pick::kRejectIncoming;
    }
    contests_won_++;
  }
  *out = vict;
  return Pick::kVictim;
}

Status SegmentedTinyLfu::CheckInvariants() const {
  for (int s = 0; s < 3; ++s) {
    uint64_t sum = 0;
    for (const Node& n : lists_[s]) {
      if (n.segment != s) return Status::Internal("eviction policy: a node's segment disagrees with its list");
      sum += n.weight;
    }
    if (sum != bytes_[s]) return Status::Internal("eviction policy: segment bytes disagree with their nodes");
  }
  if (lists_[kProtected].size() > 1 && bytes_[kProtected] > protected_target_) {
    return Status::Internal("eviction policy: protected segment over its budget");
  }
  return Status::Ok();
}

// ---- ShadowCache ---------------------------------------------------------------------------------

ShadowCache::ShadowCache(size_t capacity, double window_fraction, double protected_fraction)
    : core_(std::max<size_t>(capacity, 1), window_fraction, protected_fraction) {
  sketch_.EnsureCapacity(capacity);
}

size_t ShadowCache::Request(std::span<const uint64_t> hashes, std::span<const uint32_t> depths) {
  size_t leading = 0;
  while (leading < hashes.size() && map_.contains(hashes[leading])) ++leading;
  for (uint64_t h : hashes) sketch_.Increment(h);
  // As the Store sees a lookup followed by a store of the rest: present keys touched tail first;
  // the missing ones reserved head first, each making room (or refused admission, which ends the
  // store: a block after a missing one is useless); then committed tail first into the window,
  // so the chain's head ends up hottest.
  for (size_t i = hashes.size(); i-- > 0;) {
    auto it = map_.find(hashes[i]);
    if (it != map_.end()) core_.Touch(it->second);
  }
  admitted_.clear();
  for (size_t i = 0; i < hashes.size(); ++i) {
    const uint64_t h = hashes[i];
    if (map_.contains(h)) continue;
    bool room = true;
    while (core_.size() + admitted_.size() >= core_.capacity()) {
      SegmentedTinyLfu::Handle victim;
      if (core_.PickVictim(&sketch_, SegmentedTinyLfu::Incoming{h, depths[i]}, &victim) !=
          SegmentedTinyLfu::Pick::kVictim) {
        room = false;
        break;
      }
      map_.erase(victim->hash);
      core_.Remove(victim);
    }
    if (!room) break;
    admitted_.push_back(i);
  }
  for (size_t j = admitted_.size(); j-- > 0;) {  // a key twice in the batch is inserted once
    const size_t i = admitted_[j];
    auto [it, inserted] = map_.try_emplace(hashes[i]);
    if (inserted) it->second = core_.Insert({.hash = hashes[i], .weight = 1, .depth = depths[i]});
  }
  return leading;
}

// ---- EvictionPolicy ------------------------------------------------------------------------------

Result<EvictionPolicy> EvictionPolicy::Create(uint64_t capacity_bytes, const EvictionOptions& options) {
  if (capacity_bytes == 0) return Status::InvalidArgument("eviction policy: the pool capacity must be > 0");
  if (options.window_fractions.empty()) {
    return Status::InvalidArgument("eviction policy: window_fractions must name at least one share");
  }
  for (double f : options.window_fractions) {
    if (!(f > 0.0 && f <= 1.0)) {
      return Status::InvalidArgument(fmt::format("eviction policy: window fraction {} is not in (0, 1]", f));
    }
  }
  if (!(options.protected_fraction >= 0.0 && options.protected_fraction < 1.0)) {
    return Status::InvalidArgument(
        fmt::format("eviction policy: protected_fraction {} is not in [0, 1)", options.protected_fraction));
  }
  if (options.shadow_objects < 16) {
    return Status::InvalidArgument(
        fmt::format("eviction policy: shadow_objects {} is below 16", options.shadow_objects));
  }
  if (!(options.switch_margin >= 0.0)) {
    return Status::InvalidArgument(fmt::format("eviction policy: switch_margin {} is negative", options.switch_margin));
  }
  if (!(options.score_decay >= 0.0 && options.score_decay < 1.0)) {
    return Status::InvalidArgument(
        fmt::format("eviction policy: score_decay {} is not in [0, 1)", options.score_decay));
  }
  return EvictionPolicy(capacity_bytes, options);
}

EvictionPolicy::EvictionPolicy(uint64_t capacity_bytes, const EvictionOptions& options)
    : options_(options),
      core_(capacity_bytes,
            options.mode == EvictionMode::kLru
                ? 1.0
                : *std::max_element(options.window_fractions.begin(), options.window_fractions.end()),
            options.protected_fraction) {
  stats_.window_fraction = core_.window_fraction();
}

uint64_t EvictionPolicy::HashKey(std::string_view key) {
  return Mix(std::hash<std::string_view>{}(key));
}

EvictionPolicy::Handle EvictionPolicy::Insert(const std::string* key, uint64_t bytes, uint32_t depth) {
  inserted_bytes_ += bytes;
  inserted_objects_++;
  if (options_.mode == EvictionMode::kAdaptive) sketch_.EnsureCapacity(core_.size() + 1);
  return core_.Insert({.hash = HashKey(*key), .weight = bytes, .key = key, .depth = depth});
}

EvictionPolicy::Handle EvictionPolicy::Restore(const std::string* key, uint64_t bytes, uint32_t depth,
                                               Segment segment) {
  return core_.Restore({.hash = HashKey(*key), .weight = bytes, .key = key, .depth = depth}, segment);
}

EvictionPolicy::Victim EvictionPolicy::PickVictim(std::optional<std::string_view> incoming, uint32_t incoming_depth) {
  const bool adaptive = options_.mode == EvictionMode::kAdaptive;
  std::optional<SegmentedTinyLfu::Incoming> incoming_hash;
  if (adaptive && incoming.has_value()) incoming_hash = SegmentedTinyLfu::Incoming{HashKey(*incoming), incoming_depth};
  Handle h;
  switch (core_.PickVictim(adaptive ? &sketch_ : nullptr, incoming_hash, &h)) {
    case SegmentedTinyLfu::Pick::kVictim: return {.key = h->key};
    case SegmentedTinyLfu::Pick::kRejectIncoming: return {.reject_incoming = true};
    case SegmentedTinyLfu::Pick::kNothing: break;
  }
  return {};
}

void EvictionPolicy::StartShadows() {
  const uint64_t mean = std::max<uint64_t>(1, inserted_bytes_ / inserted_objects_);
  const uint64_t objects = std::max<uint64_t>(1, core_.capacity() / mean);
  uint64_t rate = 1;
  while (objects / rate > options_.shadow_objects) rate *= 2;
  sample_mask_ = rate - 1;
  shadow_capacity_ = std::max<uint64_t>(1, objects / rate);
  epoch_length_ = std::max<uint64_t>(64, shadow_capacity_);
  shadows_.clear();
  for (double f : options_.window_fractions) {
    shadows_.emplace_back(static_cast<size_t>(shadow_capacity_), f, options_.protected_fraction);
  }
  scores_.assign(shadows_.size(), 0.0);
  epoch_hits_.assign(shadows_.size(), 0);
  epoch_keys_ = 0;
  stats_.shadow_sample_rate = rate;
}

void EvictionPolicy::RecordLookup(std::span<const std::string_view> keys) {
  if (options_.mode != EvictionMode::kAdaptive) return;
  if (shadows_.empty() && inserted_objects_ > 0) StartShadows();
  sampled_.clear();
  sampled_depths_.clear();
  for (size_t i = 0; i < keys.size(); ++i) {
    const uint64_t h = HashKey(keys[i]);
    sketch_.Increment(h);
    // Sampling on other bits than the sketch's rows use.
    if (!shadows_.empty() && ((h >> 40) & sample_mask_) == 0) {
      sampled_.push_back(h);
      sampled_depths_.push_back(static_cast<uint32_t>(i));
    }
  }
  if (sampled_.empty()) return;
  for (size_t i = 0; i < shadows_.size(); ++i) epoch_hits_[i] += shadows_[i].Request(sampled_, sampled_depths_);
  epoch_keys_ += sampled_.size();
  if (epoch_keys_ >= epoch_length_) EndEpoch();
}

void EvictionPolicy::EndEpoch() {
  size_t best = 0;
  size_t current = 0;
  for (size_t i = 0; i < shadows_.size(); ++i) {
    scores_[i] = scores_[i] * options_.score_decay + static_cast<double>(epoch_hits_[i]);
    epoch_hits_[i] = 0;
    if (shadows_[i].window_fraction() == core_.window_fraction()) current = i;
  }
  for (size_t i = 0; i < shadows_.size(); ++i) {
    if (scores_[i] > scores_[best] || (scores_[i] == scores_[best] && i == current)) best = i;
  }
  epoch_keys_ = 0;
  if (best != current && scores_[best] > scores_[current] * (1.0 + options_.switch_margin)) {
    core_.SetWindowFraction(shadows_[best].window_fraction());
    stats_.window_switches++;
  }
  // The shadows model the pool at its object count; if the mean object size has drifted by more
  // than 2x, that count is wrong: start them again at the new scale.
  const uint64_t mean = std::max<uint64_t>(1, inserted_bytes_ / inserted_objects_);
  const uint64_t objects = std::max<uint64_t>(1, core_.capacity() / mean);
  const uint64_t modelled = shadow_capacity_ * (sample_mask_ + 1);
  if (objects > 2 * modelled || 2 * objects < modelled) StartShadows();
}

EvictionStats EvictionPolicy::stats() const {
  EvictionStats s = stats_;
  s.window_fraction = core_.window_fraction();
  s.admissions_won = core_.contests_won();
  s.admissions_rejected = core_.contests_lost();
  return s;
}

}  // namespace shmkv
