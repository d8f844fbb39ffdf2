#include "metrics/prometheus.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <map>
#include <optional>
#include <set>

namespace shmkv::metrics {
namespace {

enum class Type : uint8_t { kCounter, kGauge, kHistogram, kUntyped };

std::string_view TypeName(Type t) {
  switch (t) {
    case Type::kCounter: return "counter";
    case Type::kGauge: return "gauge";
    case Type::kHistogram: return "histogram";
    case Type::kUntyped: break;
  }
  return "untyped";
}

struct Family {
  std::string_view name;
  Type type;
  std::string_view help;
};

// The families, in the order they are exported. docs/operations.md lists the same.
constexpr std::array kFamilies = {
    Family{"shmkv_build_info", Type::kGauge, "Always 1; labels: version, protocol_min, protocol_max."},
    Family{"shmkv_server_info", Type::kGauge, "Always 1; labels: the pool's segment and this start's generation."},
    Family{"shmkv_start_time_seconds", Type::kGauge, "Unix time the server started."},
    Family{"shmkv_healthy", Type::kGauge, "1 while the loop, the pool and every tier are up (what /healthz says)."},
    Family{"shmkv_requests_total", Type::kCounter, "Requests answered, by operation and outcome (status code)."},
    Family{"shmkv_request_duration_seconds", Type::kHistogram,
           "Server-side time from a request's decode to its reply, by operation."},
    Family{"shmkv_lookups_total", Type::kCounter, "lookup requests."},
    Family{"shmkv_lookup_keys_total", Type::kCounter, "Keys asked for by lookup requests."},
    Family{"shmkv_lookup_hit_keys_total", Type::kCounter,
           "Keys in the leading runs that lookups answered (held in any tier), each counted once; "
           "hit rate = rate(shmkv_lookup_hit_keys_total) / rate(shmkv_lookup_keys_total)."},
    Family{"shmkv_tier_up", Type::kGauge, "1 while the tier serves, 0 while it is down."},
    Family{"shmkv_tier_objects", Type::kGauge, "Objects held by the tier (L1: committed)."},
    Family{"shmkv_tier_bytes", Type::kGauge, "Bytes held by the tier (L1: in slots, committed and reserved)."},
    Family{"shmkv_tier_capacity_bytes", Type::kGauge, "The tier's capacity in bytes (L1: the pool)."},
    Family{"shmkv_tier_hits_total", Type::kCounter,
           "Keys a lookup found in the tier; an L2 hit may be a key L1 also holds, so do not add tiers up: "
           "use shmkv_lookup_hit_keys_total for a hit rate."},
    Family{"shmkv_tier_misses_total", Type::kCounter, "Keys a lookup asked the tier for and it lacked."},
    Family{"shmkv_tier_loads_total", Type::kCounter,
           "Objects read out of the tier (L1: slots handed to readers; L2: objects loaded into L1)."},
    Family{"shmkv_tier_read_bytes_total", Type::kCounter, "Bytes read out of the tier."},
    Family{"shmkv_tier_writes_total", Type::kCounter,
           "Objects written into the tier (L1: commits; L2: objects written to disk)."},
    Family{"shmkv_tier_written_bytes_total", Type::kCounter, "Bytes written into the tier."},
    Family{"shmkv_tier_evictions_total", Type::kCounter, "Objects the tier dropped to make room, by reason."},
    Family{"shmkv_tier_evicted_bytes_total", Type::kCounter, "Bytes of the objects the tier evicted."},
    Family{"shmkv_tier_evicted_unwritten_total", Type::kCounter,
           "Objects L1 evicted before a lower tier held a copy (lost to every tier)."},
    Family{"shmkv_tier_unwritten_objects", Type::kGauge, "L1 objects a lower tier does not hold a copy of yet."},
    Family{"shmkv_tier_unwritten_bytes", Type::kGauge, "Bytes of the L1 objects no lower tier holds yet."},
    Family{"shmkv_tier_errors_total", Type::kCounter, "Failures of the tier, by reason."},
    Family{"shmkv_tier_skipped_total", Type::kCounter,
           "Objects the tier would not take or serve, by reason (too_large: larger than the tier; "
           "ignored_too_large: found at start, larger than the pool)."},
    Family{"shmkv_tier_deletes_total", Type::kCounter, "Objects deleted from the tier (remove, clear, eviction)."},
    Family{"shmkv_tier_pending_deletes", Type::kGauge, "Deletes the tier has not carried out yet."},
    Family{"shmkv_tier_io_in_flight", Type::kGauge, "The tier's I/O operations in flight, by op (write, load)."},
    Family{"shmkv_tier_worker_restarts_total", Type::kCounter, "Restarts of the tier's worker process."},
    Family{"shmkv_tier_known_keys", Type::kGauge,
           "Keys the server knows a shared tier (L3) holds, learnt from lookups and writes."},
    Family{"shmkv_tier_redirects_total", Type::kCounter,
           "Redis Cluster redirections followed, by kind (moved: the slot moved; ask: during a migration)."},
    Family{"shmkv_tier_slot_map_refreshes_total", Type::kCounter, "Redis Cluster slot maps fetched."},
    Family{"shmkv_tier_reconnects_total", Type::kCounter, "Connections to a tier's nodes made again after a failure."},
    Family{"shmkv_reservations_outstanding", Type::kGauge,
           "Slots reserved by prepare_store (or a load) and not yet committed or aborted."},
    Family{"shmkv_pinned_objects", Type::kGauge, "Objects pinned by a reader or a lower tier's I/O."},
    Family{"shmkv_quarantined_slots", Type::kGauge,
           "Slots of expired reservations kept until their writer acknowledges or exits."},
    Family{"shmkv_quarantined_bytes", Type::kGauge, "Bytes of the quarantined slots."},
    Family{"shmkv_sessions", Type::kGauge, "Open client sessions."},
    Family{"shmkv_leases_reclaimed_total", Type::kCounter,
           "Reservations and pins the server took back, by cause (ttl: --reserve-ttl / --pin-ttl passed; "
           "disconnect: the client's connection closed)."},
    Family{"shmkv_rejected_frames_total", Type::kCounter, "Request frames refused before decoding, by reason."},
};

struct Target {
  std::string_view family;
  std::string_view label;  // extra "name=value" label text (pre-escaped), or empty
};

// "<tier>_<suffix>" names.
struct TierSuffix {
  std::string_view suffix;
  Target target;
};
constexpr std::array kTierSuffixes = {
    TierSuffix{"available", {"shmkv_tier_up", ""}},
    TierSuffix{"objects", {"shmkv_tier_objects", ""}},
    TierSuffix{"bytes", {"shmkv_tier_bytes", ""}},
    TierSuffix{"capacity", {"shmkv_tier_capacity_bytes", ""}},
    TierSuffix{"hits", {"shmkv_tier_hits_total", ""}},
    TierSuffix{"misses", {"shmkv_tier_misses_total", ""}},
    TierSuffix{"loads", {"shmkv_tier_loads_total", ""}},
    TierSuffix{"load_bytes", {"shmkv_tier_read_bytes_total", ""}},
    TierSuffix{"writes", {"shmkv_tier_writes_total", ""}},
    TierSuffix{"write_bytes", {"shmkv_tier_written_bytes_total", ""}},
    TierSuffix{"evictions", {"shmkv_tier_evictions_total", "reason=\"capacity\""}},
    TierSuffix{"evicted_bytes", {"shmkv_tier_evicted_bytes_total", ""}},
    TierSuffix{"evicted_dirty", {"shmkv_tier_evicted_unwritten_total", ""}},
    TierSuffix{"dirty_objects", {"shmkv_tier_unwritten_objects", ""}},
    TierSuffix{"dirty_bytes", {"shmkv_tier_unwritten_bytes", ""}},
    TierSuffix{"write_errors", {"shmkv_tier_errors_total", "reason=\"write\""}},
    TierSuffix{"read_errors", {"shmkv_tier_errors_total", "reason=\"read\""}},
    TierSuffix{"write_gave_up", {"shmkv_tier_errors_total", "reason=\"write_gave_up\""}},
    TierSuffix{"load_full", {"shmkv_tier_errors_total", "reason=\"no_room_in_l1\""}},
    TierSuffix{"worker_deaths", {"shmkv_tier_errors_total", "reason=\"worker_died\""}},
    TierSuffix{"skipped_too_large", {"shmkv_tier_skipped_total", "reason=\"too_large\""}},
    TierSuffix{"ignored_too_large", {"shmkv_tier_skipped_total", "reason=\"ignored_too_large\""}},
    TierSuffix{"deletes", {"shmkv_tier_deletes_total", ""}},
    TierSuffix{"pending_deletes", {"shmkv_tier_pending_deletes", ""}},
    TierSuffix{"writes_in_flight", {"shmkv_tier_io_in_flight", "op=\"write\""}},
    TierSuffix{"loads_in_flight", {"shmkv_tier_io_in_flight", "op=\"load\""}},
    TierSuffix{"worker_restarts", {"shmkv_tier_worker_restarts_total", ""}},
    // L3 (docs/l3-redis.md).
    TierSuffix{"write_skipped_exists", {"shmkv_tier_skipped_total", "reason=\"exists\""}},
    TierSuffix{"write_dropped", {"shmkv_tier_skipped_total", "reason=\"dropped\""}},
    TierSuffix{"miss_unavailable", {"shmkv_tier_errors_total", "reason=\"unavailable\""}},
    TierSuffix{"miss_corrupt", {"shmkv_tier_errors_total", "reason=\"corrupt_value\""}},
    TierSuffix{"miss_absent", {"shmkv_tier_errors_total", "reason=\"gone_before_load\""}},
    TierSuffix{"auth_errors", {"shmkv_tier_errors_total", "reason=\"auth\""}},
    TierSuffix{"config_errors", {"shmkv_tier_errors_total", "reason=\"config\""}},
    TierSuffix{"queue_bytes", {"shmkv_tier_unwritten_bytes", ""}},
    TierSuffix{"known_keys", {"shmkv_tier_known_keys", ""}},
    TierSuffix{"moved", {"shmkv_tier_redirects_total", "kind=\"moved\""}},
    TierSuffix{"ask", {"shmkv_tier_redirects_total", "kind=\"ask\""}},
    TierSuffix{"slot_refreshes", {"shmkv_tier_slot_map_refreshes_total", ""}},
    TierSuffix{"reconnects", {"shmkv_tier_reconnects_total", ""}},
};

// Names that are L1's although they carry no tier prefix (or another tier's: the write-behind
// counters are kept by L1, about L1's objects).
constexpr std::array<std::pair<std::string_view, std::string_view>, 13> kL1Aliases = {{
    {"objects", "l1_objects"},
    {"used_bytes", "l1_bytes"},
    {"pool_size", "l1_capacity"},
    {"lookup_hits", "l1_hits"},
    {"stores", "l1_writes"},
    {"retrieves", "l1_loads"},
    {"stored_bytes", "l1_write_bytes"},
    {"retrieved_bytes", "l1_load_bytes"},
    {"evictions", "l1_evictions"},
    {"evicted_bytes", "l1_evicted_bytes"},
    {"l2_dirty_objects", "l1_dirty_objects"},
    {"l2_dirty_bytes", "l1_dirty_bytes"},
    {"l2_evicted_dirty", "l1_evicted_dirty"},
}};

constexpr std::array<std::pair<std::string_view, Target>, 13> kServerNames = {{
    {"lookups", {"shmkv_lookups_total", ""}},
    {"lookup_keys", {"shmkv_lookup_keys_total", ""}},
    {"lookup_hit_keys", {"shmkv_lookup_hit_keys_total", ""}},
    {"reserved_objects", {"shmkv_reservations_outstanding", ""}},
    {"pinned_objects", {"shmkv_pinned_objects", ""}},
    {"quarantined_slots", {"shmkv_quarantined_slots", ""}},
    {"quarantined_bytes", {"shmkv_quarantined_bytes", ""}},
    {"sessions", {"shmkv_sessions", ""}},
    {"expired_leases", {"shmkv_leases_reclaimed_total", "cause=\"ttl\""}},
    {"leases_reclaimed_on_disconnect", {"shmkv_leases_reclaimed_total", "cause=\"disconnect\""}},
    {"rejected_frames", {"shmkv_rejected_frames_total", ""}},
    {"generation", {"", ""}},      // a label of shmkv_server_info
    {"uptime_seconds", {"", ""}},  // shmkv_start_time_seconds tells it
}};

// Samples of one family, in the order they were added; a series seen twice keeps the first.
class Output {
 public:
  void Add(std::string_view family, std::string labels, std::string value) {
    auto& f = samples_[std::string(family)];
    if (!seen_.insert(fmt::format("{}{{{}}}", family, labels)).second) return;
    f.push_back({std::string(family), std::move(labels), std::move(value)});
  }
  // Histogram series carry a suffix (_bucket, _sum, _count) on the family's name.
  void AddSuffixed(std::string_view family, std::string_view suffix, std::string labels, std::string value) {
    samples_[std::string(family)].push_back({fmt::format("{}{}", family, suffix), std::move(labels), std::move(value)});
  }
  void AddUntyped(std::string name, std::string help, std::string value) {
    untyped_.push_back({std::move(name), std::move(help), std::move(value)});
  }

  std::string Render() const {
    std::string out;
    auto body = [&](const std::vector<Sample>& samples) {
      for (const Sample& s : samples) {
        if (s.labels.empty()) {
          out += fmt::format("{} {}\n", s.name, s.value);
        } else {
          out += fmt::format("{}{{{}}} {}\n", s.name, s.labels, s.value);
        }
      }
    };
    for (const Family& f : kFamilies) {
      auto it = samples_.find(std::string(f.name));
      if (it == samples_.end() || it->second.empty()) continue;
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", f.name, f.help, f.name, TypeName(f.type));
      body(it->second);
    }
    for (const Untyped& u : untyped_) {
      out += fmt::format("# HELP {} {}\n# TYPE {} untyped\n{} {}\n", u.name, u.help, u.name, u.name, u.value);
    }
    return out;
  }

 private:
  struct Sample {
    std::string name;
    std::string labels;
    std::string value;
  };
  struct Untyped {
    std::string name;
    std::string help;
    std::string value;
  };
  std::map<std::string, std::vector<Sample>> samples_;
  std::set<std::string> seen_;
  std::vector<Untyped> untyped_;
};

std::string Labels(std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(b);
  if (b.empty()) return std::string(a);
  return fmt::format("{},{}", a, b);
}

std::string FormatDouble(double v) {
  // Shortest text that reads back as the same double (fmt's default); Prometheus accepts it.
  return fmt::format("{}", v);
}

std::optional<Target> TierTarget(std::string_view name, std::string* tier) {
  for (const auto& [from, to] : kL1Aliases) {
    if (name == from) {
      name = to;
      break;
    }
  }
  if (name.size() < 4 || name[0] != 'l' || name[2] != '_' || name[1] < '1' || name[1] > '3') return std::nullopt;
  const std::string_view suffix = name.substr(3);
  for (const TierSuffix& t : kTierSuffixes) {
    if (suffix == t.suffix) {
      *tier = std::string(name.substr(0, 2));
      return t.target;
    }
  }
  return std::nullopt;
}

}  // namespace

std::string EscapeLabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void AppendCounters(std::span<const std::pair<std::string_view, uint64_t>> in,
                    std::vector<std::pair<std::string, uint64_t>>& out) {
  out.reserve(out.size() + in.size());
  for (const auto& [name, value] : in) out.emplace_back(std::string(name), value);
}

HealthVerdict Judge(std::span<const ComponentHealth> health) {
  HealthVerdict v;
  for (const ComponentHealth& c : health) {
    if (c.up) continue;
    v.healthy = false;
    if (!v.reason.empty()) v.reason += "; ";
    v.reason += fmt::format("{}: {}", c.name, c.reason.empty() ? std::string("down") : c.reason);
  }
  return v;
}

std::string RenderPrometheus(const Snapshot& s) {
  Output out;
  if (!s.version.empty()) {
    out.Add("shmkv_build_info",
            fmt::format("version=\"{}\",protocol_min=\"{}\",protocol_max=\"{}\"", EscapeLabelValue(s.version),
                        s.protocol_min, s.protocol_max),
            "1");
  }
  if (!s.segment.empty() || s.generation != 0) {
    out.Add("shmkv_server_info",
            fmt::format("segment=\"{}\",generation=\"{}\"", EscapeLabelValue(s.segment), s.generation), "1");
  }
  if (s.start_time_seconds > 0) out.Add("shmkv_start_time_seconds", "", FormatDouble(s.start_time_seconds));
  if (!s.health.empty()) {
    out.Add("shmkv_healthy", "", Judge(s.health).healthy ? "1" : "0");
    for (const ComponentHealth& c : s.health) {
      // The pool is L1. A tier's own counter (<tier>_available) says the same as its health.
      std::string_view tier = c.name == "pool" ? std::string_view("l1") : std::string_view(c.name);
      if (tier == "l1" || tier == "l2" || tier == "l3") {
        out.Add("shmkv_tier_up", fmt::format("tier=\"{}\"", tier), c.up ? "1" : "0");
      }
    }
  }

  const RequestSnapshot& r = s.requests;
  for (const OpSnapshot& op : r.ops) {
    const std::string op_label = fmt::format("op=\"{}\"", EscapeLabelValue(op.op));
    for (size_t i = 0; i < op.outcomes.size() && i < r.outcome_names.size(); ++i) {
      out.Add("shmkv_requests_total", fmt::format("{},outcome=\"{}\"", op_label, EscapeLabelValue(r.outcome_names[i])),
              fmt::format("{}", op.outcomes[i]));
    }
  }
  for (const OpSnapshot& op : r.ops) {
    const std::string op_label = fmt::format("op=\"{}\"", EscapeLabelValue(op.op));
    uint64_t cumulative = 0;
    for (size_t i = 0; i < op.buckets.size(); ++i) {
      cumulative += op.buckets[i];
      const std::string le = i < r.bucket_bounds.size() ? FormatDouble(r.bucket_bounds[i]) : "+Inf";
      out.AddSuffixed("shmkv_request_duration_seconds", "_bucket", fmt::format("{},le=\"{}\"", op_label, le),
                      fmt::format("{}", cumulative));
    }
    out.AddSuffixed("shmkv_request_duration_seconds", "_sum", op_label, FormatDouble(op.sum_seconds));
    out.AddSuffixed("shmkv_request_duration_seconds", "_count", op_label, fmt::format("{}", op.count));
  }

  for (const auto& [name, value] : s.counters) {
    const std::string v = fmt::format("{}", value);
    std::string tier;
    if (auto t = TierTarget(name, &tier)) {
      out.Add(t->family, Labels(fmt::format("tier=\"{}\"", tier), t->label), v);
      continue;
    }
    const std::string_view counter = name;  // clang 14 cannot capture a structured binding
    auto it =
        std::find_if(kServerNames.begin(), kServerNames.end(), [counter](const auto& e) { return e.first == counter; });
    if (it != kServerNames.end()) {
      if (!it->second.family.empty()) out.Add(it->second.family, std::string(it->second.label), v);
      continue;
    }
    // Unknown: still exported. Stats names are [a-z0-9_]; anything else is replaced.
    std::string metric = "shmkv_stat_";
    for (char c : name) metric += (std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_') ? c : '_';
    out.AddUntyped(std::move(metric), fmt::format("The server's stats counter '{}' (not described yet).", name), v);
  }
  return out.Render();
}

}  // namespace shmkv::metrics
