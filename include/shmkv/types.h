// Value types that the server, the C++ client and the Python binding share: what a namespace is,
// what a slot request can answer, what a remove reports. Their wire spelling (docs/protocol.md)
// is given by the *Name functions, the one place it is written.
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace shmkv {

// What makes the bytes of a chunk mean something: keys of different namespaces never collide.
struct Namespace {
  std::string model;        // model name
  uint32_t world_size = 1;  // tensor-parallel world size
  uint32_t rank = 0;        // this worker's rank, < world_size
  std::string dtype;        // KV dtype, e.g. "bfloat16"
  std::string layout;       // KV layout, e.g. "NHD"
  std::string salt;         // optional tenant salt
};

// The answer for one key of prepare_store or prepare_retrieve.
enum class SlotStatus : uint8_t {
  kOk,       // a slot was handed out (store: reserved for this client; retrieve: pinned)
  kExists,   // store: the key is already committed (in L1 or a lower tier)
  kBusy,     // store: another writer holds the key; remove: readers hold it
  kFull,     // store: no room even after evicting everything evictable
  kMissing,  // retrieve/remove: no committed object under the key
};

constexpr std::string_view SlotStatusName(SlotStatus s) {
  switch (s) {
    case SlotStatus::kOk: return "ok";
    case SlotStatus::kExists: return "exists";
    case SlotStatus::kBusy: return "busy";
    case SlotStatus::kFull: return "full";
    case SlotStatus::kMissing: return "missing";
  }
  return "unknown";
}

// Where one key's object lies in the pool, as prepare_store and prepare_retrieve answer.
struct SlotResult {
  SlotStatus status = SlotStatus::kMissing;
  uint64_t offset = 0;  // into the pool; meaningful only when status is kOk
  uint64_t length = 0;  // bytes of the object
};

// The answer for one key of remove.
enum class RemoveOutcome : uint8_t {
  kRemoved,  // the object was dropped from every tier that held it
  kMissing,  // no tier held it
  kBusy,     // readers hold it in L1: nothing was dropped
};

constexpr std::string_view RemoveOutcomeName(RemoveOutcome o) {
  switch (o) {
    case RemoveOutcome::kRemoved: return "removed";
    case RemoveOutcome::kMissing: return "missing";
    case RemoveOutcome::kBusy: return "busy";
  }
  return "unknown";
}

// A server's counters by name (docs/protocol.md, "stats"); which names appear depends on the
// tiers the server runs.
using StatsMap = std::map<std::string, uint64_t>;

}  // namespace shmkv
