// The L2 disk tier's bookkeeping (docs/l2-tier.md): how objects are named on disk, the scan that
// rebuilds the index after a restart, and DiskIndex, the tier's own size bound and LRU.
//
// A disk key is the 16-byte namespace digest followed by the client's raw key bytes (1..64). Its
// file is `<hex of the namespace digest>/<hex of the key>`: file names are never client text,
// and the hex is reversible, so the index can be rebuilt from the directory alone.
//
// Padding (O_DIRECT, docs/l2-tier.md "Files"): an object whose length is not a multiple of 4096
// is written padded with zeros to the next multiple, under `<hex of the key>.<length>` (length in
// decimal): the name carries the true length, so a restart recovers it without reading the file.
// A file without the suffix holds exactly its size in bytes (objects of aligned length, files of
// buffered I/O and files written before padding existed).
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

// The alignment O_DIRECT needs; padded files are multiples of it.
inline constexpr uint64_t kDiskBlock = 4096;
inline constexpr uint64_t AlignUp(uint64_t n, uint64_t a = kDiskBlock) {
  return (n + a - 1) / a * a;
}

// "<32 hex>/<hex key>" relative to the disk directory.
std::string DiskPath(std::string_view disk_key);
// The inverse of DiskPath; nullopt for any name DiskPath cannot produce.
std::optional<std::string> ParseDiskPath(std::string_view relative_path);

// One object file: its key, the object's true length and the file's size (AlignUp(length) when
// padded, else length).
struct DiskFile {
  std::string disk_key;
  uint64_t length = 0;
  uint64_t file_bytes = 0;
  bool padded() const { return file_bytes != length; }
};
// DiskPath, with ".<length>" appended for a padded file.
std::string DiskPath(const DiskFile& f);
// The inverse for file names: "<32 hex>/<hex key>" (unpadded, the file's size is the length) or
// "<32 hex>/<hex key>.<length>" (padded: length in canonical decimal, not a multiple of
// kDiskBlock). Gives the key and the padded length (0 when unpadded); nullopt for other names.
struct ParsedDiskPath {
  std::string disk_key;
  uint64_t padded_length = 0;
};
std::optional<ParsedDiskPath> ParseDiskFilePath(std::string_view relative_path);

struct ScannedFile {
  std::string disk_key;
  uint64_t size = 0;        // the object's true length
  uint64_t file_bytes = 0;  // the file's size (padding included)
  int64_t mtime_ns = 0;
  DiskFile file() const { return {disk_key, size, file_bytes}; }
};
struct ScanResult {
  std::vector<ScannedFile> files;  // oldest modification first, one per key
  size_t temp_removed = 0;         // in-progress writes torn by a crash, deleted
  size_t superseded_removed = 0;   // older files of a key that has a newer file, deleted
  size_t ignored = 0;              // entries that are not ours (left alone)
};
// Reads the disk directory (creating it when missing): every object file, oldest first. Temp
// files of torn writes (".shmkv-tmp-*") are removed; symlinks and foreign names are ignored,
// and so is the lock file (kDiskLockFile). A padded file whose size is not AlignUp(length) is
// ignored (not ours). When a key has two files (padded and not, left by a crash between a
// rewrite and the delete of the old name), the newer is kept and the older deleted.
inline constexpr std::string_view kDiskLockFile = ".shmkv.lock";
Result<ScanResult> ScanDiskDir(const std::string& dir);

// The disk tier's index: which objects are on disk, their sizes, their LRU order and the byte
// bound. Bytes of writes in flight are reserved so the bound holds once they land.
class DiskIndex {
 public:
  explicit DiskIndex(uint64_t capacity) : capacity_(capacity) {}

  bool Contains(std::string_view disk_key) const { return map_.find(disk_key) != map_.end(); }
  // The object's true length.
  std::optional<uint64_t> Size(std::string_view disk_key) const;
  std::optional<DiskFile> Find(std::string_view disk_key) const;
  // Moves to the most-recently-used end.
  void Touch(std::string_view disk_key);
  // Adds (or replaces) an entry at the most-recently-used end; does not check the bound.
  // `file_bytes` (0: = size) is what the file takes on disk and what the bound counts.
  void Insert(std::string_view disk_key, uint64_t size, uint64_t file_bytes = 0);
  // The erased entry (to name its file), nullopt when there was none.
  std::optional<DiskFile> Erase(std::string_view disk_key);

  enum class Reservation : uint8_t { kOk, kTooLarge, kWait };
  // Reserves `bytes` (file bytes) for a write, choosing least-recently-used entries to delete
  // (appended to `victims`, already erased from the index) until it fits. Busy entries are never chosen.
  // kTooLarge: `bytes` exceeds the capacity. kWait: writes in flight or busy entries are in
  // the way; try again after one of them finished. Both leave the index untouched.
  Reservation Reserve(uint64_t bytes, std::vector<DiskFile>* victims);
  // Returns a reservation (the write finished, landed or not).
  void Unreserve(uint64_t bytes);
  // Marks a key busy while I/O on its file is in flight (a READ): Reserve does not delete it.
  // Counted; the key need not be indexed.
  void MarkBusy(std::string_view disk_key);
  void UnmarkBusy(std::string_view disk_key);
  bool Busy(std::string_view disk_key) const { return busy_.find(disk_key) != busy_.end(); }
  // Entries to delete so that the indexed bytes fit the capacity (after a restart with a smaller
  // --disk-size); already erased.
  std::vector<DiskFile> TrimToCapacity();
  // Every disk key whose namespace digest is `ns_digest`.
  std::vector<std::string> KeysOfNamespace(std::string_view ns_digest) const;

  uint64_t objects() const { return map_.size(); }
  uint64_t bytes() const { return bytes_; }  // file bytes (padding included)
  uint64_t reserved() const { return reserved_; }
  uint64_t capacity() const { return capacity_; }
  Status CheckInvariants() const;  // for tests

 private:
  struct Entry {
    uint64_t size = 0;        // the object's true length
    uint64_t file_bytes = 0;  // counted against the bound
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
