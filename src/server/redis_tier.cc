#include "server/redis_tier.h"

#include <hiredis.h>

#include <algorithm>

#include "common/log.h"
#include "fmt/format.h"
#include "redis/value.h"

namespace shmkv {

std::string_view RedisWriteModeName(RedisWriteMode mode) {
  switch (mode) {
    case RedisWriteMode::kBehind: return "behind";
    case RedisWriteMode::kThrough: return "through";
    case RedisWriteMode::kOff: return "off";
  }
  return "?";
}

namespace {

// Reaches Redis: a slot map and a PING answered by every master. Empty when it works.
std::string ProbeCluster(redis::Cluster& cluster, size_t* masters_out = nullptr) {
  const std::vector<redis::Endpoint> masters = cluster.Masters();
  if (masters.empty()) {
    return cluster.last_error().empty() ? std::string("no Redis node answered") : cluster.last_error();
  }
  size_t up = 0;
  std::string why;
  for (const auto& m : masters) {
    redis::Command ping = redis::Command::Make("", {"PING"});
    redis::Outcome o = cluster.ExecuteOn(m, ping);
    if (o.status.ok() && o.reply && o.reply->type != REDIS_REPLY_ERROR) {
      ++up;
    } else {
      why = o.status.ok() ? fmt::format("{}: {}", m.ToString(), std::string_view(o.reply->str, o.reply->len))
                          : o.status.message();
    }
  }
  if (masters_out) *masters_out = masters.size();
  return up > 0 ? std::string() : why;
}

bool IsUnavailable(const redis::Outcome& o) {
  return !o.status.ok();
}

}  // namespace

Result<std::unique_ptr<RedisTier>> RedisTier::Start(asio::io_context& io, Store& store, std::byte* pool,
                                                    uint64_t pool_size, const RedisTierOptions& options) {
  if (options.cluster.seeds.empty()) return Status::InvalidArgument("the L3 tier needs at least one Redis node");
  if (options.io_threads == 0) return Status::InvalidArgument("the L3 tier needs at least one I/O thread");
  if (options.cluster.timeout.count() <= 0) return Status::InvalidArgument("--redis-timeout must be positive");
  auto counters = std::make_shared<redis::ClusterCounters>();
  redis::Cluster probe(options.cluster, counters);
  size_t masters = 0;
  const std::string why = ProbeCluster(probe, &masters);
  if (why.empty()) {
    Log().info("L3: Redis {} with {} master(s) reachable; writes: {}", probe.standalone() ? "(standalone)" : "cluster",
               masters, RedisWriteModeName(options.write));
  } else {
    Log().warn("L3: Redis unavailable at start ({}); serving from L1/L2, retrying every {} ms", why,
               options.probe_interval.count());
  }
  auto tier = std::unique_ptr<RedisTier>(new RedisTier(io, store, pool, options, why.empty(), std::move(counters)));
  tier->max_pending_bytes_ = std::max<uint64_t>(1, std::min(options.max_inflight_bytes, pool_size / 4));
  if (!why.empty()) {
    tier->unavailable_reason_ = why;
    tier->ScheduleProbe();
  }
  return tier;
}

RedisTier::RedisTier(asio::io_context& io, Store& store, std::byte* pool, RedisTierOptions options, bool available,
                     std::shared_ptr<redis::ClusterCounters> counters)
    : io_(io),
      store_(store),
      pool_(pool),
      options_(std::move(options)),
      cluster_counters_(std::move(counters)),
      available_(available),
      probe_timer_(io),
      batch_timer_(io),
      drain_timer_(io) {
  threads_.reserve(options_.io_threads);
  for (size_t i = 0; i < options_.io_threads; ++i) threads_.emplace_back([this] { RunThread(); });
}

RedisTier::~RedisTier() {
  *alive_token_ = false;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    jobs_.clear();
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  for (const IoSlot& s : write_queue_) store_.IoUnpin(s.key);
}

void RedisTier::RunThread() {
  redis::Cluster cluster(options_.cluster, cluster_counters_);
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job(cluster);
  }
}

void RedisTier::Submit(Job job) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void RedisTier::PostToLoop(std::function<void()> f) {
  asio::post(io_, [token = alive_token_, f = std::move(f)] {
    if (*token) f();
  });
}

void RedisTier::SetAvailable(bool up, std::string why) {
  if (up == available_) {
    if (!up) unavailable_reason_ = std::move(why);
    return;
  }
  available_ = up;
  if (up) {
    Log().info("L3: Redis reachable again");
    unavailable_reason_.clear();
    return;
  }
  Log().warn("L3: Redis unavailable ({}); serving from L1/L2, retrying every {} ms", why,
             options_.probe_interval.count());
  unavailable_reason_ = std::move(why);
  ScheduleProbe();
}

void RedisTier::ScheduleProbe() {
  if (probing_) return;
  probing_ = true;
  probe_timer_.expires_after(options_.probe_interval);
  probe_timer_.async_wait([this, token = alive_token_](const asio::error_code& ec) {
    if (ec || !*token) return;
    probing_ = false;
    ProbeNow();
  });
}

void RedisTier::ProbeNow() {
  if (probing_) return;
  probing_ = true;
  Submit([this](redis::Cluster& cluster) {
    std::string why = ProbeCluster(cluster);
    PostToLoop([this, why = std::move(why)]() mutable {
      probing_ = false;
      SetAvailable(why.empty(), why);
    });
  });
}

void RedisTier::SomeCallsFailed(bool any_answer) {
  // One dead node fails only its own slots: the tier is unavailable only when no master answers,
  // which a probe finds out.
  if (any_answer) {
    SetAvailable(true, {});
  } else {
    ProbeNow();
  }
}

void RedisTier::Remember(const std::string& key, uint64_t size) {
  if (known_.size() >= options_.max_known_keys && !known_.contains(key)) {
    known_.clear();  // a cheap bound: what lookups need is relearnt by the next lookups
  }
  known_[key] = size;
}

// ---- lookup ------------------------------------------------------------------------------------

void RedisTier::LookupLeading(std::span<const std::string_view> keys, const Covered& covered, CountDone done) {
  std::vector<bool> by_others(keys.size());
  std::vector<std::string> ask;
  for (size_t i = 0; i < keys.size(); ++i) {
    by_others[i] = covered(keys[i]);
    if (!by_others[i]) ask.emplace_back(keys[i]);
  }
  const auto leading_covered = [&by_others] {
    return static_cast<size_t>(std::find(by_others.begin(), by_others.end(), false) - by_others.begin());
  };
  if (ask.empty() || !available_) return done(leading_covered());
  // Only up to the first key that is neither covered nor in Redis counts; the keys are asked all
  // at once (one round trip per node) rather than one by one.
  Submit([this, ask = std::move(ask), by_others = std::move(by_others),
          done = std::move(done)](redis::Cluster& cluster) mutable {
    // STRLEN gives the load's size; EXISTS (same round trip) tells an empty value, which is
    // corrupt, from an absent key, which STRLEN also answers with 0.
    std::vector<redis::Command> commands;
    commands.reserve(2 * ask.size());
    for (const std::string& k : ask) {
      const std::string rk = redis::RedisKey(k);
      commands.push_back(redis::Command::Make(rk, {"STRLEN", rk}));
      commands.push_back(redis::Command::Make(rk, {"EXISTS", rk}));
    }
    std::vector<redis::Outcome> out;
    cluster.Execute(commands, out);
    // -1: unavailable (or an error reply); 0: absent; else the value's length (an empty value
    // counts as length 1: present, and too short to be valid).
    std::vector<int64_t> lengths(ask.size(), -1);
    bool any_answer = false;
    for (size_t i = 0; i < ask.size(); ++i) {
      const redis::Outcome& len = out[2 * i];
      const redis::Outcome& exists = out[2 * i + 1];
      if (IsUnavailable(len) || IsUnavailable(exists)) continue;
      any_answer = true;
      if (len.reply->type != REDIS_REPLY_INTEGER || exists.reply->type != REDIS_REPLY_INTEGER) continue;
      lengths[i] = exists.reply->integer == 0 ? 0 : std::max<int64_t>(len.reply->integer, 1);
    }
    PostToLoop([this, ask = std::move(ask), by_others = std::move(by_others), lengths = std::move(lengths), any_answer,
                done = std::move(done)] {
      if (!lengths.empty()) SomeCallsFailed(any_answer);
      size_t n = 0;
      size_t j = 0;
      for (; n < by_others.size(); ++n) {
        if (by_others[n]) continue;
        const std::string& k = ask[j];
        const int64_t len = lengths[j++];
        const auto header = static_cast<int64_t>(redis::ValueHeaderSize(k));
        if (len > header) {
          Remember(k, static_cast<uint64_t>(len - header));
          c_.hits++;
          continue;
        }
        known_.erase(k);
        if (len == 0) c_.misses++;  // the key that ends the run: not in Redis
        if (len < 0) c_.miss_unavailable++;
        if (len > 0) {  // too short to hold a header: never loadable
          c_.miss_corrupt++;
          Log().warn("L3: value of {} bytes is too short for its header (key {}); deleted, counted as a miss", len,
                     redis::RedisKey(k));
          DeleteInRedis({redis::RedisKey(k)});
        }
        break;
      }
      done(n);
    });
  });
}

bool RedisTier::Holds(std::string_view key) const {
  return available_ && known_.contains(key);
}

// ---- loads -------------------------------------------------------------------------------------

void RedisTier::Load(std::vector<std::string> keys, const Covered& covered, LoadDone done) {
  struct Batch {
    size_t outstanding = 1;  // held by this call until every load is started
    std::vector<std::string> pinned;
    LoadDone done;
  };
  auto batch = std::make_shared<Batch>();
  batch->done = std::move(done);
  auto settle = [batch] {
    if (--batch->outstanding == 0) batch->done(std::move(batch->pinned));
  };
  // Committed keys of the prefix are io-pinned before room is made for the loads.
  std::vector<const std::string*> wanted;
  for (const std::string& key : keys) {
    if (store_.IsCommitted(key)) {
      if (store_.IoPin(key)) batch->pinned.push_back(key);
      continue;
    }
    if (loading_.contains(key)) {
      wanted.push_back(&key);
      continue;
    }
    if (!Holds(key)) {
      if (covered(key)) continue;  // another tier loads it
      break;
    }
    if (store_.Contains(key)) break;  // reserved by a client's prepare_store
    wanted.push_back(&key);
  }
  std::vector<LoadItem> items;
  for (const std::string* key_ptr : wanted) {
    const std::string& key = *key_ptr;
    auto waiting = loading_.find(key);
    if (waiting == loading_.end()) {
      const uint64_t size = known_.find(key)->second;
      auto offset = store_.ReserveForLoad(key, size);
      if (!offset.ok()) {
        if (offset.status().code() == StatusCode::kFull) c_.load_full++;
        Log().warn("L3 load skipped: {}", offset.status().ToString());
        break;
      }
      items.push_back(LoadItem{key, *offset, size});
      waiting = loading_.emplace(key, std::vector<std::function<void(bool)>>{}).first;
    }
    batch->outstanding++;
    waiting->second.push_back([this, batch, key, settle](bool ok) {
      if (ok && store_.IoPin(key)) batch->pinned.push_back(key);
      settle();
    });
  }
  if (!items.empty()) {
    Submit([this, items](redis::Cluster& cluster) {
      std::vector<std::string> headers(items.size());
      std::vector<redis::BulkSink> sinks(items.size());
      std::vector<redis::Command> commands;
      commands.reserve(items.size());
      for (size_t i = 0; i < items.size(); ++i) {
        headers[i].resize(redis::ValueHeaderSize(items[i].key));
        sinks[i].header = std::as_writable_bytes(std::span(headers[i]));
        sinks[i].payload = std::span(pool_ + items[i].offset, items[i].size);
        const std::string rk = redis::RedisKey(items[i].key);
        commands.push_back(redis::Command::Make(rk, {"GET", rk}));
        commands.back().sink = &sinks[i];
      }
      std::vector<redis::Outcome> out;
      cluster.Execute(commands, out);
      std::vector<LoadResult> results(items.size());
      for (size_t i = 0; i < items.size(); ++i) {
        if (IsUnavailable(out[i])) {
          results[i] = LoadResult::kUnavailable;
        } else if (out[i].reply->type == REDIS_REPLY_NIL) {
          results[i] = LoadResult::kAbsent;
        } else if (!sinks[i].filled) {
          results[i] = out[i].reply->type == REDIS_REPLY_ERROR ? LoadResult::kUnavailable : LoadResult::kCorrupt;
        } else {
          const Status s = redis::VerifyValue(items[i].key, sinks[i].header, sinks[i].payload);
          results[i] = s.ok() ? LoadResult::kOk : LoadResult::kCorrupt;
          if (!s.ok())
            Log().warn("L3: {} (key {}); deleted, counted as a miss", s.message(), redis::RedisKey(items[i].key));
        }
      }
      PostToLoop([this, items, results = std::move(results)] { OnLoadsDone(items, results); });
    });
  }
  // Completes asynchronously even when nothing had to be loaded, so callers have one path.
  asio::post(io_, [settle, token = alive_token_] {
    if (*token) settle();
  });
}

void RedisTier::OnLoadsDone(const std::vector<LoadItem>& items, const std::vector<LoadResult>& results) {
  std::vector<std::string> corrupt;
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string& key = items[i].key;
    const bool cancelled = cancelled_loads_.erase(key) > 0;  // removed or cleared meanwhile
    const bool ok = results[i] == LoadResult::kOk && !cancelled;
    store_.FinishLoad(key, ok);
    switch (results[i]) {
      case LoadResult::kOk:
        c_.loads++;
        c_.load_bytes += items[i].size;
        break;
      case LoadResult::kAbsent:
        c_.miss_absent++;
        known_.erase(key);
        break;
      case LoadResult::kCorrupt:
        c_.miss_corrupt++;
        known_.erase(key);
        corrupt.push_back(redis::RedisKey(key));
        break;
      case LoadResult::kUnavailable: c_.miss_unavailable++; break;
    }
    auto node = loading_.extract(key);
    if (!node.empty()) {
      for (auto& waiter : node.mapped()) waiter(ok);
    }
  }
  if (!corrupt.empty()) DeleteInRedis(std::move(corrupt));
}

// ---- writes ------------------------------------------------------------------------------------

void RedisTier::Committed(std::span<const std::string_view> keys) {
  if (options_.write == RedisWriteMode::kOff) return;
  for (std::string_view key : keys) {
    if (known_.contains(key)) {
      c_.write_skipped_exists++;
      continue;
    }
    if (writing_.contains(key)) continue;
    if (!available_) {
      c_.write_dropped++;
      continue;
    }
    std::optional<IoSlot> slot = store_.IoPinSlot(key);
    if (!slot) continue;
    if (write_bytes_pending_ + slot->length > max_pending_bytes_) {
      store_.IoUnpin(key);
      c_.write_dropped++;
      continue;
    }
    write_bytes_pending_ += slot->length;
    writing_.insert(slot->key);
    write_queue_.push_back(std::move(*slot));
  }
  PumpWrites(options_.write == RedisWriteMode::kThrough);
}

void RedisTier::PumpWrites(bool flush) {
  if (write_queue_.empty()) return;
  if (!flush && write_queue_.size() < options_.max_batch_objects && !drained_) {
    if (batch_timer_armed_) return;
    batch_timer_armed_ = true;
    batch_timer_.expires_after(options_.batch_delay);
    batch_timer_.async_wait([this, token = alive_token_](const asio::error_code& ec) {
      if (ec || !*token) return;
      batch_timer_armed_ = false;
      PumpWrites(true);
    });
    return;
  }
  while (!write_queue_.empty() && write_batches_in_flight_ < options_.io_threads) StartWriteBatch();
}

void RedisTier::StartWriteBatch() {
  std::vector<IoSlot> batch;
  uint64_t bytes = 0;
  while (!write_queue_.empty() && batch.size() < options_.max_batch_objects &&
         (batch.empty() || bytes + write_queue_.front().length <= options_.max_batch_bytes)) {
    bytes += write_queue_.front().length;
    batch.push_back(std::move(write_queue_.front()));
    write_queue_.pop_front();
  }
  write_batches_in_flight_++;
  Submit([this, batch = std::move(batch)](redis::Cluster& cluster) {
    const size_t n = batch.size();
    std::vector<std::string> rkeys(n);
    // A value of the right length is taken as written (content-addressed); no value is written
    // with NX (another node may be writing it); a value of a wrong length is garbage, overwritten.
    std::vector<redis::Command> lengths;
    lengths.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      rkeys[i] = redis::RedisKey(batch[i].key);
      lengths.push_back(redis::Command::Make(rkeys[i], {"STRLEN", rkeys[i]}));
    }
    std::vector<redis::Outcome> out;
    cluster.Execute(lengths, out);
    std::vector<WriteResult> results(n, WriteResult::kUnavailable);
    std::vector<std::string> errors(n);
    std::vector<size_t> to_set;
    std::vector<bool> overwrite(n, false);
    for (size_t i = 0; i < n; ++i) {
      if (IsUnavailable(out[i])) {
        errors[i] = out[i].status.message();
        continue;
      }
      const long long have = out[i].reply->type == REDIS_REPLY_INTEGER ? out[i].reply->integer : -1;
      const auto want = static_cast<long long>(redis::ValueHeaderSize(batch[i].key) + batch[i].length);
      if (have == want) {
        results[i] = WriteResult::kExisted;
        continue;
      }
      overwrite[i] = have != 0;
      to_set.push_back(i);
    }
    std::vector<redis::Command> sets;
    sets.reserve(to_set.size());
    for (size_t i : to_set) {
      const std::span<const std::byte> payload(pool_ + batch[i].offset, batch[i].length);
      redis::Command c;
      c.key = rkeys[i];
      c.args.push_back({"SET", {}});
      c.args.push_back({rkeys[i], {}});
      c.args.push_back({redis::EncodeValueHeader(batch[i].key, payload), payload});
      if (!overwrite[i]) c.args.push_back({"NX", {}});
      if (options_.ttl.count() > 0) {
        c.args.push_back({"EX", {}});
        c.args.push_back({std::to_string(options_.ttl.count()), {}});
      }
      sets.push_back(std::move(c));
    }
    cluster.Execute(sets, out);
    for (size_t j = 0; j < to_set.size(); ++j) {
      const size_t i = to_set[j];
      if (IsUnavailable(out[j])) {
        errors[i] = out[j].status.message();
      } else if (out[j].reply->type == REDIS_REPLY_NIL) {
        results[i] = WriteResult::kExisted;  // another node wrote it meanwhile (NX)
      } else if (out[j].reply->type == REDIS_REPLY_ERROR) {
        results[i] = WriteResult::kError;
        errors[i] = std::string(out[j].reply->str, out[j].reply->len);
      } else {
        results[i] = WriteResult::kWritten;
      }
    }
    PostToLoop([this, batch = std::move(batch), results = std::move(results), errors = std::move(errors)] {
      OnWritesDone(batch, results, errors);
    });
  });
}

void RedisTier::OnWritesDone(const std::vector<IoSlot>& batch, const std::vector<WriteResult>& results,
                             const std::vector<std::string>& errors) {
  write_batches_in_flight_--;
  std::vector<std::string> undo;
  bool any_answer = false;
  std::string unavailable_why;
  for (size_t i = 0; i < batch.size(); ++i) {
    const IoSlot& s = batch[i];
    store_.IoUnpin(s.key);
    write_bytes_pending_ -= s.length;
    writing_.erase(s.key);
    const bool cancelled = cancelled_writes_.erase(s.key) > 0;
    switch (results[i]) {
      case WriteResult::kWritten:
        any_answer = true;
        c_.writes++;
        c_.write_bytes += s.length;
        if (cancelled) {
          undo.push_back(redis::RedisKey(s.key));
        } else {
          Remember(s.key, s.length);
        }
        break;
      case WriteResult::kExisted:
        any_answer = true;
        c_.write_skipped_exists++;
        if (!cancelled) Remember(s.key, s.length);
        break;
      case WriteResult::kError: {
        any_answer = true;
        c_.write_errors++;
        const auto now = std::chrono::steady_clock::now();
        if (errors[i] != last_write_error_ || now - last_write_error_log_ > std::chrono::seconds(10)) {
          Log().warn(
              "L3 write refused by Redis: {} (l3_write_errors counts them; is Redis full? see "
              "docs/l3-redis.md on maxmemory)",
              errors[i]);
          last_write_error_ = errors[i];
          last_write_error_log_ = now;
        }
        break;
      }
      case WriteResult::kUnavailable:
        c_.write_dropped++;
        unavailable_why = errors[i];
        break;
    }
  }
  if (any_answer || !unavailable_why.empty()) SomeCallsFailed(any_answer);
  if (!undo.empty()) DeleteInRedis(std::move(undo));
  PumpWrites(true);
  CheckDrained();
}

// ---- remove, clear -----------------------------------------------------------------------------

void RedisTier::DeleteInRedis(std::vector<std::string> redis_keys) {
  c_.deletes += redis_keys.size();
  Submit([redis_keys = std::move(redis_keys)](redis::Cluster& cluster) {
    std::vector<redis::Command> commands;
    commands.reserve(redis_keys.size());
    for (const std::string& rk : redis_keys) commands.push_back(redis::Command::Make(rk, {"UNLINK", rk}));
    std::vector<redis::Outcome> out;
    cluster.Execute(commands, out);  // best effort: a cache entry left behind is only a cache entry
  });
}

bool RedisTier::Remove(std::string_view key) {
  const auto it = known_.find(key);  // (heterogeneous erase is C++23)
  const bool known = it != known_.end();
  if (known) known_.erase(it);
  if (loading_.contains(key)) cancelled_loads_.insert(std::string(key));
  if (writing_.contains(key)) cancelled_writes_.insert(std::string(key));
  DeleteInRedis({redis::RedisKey(key)});
  return known;
}

size_t RedisTier::Clear(std::string_view namespace_prefix) {
  size_t not_in_l1 = 0;
  for (auto it = known_.begin(); it != known_.end();) {
    if (it->first.starts_with(namespace_prefix)) {
      if (!store_.IsCommitted(it->first)) ++not_in_l1;
      it = known_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [key, waiters] : loading_) {
    if (key.starts_with(namespace_prefix)) cancelled_loads_.insert(key);
  }
  for (const std::string& key : writing_) {
    if (key.starts_with(namespace_prefix)) cancelled_writes_.insert(key);
  }
  if (namespace_prefix.size() != redis::kNamespaceDigestBytes) return not_in_l1;
  // Every master's keys of the namespace: SCAN is per node.
  Submit([pattern = redis::RedisKeyPattern(namespace_prefix)](redis::Cluster& cluster) {
    for (const redis::Endpoint& master : cluster.Masters()) {
      std::string cursor = "0";
      do {
        redis::Command scan = redis::Command::Make("", {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"});
        redis::Outcome o = cluster.ExecuteOn(master, scan);
        if (!o.status.ok() || o.reply->type != REDIS_REPLY_ARRAY || o.reply->elements != 2) break;
        cursor.assign(o.reply->element[0]->str, o.reply->element[0]->len);
        const redisReply* found = o.reply->element[1];
        if (found->elements == 0) continue;
        redis::Command unlink;
        unlink.args.push_back({"UNLINK", {}});
        for (size_t i = 0; i < found->elements; ++i) {
          unlink.args.push_back({std::string(found->element[i]->str, found->element[i]->len), {}});
        }
        cluster.ExecuteOn(master, unlink);
      } while (cursor != "0");
    }
  });
  return not_in_l1;
}

// ---- stats, health, drain ----------------------------------------------------------------------

void RedisTier::AppendStats(std::vector<TierCounter>& out) const {
  const redis::ClusterCounters& cc = *cluster_counters_;
  out.insert(out.end(), {
                            {"l3_available", available_ ? 1 : 0},
                            {"l3_hits", c_.hits},
                            {"l3_misses", c_.misses},
                            {"l3_loads", c_.loads},
                            {"l3_load_bytes", c_.load_bytes},
                            {"l3_load_full", c_.load_full},
                            {"l3_writes", c_.writes},
                            {"l3_write_bytes", c_.write_bytes},
                            {"l3_write_skipped_exists", c_.write_skipped_exists},
                            {"l3_write_dropped", c_.write_dropped},
                            {"l3_write_errors", c_.write_errors},
                            {"l3_miss_unavailable", c_.miss_unavailable},
                            {"l3_miss_corrupt", c_.miss_corrupt},
                            {"l3_miss_absent", c_.miss_absent},
                            {"l3_deletes", c_.deletes},
                            {"l3_queue_bytes", write_bytes_pending_},
                            {"l3_known_keys", known_.size()},
                            {"l3_moved", cc.moved.load()},
                            {"l3_ask", cc.ask.load()},
                            {"l3_slot_refreshes", cc.slot_refreshes.load()},
                            {"l3_reconnects", cc.reconnects.load()},
                            {"l3_auth_errors", cc.auth_errors.load()},
                            {"l3_config_errors", cc.config_errors.load()},
                        });
}

TierHealth RedisTier::Health() const {
  return available_ ? TierHealth{} : TierHealth{false, unavailable_reason_};
}

void RedisTier::Drain(std::chrono::milliseconds limit, std::function<void()> done) {
  if (write_queue_.empty() && write_batches_in_flight_ == 0) {
    asio::post(io_, std::move(done));
    return;
  }
  drained_ = std::move(done);
  drain_timer_.expires_after(limit);
  drain_timer_.async_wait([this, token = alive_token_, limit](const asio::error_code& ec) {
    if (ec || !*token || !drained_) return;
    Log().warn("stopping with {} byte(s) not written to L3 after {} ms", write_bytes_pending_, limit.count());
    auto finish = std::move(drained_);
    drained_ = nullptr;
    finish();
  });
  PumpWrites(true);
  CheckDrained();
}

void RedisTier::CheckDrained() {
  if (!drained_ || !write_queue_.empty() || write_batches_in_flight_ > 0) return;
  drain_timer_.cancel();
  auto done = std::move(drained_);
  drained_ = nullptr;
  asio::post(io_, std::move(done));
}

}  // namespace shmkv
