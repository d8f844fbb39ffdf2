#include "server/store.h"

#include <fmt/format.h>

namespace shmkv {

Result<Store> Store::Create(const StoreOptions& options) {
  auto allocator = SlotAllocator::Create(options.pool_size, options.alignment);
  if (!allocator.ok()) return allocator.status();
  auto policy = EvictionPolicy::Create(allocator->pool_size(), options.eviction);
  if (!policy.ok()) return policy.status();
  return Store(options, std::move(allocator).value(), std::move(policy).value());
}

Store::Store(const StoreOptions& options, SlotAllocator allocator, EvictionPolicy policy)
    : options_(options), allocator_(std::move(allocator)), policy_(std::move(policy)) {
  counters_.pool_size = allocator_.pool_size();
}

Store::Session* Store::FindSession(SessionId id) {
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : &it->second;
}

void Store::OpenSession(SessionId session) {
  sessions_.try_emplace(session);
}

namespace {
// Expired retrieve pins remembered per session, so that a client that never commits cannot grow
// the server's memory: beyond it a late commit_retrieve fails with kInvalidArgument instead of
// kExpired, which is just as safe (the caller treats the chunk as not loaded either way).
constexpr size_t kMaxExpiredPinRecords = 65536;
}  // namespace

bool Store::CloseSession(SessionId session, bool writer_may_still_run) {
  auto sit = sessions_.find(session);
  if (sit == sessions_.end()) return false;
  Session& s = sit->second;
  std::vector<uint64_t> quarantined;
  for (auto& [key, offsets] : s.quarantine) quarantined.insert(quarantined.end(), offsets.begin(), offsets.end());
  const bool keep = writer_may_still_run && !quarantined.empty();
  if (keep) {
    auto& held = orphans_[session];
    held.insert(held.end(), quarantined.begin(), quarantined.end());
  } else {
    FreeQuarantined(quarantined);
  }
  for (const std::string* key : s.reservations) {
    auto it = index_.find(*key);
    if (it != index_.end() && it->second.state == State::kReserved && it->second.writer == session) Erase(it);
  }
  for (auto& [key, lease] : s.pins) {
    auto it = index_.find(key);
    if (it == index_.end()) continue;
    const uint32_t n = lease.retrieve_pins + (lease.lookup_pin ? 1 : 0);
    for (uint32_t i = 0; i < n; ++i) Unpin(it);
  }
  sessions_.erase(sit);
  return keep;
}

void Store::ReleaseOrphans(SessionId session) {
  auto it = orphans_.find(session);
  if (it == orphans_.end()) return;
  FreeQuarantined(it->second);
  orphans_.erase(it);
}

void Store::QuarantineReservation(Session& s, Index::iterator it) {
  // A reserved object is in neither the LRU nor the dirty queue; only the index lets it go.
  const Object& o = it->second;
  Unindexing(o);
  s.quarantine[it->first].push_back(o.offset);
  counters_.quarantined_slots++;
  counters_.quarantined_bytes += o.length;
  quarantined_length_[o.offset] = o.length;
  index_.erase(it);
}

void Store::FreeQuarantined(std::span<const uint64_t> offsets) {
  for (uint64_t offset : offsets) {
    auto len = quarantined_length_.find(offset);
    counters_.quarantined_slots--;
    counters_.quarantined_bytes -= len->second;
    quarantined_length_.erase(len);
    Status freed = allocator_.Free(offset);  // allocated at PrepareStore, freed exactly once here
    (void)freed;
  }
}

void Store::AcknowledgeExpired(Session& s, std::string_view key) {
  auto q = s.quarantine.find(key);
  if (q == s.quarantine.end()) return;
  FreeQuarantined(q->second);
  s.quarantine.erase(q);
}

void Store::AddPin(Object& o) {
  if (o.pins++ == 0) counters_.pinned_objects++;
}

void Store::DropPin(Object& o) {
  if (--o.pins == 0) counters_.pinned_objects--;
}

void Store::Indexed(const Object& o) {
  (void)o;  // a new index entry is always reserved
  counters_.reserved_objects++;
}

void Store::Committed(const Object& o) {
  (void)o;
  counters_.reserved_objects--;
  counters_.objects++;
}

void Store::Unindexing(const Object& o) {
  if (o.state == State::kCommitted) {
    counters_.objects--;
  } else {
    counters_.reserved_objects--;
  }
  if (o.pins > 0) counters_.pinned_objects--;
}

void Store::Touch(Index::iterator it) {
  Object& o = it->second;
  if (o.in_policy) policy_.Touch(o.node);
}

uint64_t Store::Weight(const Object& o) const {
  const uint64_t a = allocator_.alignment();
  return (o.length + a - 1) / a * a;
}

// Session pins take an object out of the eviction policy (it comes back to the same segment when
// the last one goes). Io pins (a lower tier's, counted in both `pins` and `io_pins`) leave it in
// place, so background I/O never reorders eviction; the policy skips it when choosing a victim.
void Store::Pin(Index::iterator it) {
  Object& o = it->second;
  AddPin(o);
  if (o.pins - 1 - o.io_pins == 0 && o.in_policy) {
    o.segment = policy_.Remove(o.node);
    o.in_policy = false;
  }
}

void Store::Unpin(Index::iterator it) {
  Object& o = it->second;
  if (o.pins - o.io_pins == 0) return;
  DropPin(o);
  if (o.pins - o.io_pins == 0 && o.state == State::kCommitted) {
    o.node = policy_.Restore(&it->first, Weight(o), o.depth, o.segment);
    o.in_policy = true;
    policy_.SetIoPinned(o.node, o.io_pins > 0);
  }
}

void Store::Erase(Index::iterator it) {
  Object& o = it->second;
  if (o.in_policy) policy_.Remove(o.node);
  if (o.in_dirty) {
    dirty_.erase(o.dirty);
    dirty_bytes_ -= o.length;
  }
  // The offset came from this allocator and is freed exactly once (the object goes with it).
  Status freed = allocator_.Free(o.offset);
  (void)freed;
  Unindexing(o);
  index_.erase(it);
}

Store::Eviction Store::EvictOne(std::optional<std::string_view> incoming, uint32_t incoming_depth) {
  // The policy never names an io-pinned object: a lower tier is copying it, its slot must stay.
  const EvictionPolicy::Victim victim = policy_.PickVictim(incoming, incoming_depth);
  if (victim.reject_incoming) return Eviction::kRejected;
  if (victim.key == nullptr) return Eviction::kNothing;
  auto it = index_.find(*victim.key);
  counters_.evictions++;
  counters_.evicted_bytes += it->second.length;
  if (it->second.in_dirty) counters_.evicted_dirty++;
  Erase(it);
  return Eviction::kEvicted;
}

Result<std::vector<SlotResult>> Store::PrepareStore(SessionId session, std::span<const std::string_view> keys,
                                                    std::span<const uint64_t> sizes, Clock::time_point now) {
  Session* s = FindSession(session);
  if (s == nullptr) return Status::InvalidArgument("session is not registered");
  if (keys.size() != sizes.size()) {
    return Status::InvalidArgument(
        fmt::format("{} keys but {} sizes; give one size per key", keys.size(), sizes.size()));
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] == 0 || sizes[i] > allocator_.pool_size()) {
      return Status::InvalidArgument(
          fmt::format("key #{} has size {}; sizes must be 1..{} (the pool)", i, sizes[i], allocator_.pool_size()));
    }
  }
  std::vector<SlotResult> out(keys.size());
  // Keys already present are touched tail first so the chain's head ends up most recent and is
  // not evicted to make room for the chain's own tail.
  for (size_t i = keys.size(); i-- > 0;) {
    auto it = index_.find(keys[i]);
    if (it == index_.end()) continue;
    out[i].status = it->second.state == State::kCommitted ? SlotStatus::kExists : SlotStatus::kBusy;
    Touch(it);
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (out[i].status == SlotStatus::kExists || out[i].status == SlotStatus::kBusy) continue;
    // One hash for both the duplicate check and the insert. The new entry is a reservation
    // from here on: not in the LRU, so the evictions below never touch it.
    auto [it, inserted] = index_.try_emplace(std::string(keys[i]));
    if (!inserted) {  // the same key twice in one batch
      out[i].status = SlotStatus::kBusy;
      continue;
    }
    // No room and nothing evictable, or the policy does not admit this object (it was looked up
    // less often than everything that would have to go): `full` either way.
    Result<uint64_t> offset = allocator_.Allocate(sizes[i]);
    while (!offset.ok() && offset.status().code() == StatusCode::kFull &&
           EvictOne(keys[i], static_cast<uint32_t>(i)) == Eviction::kEvicted) {
      offset = allocator_.Allocate(sizes[i]);
    }
    if (!offset.ok()) {
      index_.erase(it);  // no slot: the key was never visible
      out[i].status = SlotStatus::kFull;
      continue;
    }
    Object& o = it->second;
    o.offset = *offset;
    o.length = sizes[i];
    o.writer = session;
    o.reserved_at = now;
    o.depth = static_cast<uint32_t>(i);  // a batch is in prefix order: at least this deep
    Indexed(o);
    s->reservations.insert(&it->first);
    out[i] = {SlotStatus::kOk, o.offset, o.length};
  }
  return out;
}

Status Store::CommitStore(SessionId session, std::span<const std::string_view> keys, Clock::time_point now,
                          std::vector<uint32_t>* expired) {
  (void)now;
  Session* s = FindSession(session);
  if (s == nullptr) return Status::InvalidArgument("session is not registered");
  std::vector<Index::iterator> found;
  found.reserve(keys.size());
  std::vector<uint32_t> late;
  for (size_t i = 0; i < keys.size(); ++i) {
    auto it = index_.find(keys[i]);
    if (it == index_.end() || it->second.state != State::kReserved || it->second.writer != session) {
      if (s->quarantine.contains(keys[i])) {
        late.push_back(static_cast<uint32_t>(i));
        continue;
      }
      return Status::InvalidArgument(
          fmt::format("key #{} is not reserved by this session (never prepared, aborted or already committed); "
                      "nothing was committed",
                      i));
    }
    found.push_back(it);
  }
  if (!late.empty()) {
    // The client sends a commit only once its copy is complete, so its expired slots are safe
    // to reuse from here on.
    for (uint32_t i : late) AcknowledgeExpired(*s, keys[i]);
    std::string list = fmt::format("#{}", late[0]);
    for (size_t j = 1; j < late.size(); ++j) list += fmt::format(", #{}", late[j]);
    if (expired != nullptr) *expired = std::move(late);
    return Status::Expired(fmt::format(
        "the reservation of key {} expired (--reserve-ttl) before this commit; nothing was committed", list));
  }
  // Tail first into the MRU end: the head of the chain ends up most recent.
  for (size_t i = found.size(); i-- > 0;) {
    Index::iterator it = found[i];
    if (it->second.state == State::kCommitted) continue;  // a key listed twice
    s->reservations.erase(&it->first);
    it->second.state = State::kCommitted;
    Committed(it->second);
    it->second.writer = 0;
    it->second.node = policy_.Insert(&it->first, Weight(it->second), it->second.depth);
    it->second.in_policy = true;
    if (options_.track_dirty) {
      it->second.dirty = dirty_.insert(dirty_.end(), &it->first);
      it->second.in_dirty = true;
      dirty_bytes_ += it->second.length;
    }
    counters_.stores++;
    counters_.stored_bytes += it->second.length;
  }
  return Status::Ok();
}

size_t Store::AbortStore(SessionId session, std::span<const std::string_view> keys) {
  Session* s = FindSession(session);
  if (s == nullptr) return 0;
  size_t n = 0;
  for (std::string_view k : keys) {
    AcknowledgeExpired(*s, k);
    auto it = index_.find(k);
    if (it == index_.end() || it->second.state != State::kReserved || it->second.writer != session) continue;
    s->reservations.erase(&it->first);
    Erase(it);
    ++n;
  }
  return n;
}

size_t Store::Lookup(SessionId session, std::span<const std::string_view> keys, bool pin, Clock::time_point now) {
  counters_.lookups++;
  counters_.lookup_keys += keys.size();
  policy_.RecordLookup(keys);
  Session* s = pin ? FindSession(session) : nullptr;
  size_t n = 0;
  std::vector<Index::iterator> hits;
  hits.reserve(keys.size());
  for (std::string_view k : keys) {
    auto it = index_.find(k);
    if (it == index_.end() || it->second.state != State::kCommitted) break;
    // A lookup names a chain from its first block: the position is the block's depth (a batch
    // that started later in the chain recorded less).
    Object& o = it->second;
    if (o.depth < n) {
      o.depth = static_cast<uint32_t>(n);
      if (o.in_policy) policy_.SetDepth(o.node, o.depth);
    }
    hits.push_back(it);
    ++n;
  }
  for (size_t i = hits.size(); i-- > 0;) {
    Touch(hits[i]);
    if (s != nullptr) {
      PinLease& lease = s->pins[hits[i]->first];
      if (!lease.lookup_pin) {
        lease.lookup_pin = true;
        Pin(hits[i]);
      }
      lease.since = now;
    }
  }
  counters_.lookup_hits += n;
  return n;
}

std::vector<SlotResult> Store::PrepareRetrieve(SessionId session, std::span<const std::string_view> keys,
                                               Clock::time_point now) {
  std::vector<SlotResult> out(keys.size());
  Session* s = FindSession(session);
  if (s == nullptr) return out;  // all missing; the server rejects unregistered sessions earlier
  for (size_t i = keys.size(); i-- > 0;) {
    auto it = index_.find(keys[i]);
    if (it == index_.end() || it->second.state != State::kCommitted) continue;
    PinLease& lease = s->pins[it->first];
    if (lease.lookup_pin) {
      lease.lookup_pin = false;  // the lookup's pin becomes this retrieve's pin
    } else {
      Pin(it);
    }
    lease.retrieve_pins++;
    lease.since = now;
    Touch(it);
    out[i] = {SlotStatus::kOk, it->second.offset, it->second.length};
    counters_.retrieves++;
    counters_.retrieved_bytes += it->second.length;
  }
  return out;
}

void Store::ReleasePin(Session& s, std::string_view key, bool all) {
  auto pit = s.pins.find(key);
  if (pit == s.pins.end()) return;
  auto it = index_.find(key);
  PinLease& lease = pit->second;
  uint32_t n = all ? lease.retrieve_pins + (lease.lookup_pin ? 1 : 0) : 1;
  if (!all) {
    lease.retrieve_pins--;
  } else {
    lease.retrieve_pins = 0;
    lease.lookup_pin = false;
  }
  if (it != index_.end()) {
    for (uint32_t i = 0; i < n; ++i) Unpin(it);
  }
  if (lease.retrieve_pins == 0 && !lease.lookup_pin) s.pins.erase(pit);
}

Status Store::CommitRetrieve(SessionId session, std::span<const std::string_view> keys,
                             std::vector<uint32_t>* expired) {
  Session* s = FindSession(session);
  if (s == nullptr) return Status::InvalidArgument("session is not registered");
  // Validate first so a bad batch releases nothing (counting repeats of a key): each mention of
  // a key takes one live pin, then one expired pin.
  std::unordered_map<std::string_view, uint32_t> wanted;
  std::vector<bool> is_late(keys.size(), false);
  std::vector<uint32_t> late;
  for (size_t i = 0; i < keys.size(); ++i) {
    auto pit = s->pins.find(keys[i]);
    const uint32_t live = pit == s->pins.end() ? 0 : pit->second.retrieve_pins;
    const uint32_t nth = ++wanted[keys[i]];
    if (nth <= live) continue;
    auto eit = s->expired_pins.find(keys[i]);
    if (eit != s->expired_pins.end() && nth - live <= eit->second) {
      is_late[i] = true;
      late.push_back(static_cast<uint32_t>(i));
      continue;
    }
    return Status::InvalidArgument(
        fmt::format("key #{} is not pinned by a prepare_retrieve of this session; nothing was released", i));
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!is_late[i]) {
      ReleasePin(*s, keys[i], /*all=*/false);
      continue;
    }
    auto eit = s->expired_pins.find(keys[i]);
    if (--eit->second == 0) s->expired_pins.erase(eit);
  }
  if (late.empty()) return Status::Ok();
  std::string list = fmt::format("#{}", late[0]);
  for (size_t j = 1; j < late.size(); ++j) list += fmt::format(", #{}", late[j]);
  if (expired != nullptr) *expired = std::move(late);
  return Status::Expired(
      fmt::format("the pin of key {} expired (--pin-ttl) before this commit: the bytes read from its slot may have "
                  "been overwritten and must not be used; the other keys were released",
                  list));
}

std::vector<RemoveOutcome> Store::Remove(std::span<const std::string_view> keys) {
  std::vector<RemoveOutcome> out(keys.size(), RemoveOutcome::kMissing);
  for (size_t i = 0; i < keys.size(); ++i) {
    auto it = index_.find(keys[i]);
    if (it == index_.end()) continue;
    if (it->second.state != State::kCommitted || it->second.pins > 0) {
      out[i] = RemoveOutcome::kBusy;
      continue;
    }
    Erase(it);
    out[i] = RemoveOutcome::kRemoved;
  }
  return out;
}

size_t Store::Clear(std::string_view prefix) {
  size_t n = 0;
  for (auto it = index_.begin(); it != index_.end();) {
    auto next = std::next(it);
    const Object& o = it->second;
    if (o.in_policy && o.io_pins == 0 && it->first.starts_with(prefix)) {
      Erase(it);
      ++n;
    }
    it = next;
  }
  return n;
}

size_t Store::ExpireLeases(Clock::time_point now) {
  size_t expired = 0;
  for (auto& [id, s] : sessions_) {
    for (auto rit = s.reservations.begin(); rit != s.reservations.end();) {
      auto it = index_.find(**rit);
      if (it != index_.end() && now - it->second.reserved_at < options_.reserve_ttl) {
        ++rit;
        continue;
      }
      rit = s.reservations.erase(rit);  // before the index lets go: the pointer targets its key
      // The stalled writer may still write into the slot: it must not reach another writer.
      if (it != index_.end() && it->second.state == State::kReserved && it->second.writer == id) {
        QuarantineReservation(s, it);
      }
      ++expired;
    }
    std::vector<std::pair<std::string, uint32_t>> stale;
    for (auto& [key, lease] : s.pins) {
      if (now - lease.since >= options_.pin_ttl) stale.emplace_back(key, lease.retrieve_pins);
    }
    for (const auto& [key, retrieve_pins] : stale) {
      // A retrieve pin's reader may be copying out right now: its commit_retrieve must say so.
      if (retrieve_pins > 0 && (s.expired_pins.size() < kMaxExpiredPinRecords || s.expired_pins.contains(key))) {
        s.expired_pins[key] += retrieve_pins;
      }
      ReleasePin(s, key, /*all=*/true);
      ++expired;
    }
  }
  counters_.expired_leases += expired;
  return expired;
}

bool Store::IsCommitted(std::string_view key) const {
  auto it = index_.find(key);
  return it != index_.end() && it->second.state == State::kCommitted;
}

bool Store::Contains(std::string_view key) const {
  return index_.find(key) != index_.end();
}

std::vector<IoSlot> Store::TakeDirty(size_t max_objects) {
  std::vector<IoSlot> out;
  while (out.size() < max_objects && !dirty_.empty()) {
    auto it = index_.find(*dirty_.front());
    Object& o = it->second;
    dirty_.pop_front();
    o.in_dirty = false;
    dirty_bytes_ -= o.length;
    o.writing = true;
    o.io_pins++;
    AddPin(o);
    if (o.in_policy) policy_.SetIoPinned(o.node, true);
    out.push_back({it->first, o.offset, o.length});
  }
  return out;
}

void Store::FinishWrite(std::string_view key, bool requeue) {
  auto it = index_.find(key);
  if (it == index_.end() || !it->second.writing) return;
  Object& o = it->second;
  o.writing = false;
  if (requeue) {
    o.dirty = dirty_.insert(dirty_.end(), &it->first);  // the tail: one failing object does not block the rest
    o.in_dirty = true;
    dirty_bytes_ += o.length;
  }
  o.io_pins--;
  DropPin(o);
  if (o.in_policy) policy_.SetIoPinned(o.node, o.io_pins > 0);
}

Result<uint64_t> Store::ReserveForLoad(std::string_view key, uint64_t length) {
  if (length == 0 || length > allocator_.pool_size()) {
    return Status::InvalidArgument(
        fmt::format("load of {} bytes does not fit a pool of {}", length, allocator_.pool_size()));
  }
  if (index_.find(key) != index_.end()) return Status::AlreadyExists("the key is already in L1");
  Result<uint64_t> offset = allocator_.Allocate(length);
  while (!offset.ok() && offset.status().code() == StatusCode::kFull && EvictOne(std::nullopt) == Eviction::kEvicted) {
    offset = allocator_.Allocate(length);
  }
  if (!offset.ok()) return offset.status();
  Object o;
  o.offset = *offset;
  o.length = length;
  o.writer = kLoaderSession;
  Indexed(o);
  index_.emplace(std::string(key), o);
  return *offset;
}

void Store::FinishLoad(std::string_view key, bool ok) {
  auto it = index_.find(key);
  if (it == index_.end() || it->second.state != State::kReserved || it->second.writer != kLoaderSession) return;
  if (!ok) return Erase(it);
  it->second.state = State::kCommitted;
  Committed(it->second);
  it->second.writer = 0;
  it->second.node = policy_.Insert(&it->first, Weight(it->second), it->second.depth);
  it->second.in_policy = true;
}

bool Store::IoPin(std::string_view key) {
  auto it = index_.find(key);
  if (it == index_.end() || it->second.state != State::kCommitted) return false;
  it->second.io_pins++;
  AddPin(it->second);
  if (it->second.in_policy) policy_.SetIoPinned(it->second.node, true);
  return true;
}

std::optional<IoSlot> Store::IoPinSlot(std::string_view key) {
  if (!IoPin(key)) return std::nullopt;
  const Object& o = index_.find(key)->second;
  return IoSlot{std::string(key), o.offset, o.length};
}

void Store::IoUnpin(std::string_view key) {
  auto it = index_.find(key);
  if (it == index_.end() || it->second.io_pins == 0) return;
  it->second.io_pins--;
  DropPin(it->second);
  if (it->second.in_policy) policy_.SetIoPinned(it->second.node, it->second.io_pins > 0);
}

StoreStats Store::stats() const {
  StoreStats s = counters_;
  s.used_bytes = allocator_.used_bytes();
  s.sessions = sessions_.size();
  s.dirty_objects = dirty_.size();
  s.dirty_bytes = dirty_bytes_;
  s.eviction = policy_.stats();
  return s;
}

Status Store::CheckInvariants() const {
  auto fail = [](std::string what) { return Status::Internal("store invariant broken: " + what); };
  SHMKV_RETURN_IF_ERROR(allocator_.CheckInvariants());
  uint64_t quarantined = 0;
  for (const auto& [id, s] : sessions_) {
    for (const auto& [key, offsets] : s.quarantine) quarantined += offsets.size();
  }
  for (const auto& [id, offsets] : orphans_) quarantined += offsets.size();
  if (quarantined != counters_.quarantined_slots || quarantined != quarantined_length_.size()) {
    return fail("quarantine counters disagree with the sessions' quarantines");
  }
  if (allocator_.stats().live_slots != index_.size() + quarantined) {
    return fail(fmt::format("{} slots allocated but {} objects indexed and {} quarantined",
                            allocator_.stats().live_slots, index_.size(), quarantined));
  }
  SHMKV_RETURN_IF_ERROR(policy_.CheckInvariants());
  size_t in_policy = 0;
  size_t dirty_count = 0;
  std::unordered_map<std::string_view, uint32_t> pins_by_sessions;
  std::unordered_map<std::string_view, SessionId> reserved_by;
  for (const auto& [id, s] : sessions_) {
    for (const auto& [key, lease] : s.pins) pins_by_sessions[key] += lease.retrieve_pins + (lease.lookup_pin ? 1 : 0);
    for (const std::string* key : s.reservations) reserved_by[*key] = id;
  }
  for (const auto& [key, o] : index_) {
    auto slot = allocator_.SlotSize(o.offset);
    if (!slot.ok() || *slot < o.length) return fail("object without a slot large enough");
    const bool should_be_in_policy = o.state == State::kCommitted && o.pins == o.io_pins;
    if (o.in_policy != should_be_in_policy) return fail("eviction policy membership disagrees with state and pins");
    if (o.in_policy && (o.node->key != &key || o.node->io_pinned != (o.io_pins > 0) || o.node->weight != Weight(o))) {
      return fail("eviction policy node disagrees with its object");
    }
    in_policy += o.in_policy ? 1 : 0;
    auto p = pins_by_sessions.find(key);
    if ((p == pins_by_sessions.end() ? 0u : p->second) + o.io_pins != o.pins) {
      return fail("pin count disagrees with sessions");
    }
    if (o.in_dirty && (o.state != State::kCommitted || o.writing)) return fail("dirty object not committed");
    dirty_count += o.in_dirty ? 1 : 0;
    if (o.state == State::kReserved && o.writer != kLoaderSession) {
      auto r = reserved_by.find(key);
      if (r == reserved_by.end() || r->second != o.writer) return fail("reserved object not held by its writer");
    }
  }
  if (in_policy != policy_.size()) return fail("eviction policy holds objects that are not evictable");
  if (dirty_count != dirty_.size()) return fail("dirty queue disagrees with the objects");
  // The incremental counters of stats() against a full walk.
  uint64_t committed = 0, reserved = 0, pinned = 0, dirty_bytes = 0;
  for (const auto& [key, o] : index_) {
    (o.state == State::kCommitted ? committed : reserved)++;
    pinned += o.pins > 0 ? 1 : 0;
    dirty_bytes += o.in_dirty ? o.length : 0;
  }
  if (committed != counters_.objects || reserved != counters_.reserved_objects || pinned != counters_.pinned_objects) {
    return fail(fmt::format("counters say {} committed, {} reserved, {} pinned; the index holds {}, {}, {}",
                            counters_.objects, counters_.reserved_objects, counters_.pinned_objects, committed,
                            reserved, pinned));
  }
  if (dirty_bytes != dirty_bytes_) return fail("dirty byte count disagrees with the dirty objects");
  if (allocator_.used_bytes() != allocator_.stats().used_bytes) return fail("allocator byte count disagrees");
  return Status::Ok();
}

}  // namespace shmkv
