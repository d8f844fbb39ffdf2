#include "server/disk_index.h"

#include <openssl/sha.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

#include <fmt/format.h>

#include "common/check.h"

namespace shmkv {

namespace fs = std::filesystem;

namespace {
constexpr std::string_view kTempPrefix = ".shmkv-tmp-";  // the file worker's in-progress writes
constexpr size_t kMaxKeyBytes = 64;
}  // namespace

std::string NamespaceDigest(std::string_view canonical_namespace) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(canonical_namespace.data()), canonical_namespace.size(), md);
  return std::string(reinterpret_cast<const char*>(md), kNamespaceDigestBytes);
}

std::string HexEncode(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) {
    const auto u = static_cast<unsigned char>(c);
    out.push_back(kDigits[u >> 4]);
    out.push_back(kDigits[u & 15]);
  }
  return out;
}

std::optional<std::string> HexDecode(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi << 4 | lo));
  }
  return out;
}

std::string DiskPath(std::string_view disk_key) {
  return HexEncode(disk_key.substr(0, kNamespaceDigestBytes)) + "/" + HexEncode(disk_key.substr(kNamespaceDigestBytes));
}

std::optional<std::string> ParseDiskPath(std::string_view relative_path) {
  const size_t slash = relative_path.find('/');
  if (slash != kNamespaceDigestBytes * 2) return std::nullopt;
  const std::string_view key_hex = relative_path.substr(slash + 1);
  if (key_hex.empty() || key_hex.size() > kMaxKeyBytes * 2) return std::nullopt;
  auto ns = HexDecode(relative_path.substr(0, slash));
  auto key = HexDecode(key_hex);
  if (!ns || !key) return std::nullopt;
  return *ns + *key;
}

std::string DiskPath(const DiskFile& f) {
  std::string path = DiskPath(f.disk_key);
  if (f.padded()) {
    // Appended piece by piece: `"." + std::to_string(...)` trips GCC 12's -Wrestrict false
    // positive at -O3 (docs/reliability.md).
    path += '.';
    path += std::to_string(f.length);
  }
  return path;
}

std::optional<ParsedDiskPath> ParseDiskFilePath(std::string_view relative_path) {
  const size_t dot = relative_path.find('.');
  if (dot == std::string_view::npos) {
    auto key = ParseDiskPath(relative_path);
    if (!key) return std::nullopt;
    return ParsedDiskPath{std::move(*key), 0};
  }
  const std::string_view digits = relative_path.substr(dot + 1);
  // Canonical decimal only (what DiskPath writes): no sign, no leading zero, at most 19 digits.
  if (digits.empty() || digits.size() > 19 || digits[0] == '0' ||
      digits.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  uint64_t length = 0;
  for (char c : digits) length = length * 10 + static_cast<uint64_t>(c - '0');
  if (length % kDiskBlock == 0) return std::nullopt;  // aligned lengths are never padded
  auto key = ParseDiskPath(relative_path.substr(0, dot));
  if (!key) return std::nullopt;
  return ParsedDiskPath{std::move(*key), length};
}

Result<ScanResult> ScanDiskDir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::IoError(fmt::format("disk dir '{}': cannot create it: {}", dir, ec.message()));
  ScanResult out;
  auto remove_temp = [&](const fs::path& p) {
    std::error_code rec;
    if (fs::remove(p, rec)) out.temp_removed++;
  };
  fs::directory_iterator top(dir, ec);
  if (ec) return Status::IoError(fmt::format("disk dir '{}': cannot list it: {}", dir, ec.message()));
  // increment(ec), not ++: a readdir error is a Status, not an exception out of the server's start.
  // A failed increment leaves the iterator at the end, so the error is checked after each one.
  std::error_code top_ec;
  for (; top != fs::directory_iterator(); top.increment(top_ec)) {
    if (top_ec) break;
    const fs::directory_entry& ns_entry = *top;
    const std::string ns_name = ns_entry.path().filename().string();
    const fs::file_status ns_st = ns_entry.symlink_status(ec);
    if (ns_name == kDiskLockFile) continue;
    if (ns_name.starts_with(kTempPrefix) && fs::is_regular_file(ns_st)) {
      remove_temp(ns_entry.path());
      continue;
    }
    if (!fs::is_directory(ns_st) || ns_name.size() != kNamespaceDigestBytes * 2 || !HexDecode(ns_name)) {
      out.ignored++;
      continue;
    }
    fs::directory_iterator inner(ns_entry.path(), ec);
    if (ec) return Status::IoError(fmt::format("disk dir '{}': cannot list {}: {}", dir, ns_name, ec.message()));
    std::error_code inner_ec;
    for (; inner != fs::directory_iterator(); inner.increment(inner_ec)) {
      if (inner_ec) break;
      const fs::directory_entry& f = *inner;
      const std::string name = f.path().filename().string();
      const fs::file_status st = f.symlink_status(ec);
      if (!fs::is_regular_file(st)) {
        out.ignored++;
        continue;
      }
      if (name.starts_with(kTempPrefix)) {
        remove_temp(f.path());
        continue;
      }
      auto parsed = ParseDiskFilePath(ns_name + "/" + name);
      struct stat sb {};
      if (!parsed || ::lstat(f.path().c_str(), &sb) != 0 || sb.st_size <= 0) {
        out.ignored++;
        continue;
      }
      const auto file_bytes = static_cast<uint64_t>(sb.st_size);
      // A padded file is exactly its length rounded up; anything else is not one we wrote.
      if (parsed->padded_length != 0 && AlignUp(parsed->padded_length) != file_bytes) {
        out.ignored++;
        continue;
      }
      const uint64_t length = parsed->padded_length != 0 ? parsed->padded_length : file_bytes;
      out.files.push_back({std::move(parsed->disk_key), length, file_bytes,
                           int64_t{sb.st_mtim.tv_sec} * 1'000'000'000 + sb.st_mtim.tv_nsec});
    }
    if (inner_ec) {
      return Status::IoError(fmt::format("disk dir '{}': cannot list {}: {}", dir, ns_name, inner_ec.message()));
    }
  }
  if (top_ec) return Status::IoError(fmt::format("disk dir '{}': cannot list it: {}", dir, top_ec.message()));
  std::stable_sort(out.files.begin(), out.files.end(),
                   [](const ScannedFile& a, const ScannedFile& b) { return a.mtime_ns < b.mtime_ns; });
  // One file per key: the newest wins (files are oldest first, so the last one seen).
  KeyMap<size_t> newest;
  for (size_t i = 0; i < out.files.size(); ++i) newest[out.files[i].disk_key] = i;
  if (newest.size() != out.files.size()) {
    std::vector<ScannedFile> kept;
    kept.reserve(newest.size());
    for (size_t i = 0; i < out.files.size(); ++i) {
      if (newest.find(out.files[i].disk_key)->second == i) {
        kept.push_back(std::move(out.files[i]));
        continue;
      }
      std::error_code rec;
      if (fs::remove(fs::path(dir) / DiskPath(out.files[i].file()), rec)) out.superseded_removed++;
    }
    out.files = std::move(kept);
  }
  return out;
}

std::optional<uint64_t> DiskIndex::Size(std::string_view disk_key) const {
  auto it = map_.find(disk_key);
  if (it == map_.end()) return std::nullopt;
  return it->second.size;
}

void DiskIndex::Touch(std::string_view disk_key) {
  auto it = map_.find(disk_key);
  if (it != map_.end()) lru_.splice(lru_.end(), lru_, it->second.lru);
}

std::optional<DiskFile> DiskIndex::Find(std::string_view disk_key) const {
  auto it = map_.find(disk_key);
  if (it == map_.end()) return std::nullopt;
  return DiskFile{it->first, it->second.size, it->second.file_bytes};
}

void DiskIndex::Insert(std::string_view disk_key, uint64_t size, uint64_t file_bytes) {
  Erase(disk_key);
  if (file_bytes == 0) file_bytes = size;
  auto [it, inserted] = map_.emplace(std::string(disk_key), Entry{size, file_bytes, {}});
  it->second.lru = lru_.insert(lru_.end(), &it->first);
  bytes_ += file_bytes;
}

std::optional<DiskFile> DiskIndex::Erase(std::string_view disk_key) {
  auto it = map_.find(disk_key);
  if (it == map_.end()) return std::nullopt;
  DiskFile f{it->first, it->second.size, it->second.file_bytes};
  bytes_ -= it->second.file_bytes;
  lru_.erase(it->second.lru);
  map_.erase(it);
  return f;
}

DiskIndex::Reservation DiskIndex::Reserve(uint64_t bytes, std::vector<DiskFile>* victims) {
  if (bytes > capacity_) return Reservation::kTooLarge;
  // Writes in flight alone are in the way: deleting files would not make room.
  if (reserved_ + bytes > capacity_) return Reservation::kWait;
  const uint64_t total = bytes_ + reserved_ + bytes;
  const uint64_t need = total > capacity_ ? total - capacity_ : 0;
  // Choose first, erase after: when the choice cannot make room, nothing is dropped.
  std::vector<const std::string*> chosen;
  uint64_t freed = 0;
  for (auto it = lru_.begin(); it != lru_.end() && freed < need; ++it) {
    if (Busy(**it)) continue;
    chosen.push_back(*it);
    freed += map_.find(**it)->second.file_bytes;
  }
  if (freed < need) return Reservation::kWait;
  for (const std::string* key : chosen) {
    const std::string victim = *key;  // Erase frees the string *key points to
    victims->push_back(*Erase(victim));
  }
  reserved_ += bytes;
  return Reservation::kOk;
}

void DiskIndex::Unreserve(uint64_t bytes) {
  SHMKV_DCHECK(bytes <= reserved_);
  reserved_ -= std::min(reserved_, bytes);
}

void DiskIndex::MarkBusy(std::string_view disk_key) {
  auto it = busy_.find(disk_key);
  if (it == busy_.end()) {
    busy_.emplace(std::string(disk_key), 1);
  } else {
    it->second++;
  }
}

void DiskIndex::UnmarkBusy(std::string_view disk_key) {
  auto it = busy_.find(disk_key);
  SHMKV_DCHECK(it != busy_.end());
  if (it != busy_.end() && --it->second == 0) busy_.erase(it);
}

std::vector<DiskFile> DiskIndex::TrimToCapacity() {
  std::vector<DiskFile> victims;
  while (bytes_ > capacity_ && !lru_.empty()) {
    const std::string victim = *lru_.front();
    victims.push_back(*Erase(victim));
  }
  return victims;
}

std::vector<std::string> DiskIndex::KeysOfNamespace(std::string_view ns_digest) const {
  std::vector<std::string> out;
  for (const auto& [key, e] : map_) {
    if (std::string_view(key).substr(0, kNamespaceDigestBytes) == ns_digest) out.push_back(key);
  }
  return out;
}

Status DiskIndex::CheckInvariants() const {
  if (lru_.size() != map_.size()) return Status::Internal("disk index: LRU and map sizes differ");
  uint64_t sum = 0;
  for (const auto& [key, e] : map_) {
    if (e.file_bytes < e.size) return Status::Internal("disk index: a file smaller than its object");
    sum += e.file_bytes;
  }
  if (sum != bytes_) return Status::Internal(fmt::format("disk index: {} bytes counted, {} indexed", bytes_, sum));
  return Status::Ok();
}

}  // namespace shmkv
