// The server's figures in Prometheus text exposition format (version 0.0.4), and the /healthz
// verdict. Pure functions of a Snapshot: the exporter (metrics/exporter.h) renders what its
// snapshot callback returned, and tests render hand-made snapshots.
//
// Families (prefix shmkv_, each with HELP and TYPE, units in the names) are listed in
// docs/operations.md "Metrics". The stats counters (the name/value pairs of KvService::Stats and
// the `stats` operation) are mapped by name:
//  - L1's unprefixed names (objects, used_bytes, pool_size, lookup_hits, stores, retrieves,
//    evictions, evicted_bytes) and every "l1_"/"l2_"/"l3_" name become per-tier families with a
//    tier="l1"|"l2"|"l3" label (l2_dirty_*, l2_evicted_dirty: L1's objects not yet on L2, tier="l1");
//  - the server-wide names (lookups, lookup_keys, lookup_hit_keys, reserved_objects, ...) become
//    shmkv_* families of their own;
//  - a name the renderer does not know is still exported, as `shmkv_stat_<name>` (untyped), so a
//    counter added to the service is never silently lost; give it a family here.
//
// Thread-safety: the functions are pure; a Snapshot is a plain value.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "metrics/request_metrics.h"

namespace shmkv::metrics {

// One part whose state /healthz reports: "loop", "pool", or a tier by its short name ("l2").
struct ComponentHealth {
  std::string name;
  bool up = true;
  std::string reason;  // why it is down; empty while up
};

// Everything one scrape shows, copied out of the event loop (no views into loop data).
struct Snapshot {
  // The stats counters, as KvService::Stats produces them (copied: its names are views).
  std::vector<std::pair<std::string, uint64_t>> counters;
  RequestSnapshot requests;  // empty when the server keeps none
  std::vector<ComponentHealth> health;
  // Build and identity.
  std::string version;  // shmkv::kVersionString
  uint32_t protocol_min = 0;
  uint32_t protocol_max = 0;
  std::string segment;  // the pool's segment name
  uint64_t generation = 0;
  double start_time_seconds = 0;  // Unix time the server started; 0: not exported
};

// Copies KvService::Stats's output (pairs of a name view and a value) into Snapshot::counters.
void AppendCounters(std::span<const std::pair<std::string_view, uint64_t>> in,
                    std::vector<std::pair<std::string, uint64_t>>& out);

// The Prometheus text for `s` (Content-Type: text/plain; version=0.0.4).
std::string RenderPrometheus(const Snapshot& s);

// /healthz: healthy while every component is up. `reason` names each one down, "l2: <why>; ...".
struct HealthVerdict {
  bool healthy = true;
  std::string reason;
};
HealthVerdict Judge(std::span<const ComponentHealth> health);

// Prometheus label-value escaping: backslash, double quote and newline.
std::string EscapeLabelValue(std::string_view v);

}  // namespace shmkv::metrics
