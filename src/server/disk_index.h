// The L2 disk tier's bookkeeping (docs/l2-tier.md): how objects are named on disk, the scan that
// rebuilds the index after a restart, and DiskIndex, the tier's own size bound and LRU.
//
// A disk key is the 16-byte namespace digest followed by the client's raw key bytes (1..64). Its
// file is `<hex of the namespace digest>/<hex of the key>`: file names are never client text,
// and the hex is reversible, so the index can be rebuilt from the directory alone.
//
// Thread-safety: the free functions are thread-safe; a DiskIndex is owned by one thread.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/store.h"
#include "shmkv/status.h"

namespace shmkv {

inline constexpr size_t kNamespaceDigestBytes = 16;

// The first 16 bytes of SHA-256 over the canonical namespace text: stable across runs and hosts.
std::string NamespaceDigest(std::string_view canonical_namespace);
std::string HexEncode(std::string_view bytes);
// Lower-case hex only, even length; nullopt otherwise.
std::optional<std::string> HexDecode(std::string_view hex);

// "<32 hex>/<hex key>" relative to the disk directory.
std::string DiskPath(std::string_view disk_key);
// The inverse of DiskPath; nullopt for any name DiskPath cannot produce.
std::optional<std::string> ParseDiskPath(std::string_view relative_path);

struct ScannedFile {
  std::string disk_key;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
};
struct ScanResult {
  std::vector<ScannedFile> files;  // oldest modification first
  size_t temp_removed = 0;         // in-progress writes torn by a crash, deleted
  size_t ignored = 0;              // entries that are not ours (left alone)
};
// Reads the disk directory (creating it when missing): every object file, oldest first. Temp
// files of torn writes (".shmkv-tmp-*") are removed; symlinks and foreign names are ignored,
// and so is the lock file (kDiskLockFile).
inline constexpr std::string_view kDiskLockFile = ".shmkv.lock";
Result<ScanResult> ScanDiskDir(const std::string& dir);

// The disk tier's index: which objects are on disk, their sizes, their LRU order and the byte
// bound. Bytes of writes in flight are reserved so the bound holds once they land.
class DiskIndex {
 public:
  explicit DiskIndex(uint64_t capacity) : capacity_(capacity) {}

  bool Contains(std::string_view disk_key) const { return map_.find(disk_key) != map_.end(); }
  std::optional<uint64_t> Size(std::string_view disk_key) const;
  // Moves to the most-recently-used end.
  void Touch(std::string_view disk_key);
  // Adds (or replaces) an entry at the most-recently-used end; does not check the bound.
  void Insert(std::string_view disk_key, uint64_t size);
  bool Erase(std::string_view disk_key);

  enum class Reservation : uint8_t { kOk, kTooLarge, kWait };
  // Reserves `bytes` for a write, choosing least-recently-used entries to delete (appended to
  // `victims`, already erased from the index) until it fits. Busy entries are never chosen.
  // kTooLarge: `bytes` exceeds the capacity. kWait: writes in flight or busy entries are in
  // the way; try again after one of them finished. Both leave the index untouched.
  Reservation Reserve(uint64_t bytes, std::vector<std::string>* victims);
  // Returns a reservation (the write finished, landed or not).
  void Unreserve(uint64_t bytes);
  // Marks a key busy while I/O on its file is in flight (a READ): Reserve does not delete it.
  // Counted; the key need not be indexed.
  void MarkBusy(std::string_view disk_key);
  void UnmarkBusy(std::string_view disk_key);
  bool Busy(std::string_view disk_key) const { return busy_.find(disk_key) != busy_.end(); }
  // Entries to delete so that the indexed bytes fit the capacity (after a restart with a smaller
  // --disk-size); already erased.
  std::vector<std::string> TrimToCapacity();
  // Every disk key whose namespace digest is `ns_digest`.
  std::vector<std::string> KeysOfNamespace(std::string_view ns_digest) const;

  uint64_t objects() const { return map_.size(); }
  uint64_t bytes() const { return bytes_; }
  uint64_t reserved() const { return reserved_; }
  uint64_t capacity() const { return capacity_; }
  Status CheckInvariants() const;  // for tests

 private:
  struct Entry {
    uint64_t size = 0;
    std::list<const std::string*>::iterator lru;
  };
  uint64_t capacity_;
  uint64_t bytes_ = 0;
  uint64_t reserved_ = 0;
  KeyMap<Entry> map_;
  KeyMap<uint32_t> busy_;              // disk key -> I/O operations in flight on its file
  std::list<const std::string*> lru_;  // front = least recently used
};

}  // namespace shmkv
