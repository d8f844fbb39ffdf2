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
      auto key = ParseDiskPath(ns_name + "/" + name);
      struct stat sb {};
      if (!key || ::lstat(f.path().c_str(), &sb) != 0 || sb.st_size <= 0) {
        out.ignored++;
        continue;
      }
      out.files.push_back({std::move(*key), static_cast<uint64_t>(sb.st_size),
                           int64_t{sb.st_mtim.tv_sec} * 1'000'000'000 + sb.st_mtim.tv_nsec});
    }
    if (inner_ec) {
      return Status::IoError(fmt::format("disk dir '{}': cannot list {}: {}", dir, ns_name, inner_ec.message()));
    }
  }
  if (top_ec) return Status::IoError(fmt::format("disk dir '{}': cannot list it: {}", dir, top_ec.message()));
  std::stable_sort(out.files.begin(), out.files.end(),
                   [](const ScannedFile& a, const ScannedFile& b) { return a.mtime_ns < b.mtime_ns; });
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

void DiskIndex::Insert(std::string_view disk_key, uint64_t size) {
  Erase(disk_key);
  auto [it, inserted] = map_.emplace(std::string(disk_key), Entry{size, {}});
  it->second.lru = lru_.insert(lru_.end(), &it->first);
  bytes_ += size;
}

bool DiskIndex::Erase(std::string_view disk_key) {
  auto it = map_.find(disk_key);
  if (it == map_.end()) return false;
  bytes_ -= it->second.size;
  lru_.erase(it->second.lru);
  map_.erase(it);
  return true;
}

DiskIndex::Reservation DiskIndex::Reserve(uint64_t bytes, std::vector<std::string>* victims) {
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
    freed += map_.find(**it)->second.size;
  }
  if (freed < need) return Reservation::kWait;
  for (const std::string* key : chosen) {
    std::string victim = *key;
    Erase(victim);
    victims->push_back(std::move(victim));
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

std::vector<std::string> DiskIndex::TrimToCapacity() {
  std::vector<std::string> victims;
  while (bytes_ > capacity_ && !lru_.empty()) {
    std::string victim = *lru_.front();
    Erase(victim);
    victims.push_back(std::move(victim));
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
  for (const auto& [key, e] : map_) sum += e.size;
  if (sum != bytes_) return Status::Internal(fmt::format("disk index: {} bytes counted, {} indexed", bytes_, sum));
  return Status::Ok();
}

}  // namespace shmkv
