// The L2 tier's naming, directory scan and DiskIndex (src/server/disk_index.h), on real files.
#include "server/disk_index.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace shmkv {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "shmkv-disk-index-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void WriteFile(const fs::path& p, size_t bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << std::string(bytes, 'x');
}

std::string Ns(std::string_view text) {
  return NamespaceDigest(text);
}

std::vector<std::string> Keys(const std::vector<DiskFile>& files) {
  std::vector<std::string> out;
  for (const DiskFile& f : files) out.push_back(f.disk_key);
  return out;
}

TEST(DiskNaming, PathsAreHexOfDigestsNeverClientText) {
  const std::string dk = Ns("model=m;") + std::string("../\x00/etc", 8);
  const std::string path = DiskPath(dk);
  EXPECT_EQ(path, HexEncode(Ns("model=m;")) + "/2e2e2f002f657463");
  EXPECT_EQ(path.find(".."), std::string::npos);
  EXPECT_EQ(path.size(), 32u + 1 + 16);
  auto back = ParseDiskPath(path);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, dk);
}

TEST(DiskNaming, NamespaceDigestIsStableAndDistinct) {
  EXPECT_EQ(Ns("a"), Ns("a"));
  EXPECT_NE(Ns("a"), Ns("b"));
  EXPECT_EQ(Ns("a").size(), kNamespaceDigestBytes);
  // SHA-256("abc") begins ba7816bf 8f01cfea 414140de 5dae2223: stable across hosts and runs.
  EXPECT_EQ(HexEncode(Ns("abc")), "ba7816bf8f01cfea414140de5dae2223");
}

TEST(DiskNaming, ParseRejectsEverythingDiskPathCannotProduce) {
  const std::string ns = HexEncode(Ns("x"));
  EXPECT_FALSE(ParseDiskPath(ns + "/").has_value());                          // empty key
  EXPECT_FALSE(ParseDiskPath(ns + "/abc").has_value());                       // odd length
  EXPECT_FALSE(ParseDiskPath(ns + "/ABCD").has_value());                      // upper case
  EXPECT_FALSE(ParseDiskPath(ns + "/zz").has_value());                        // not hex
  EXPECT_FALSE(ParseDiskPath(ns + "/" + std::string(130, 'a')).has_value());  // key over 64 bytes
  EXPECT_FALSE(ParseDiskPath(ns.substr(2) + "/ab").has_value());              // short namespace
  EXPECT_FALSE(ParseDiskPath(ns + "/ab/cd").has_value());
  EXPECT_FALSE(ParseDiskPath(ns + "/.shmkv-tmp-1234").has_value());
  EXPECT_TRUE(ParseDiskPath(ns + "/" + std::string(128, 'a')).has_value());
}

TEST(DiskScan, FindsObjectsOldestFirstRemovesTornTempsIgnoresForeign) {
  TempDir dir;
  const std::string ns = HexEncode(Ns("n"));
  WriteFile(fs::path(dir.path()) / ns / "6f6c64", 10);  // "old"
  WriteFile(fs::path(dir.path()) / ns / "6e6577", 20);  // "new"
  // Explicit modification times: the LRU order must come from them, not from readdir order.
  struct timespec times[2] = {{0, UTIME_OMIT}, {1000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (fs::path(dir.path()) / ns / "6f6c64").c_str(), times, 0), 0);
  times[1] = {2000, 0};
  ASSERT_EQ(::utimensat(AT_FDCWD, (fs::path(dir.path()) / ns / "6e6577").c_str(), times, 0), 0);
  WriteFile(fs::path(dir.path()) / ns / ".shmkv-tmp-0123456789abcdef", 5);
  WriteFile(fs::path(dir.path()) / ".shmkv-tmp-00", 5);
  WriteFile(fs::path(dir.path()) / ns / "README", 5);  // not hex
  WriteFile(fs::path(dir.path()) / ns / "6162", 0);    // empty: never a valid object
  WriteFile(fs::path(dir.path()) / "notanamespace" / "6162", 5);
  fs::create_symlink("/etc/passwd", fs::path(dir.path()) / ns / "6c696e6b");

  auto scan = ScanDiskDir(dir.path());
  ASSERT_TRUE(scan.ok()) << scan.status().ToString();
  ASSERT_EQ(scan->files.size(), 2u);
  EXPECT_EQ(scan->files[0].disk_key, Ns("n") + "old");
  EXPECT_EQ(scan->files[0].size, 10u);
  EXPECT_EQ(scan->files[1].disk_key, Ns("n") + "new");
  EXPECT_EQ(scan->temp_removed, 2u);
  EXPECT_EQ(scan->ignored, 4u);  // README, empty file, symlink, foreign folder
  EXPECT_FALSE(fs::exists(fs::path(dir.path()) / ns / ".shmkv-tmp-0123456789abcdef"));
  EXPECT_TRUE(fs::exists(fs::path(dir.path()) / ns / "README"));
  EXPECT_TRUE(fs::is_symlink(fs::path(dir.path()) / ns / "6c696e6b"));
}

// Padded files (O_DIRECT) carry the true length in their name; unpadded ones (written before
// padding existed, or with buffered I/O) are exactly the object.
TEST(DiskNaming, PaddedFilesCarryTheirTrueLength) {
  const std::string key = Ns("n") + "k";
  const DiskFile plain{key, 5000, 5000}, padded{key, 5000, 8192}, aligned{key, 8192, 8192};
  EXPECT_FALSE(plain.padded());
  EXPECT_TRUE(padded.padded());
  EXPECT_EQ(DiskPath(plain), DiskPath(key));
  EXPECT_EQ(DiskPath(aligned), DiskPath(key));
  EXPECT_EQ(DiskPath(padded), DiskPath(key) + ".5000");
  auto back = ParseDiskFilePath(DiskPath(padded));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->disk_key, key);
  EXPECT_EQ(back->padded_length, 5000u);
  auto old = ParseDiskFilePath(DiskPath(key));
  ASSERT_TRUE(old.has_value());
  EXPECT_EQ(old->disk_key, key);
  EXPECT_EQ(old->padded_length, 0u);
  // Only canonical names DiskPath writes.
  for (const char* bad :
       {".", ".0", ".05000", ".4096", ".8192", ".-1", ".+5", ".5000.1", ".50a", ".99999999999999999999"}) {
    EXPECT_FALSE(ParseDiskFilePath(DiskPath(key) + bad).has_value()) << bad;
  }
  EXPECT_FALSE(ParseDiskPath(DiskPath(padded)).has_value());  // the key-only parser stays strict
  EXPECT_EQ(AlignUp(1), 4096u);
  EXPECT_EQ(AlignUp(4096), 4096u);
  EXPECT_EQ(AlignUp(4097), 8192u);
}

TEST(DiskScan, PaddedAndOldUnpaddedFilesGiveTheirTrueLengths) {
  TempDir dir;
  const std::string ns = HexEncode(Ns("n"));
  const fs::path d = fs::path(dir.path()) / ns;
  WriteFile(d / "6f6c64", 5000);        // "old": unpadded, written before padding existed
  WriteFile(d / "706164.5000", 8192);   // "pad": 5000 bytes padded to 8192
  WriteFile(d / "616c69", 8192);        // "ali": aligned, never padded
  WriteFile(d / "626164.5000", 5000);   // "bad": a padded name whose size does not match
  WriteFile(d / "626967.5000", 12288);  // "big": too long for its name
  auto scan = ScanDiskDir(dir.path());
  ASSERT_TRUE(scan.ok()) << scan.status().ToString();
  std::map<std::string, std::pair<uint64_t, uint64_t>> got;
  for (const ScannedFile& f : scan->files) got[f.disk_key] = {f.size, f.file_bytes};
  EXPECT_EQ(got.size(), 3u);
  EXPECT_EQ(got[Ns("n") + "old"], (std::pair<uint64_t, uint64_t>{5000, 5000}));
  EXPECT_EQ(got[Ns("n") + "pad"], (std::pair<uint64_t, uint64_t>{5000, 8192}));
  EXPECT_EQ(got[Ns("n") + "ali"], (std::pair<uint64_t, uint64_t>{8192, 8192}));
  EXPECT_EQ(scan->ignored, 2u);
  EXPECT_TRUE(fs::exists(d / "626164.5000"));  // not ours: left alone
}

// A crash between the write of a key's new file and the delete of its old name leaves both: the
// newer one wins, the older is deleted.
TEST(DiskScan, TwoFilesOfOneKeyKeepTheNewer) {
  TempDir dir;
  const fs::path d = fs::path(dir.path()) / HexEncode(Ns("n"));
  WriteFile(d / "6b", 5000);
  WriteFile(d / "6b.6000", 8192);
  struct timespec times[2] = {{0, UTIME_OMIT}, {1000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (d / "6b.6000").c_str(), times, 0), 0);  // the padded one is older
  times[1] = {2000, 0};
  ASSERT_EQ(::utimensat(AT_FDCWD, (d / "6b").c_str(), times, 0), 0);
  auto scan = ScanDiskDir(dir.path());
  ASSERT_TRUE(scan.ok()) << scan.status().ToString();
  ASSERT_EQ(scan->files.size(), 1u);
  EXPECT_EQ(scan->files[0].disk_key, Ns("n") + "k");
  EXPECT_EQ(scan->files[0].size, 5000u);
  EXPECT_EQ(scan->superseded_removed, 1u);
  EXPECT_FALSE(fs::exists(d / "6b.6000"));
  EXPECT_TRUE(fs::exists(d / "6b"));
}

TEST(DiskIndex, PaddedFilesCountTheirFileBytesAgainstTheBound) {
  DiskIndex idx(16384);
  idx.Insert("a", 5000, 8192);
  idx.Insert("b", 100);
  EXPECT_EQ(idx.bytes(), 8192u + 100);
  EXPECT_EQ(*idx.Size("a"), 5000u);
  auto f = idx.Find("a");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->file_bytes, 8192u);
  std::vector<DiskFile> victims;
  ASSERT_EQ(idx.Reserve(8192, &victims), DiskIndex::Reservation::kOk);  // 8292 + 8192 > 16384: a goes
  ASSERT_EQ(victims.size(), 1u);
  EXPECT_EQ(victims[0].disk_key, "a");
  EXPECT_TRUE(victims[0].padded());
  EXPECT_EQ(victims[0].length, 5000u);
  EXPECT_EQ(idx.bytes(), 100u);
  EXPECT_TRUE(idx.CheckInvariants().ok());
}

TEST(DiskScan, CreatesAMissingDirectoryAndReportsAnUnusableOne) {
  TempDir dir;
  auto fresh = ScanDiskDir(dir.path() + "/a/b");
  ASSERT_TRUE(fresh.ok());
  EXPECT_TRUE(fresh->files.empty());
  EXPECT_TRUE(fs::is_directory(dir.path() + "/a/b"));
  WriteFile(fs::path(dir.path()) / "file", 1);
  auto bad = ScanDiskDir(dir.path() + "/file");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("/file"), std::string::npos);
}

TEST(DiskIndex, ReserveEvictsLeastRecentlyUsedToStayWithinCapacity) {
  DiskIndex idx(100);
  idx.Insert("a", 40);
  idx.Insert("b", 40);
  idx.Touch("a");  // b is now the least recently used
  std::vector<DiskFile> victims;
  ASSERT_EQ(idx.Reserve(30, &victims), DiskIndex::Reservation::kOk);
  EXPECT_EQ(Keys(victims), (std::vector<std::string>{"b"}));
  EXPECT_FALSE(idx.Contains("b"));
  idx.Unreserve(30);
  idx.Insert("c", 30);
  EXPECT_EQ(idx.bytes(), 70u);
  EXPECT_EQ(idx.objects(), 2u);
  EXPECT_TRUE(idx.CheckInvariants().ok());
}

TEST(DiskIndex, TooLargeAndWaitingForWritesInFlight) {
  DiskIndex idx(100);
  std::vector<DiskFile> victims;
  EXPECT_EQ(idx.Reserve(101, &victims), DiskIndex::Reservation::kTooLarge);
  ASSERT_EQ(idx.Reserve(60, &victims), DiskIndex::Reservation::kOk);
  // Only the other write's reservation is in the way: nothing to delete, wait for it.
  EXPECT_EQ(idx.Reserve(60, &victims), DiskIndex::Reservation::kWait);
  EXPECT_TRUE(victims.empty());
  idx.Unreserve(60);
  EXPECT_EQ(idx.Reserve(60, &victims), DiskIndex::Reservation::kOk);
  EXPECT_EQ(idx.reserved(), 60u);
}

// Review finding 2: a write that must wait for writes in flight used to empty the index first
// (every entry erased as a victim, the wait returned anyway).
TEST(DiskIndex, WaitForWritesInFlightKeepsEveryEntry) {
  DiskIndex idx(3 << 20);
  idx.Insert("A", 512 << 10);
  std::vector<DiskFile> victims;
  ASSERT_EQ(idx.Reserve(2 << 20, &victims), DiskIndex::Reservation::kOk);  // B, in flight
  ASSERT_TRUE(victims.empty());
  EXPECT_EQ(idx.Reserve(1536 << 10, &victims), DiskIndex::Reservation::kWait);  // C cannot fit beside B
  EXPECT_TRUE(victims.empty());
  EXPECT_TRUE(idx.Contains("A"));
  EXPECT_EQ(idx.objects(), 1u);
  EXPECT_EQ(idx.reserved(), uint64_t{2} << 20);
  // Once B landed, C fits by deleting A (and only A).
  idx.Unreserve(2 << 20);
  idx.Insert("B", 2 << 20);
  idx.Touch("B");
  EXPECT_EQ(idx.Reserve(1 << 20, &victims), DiskIndex::Reservation::kOk);
  EXPECT_EQ(Keys(victims), (std::vector<std::string>{"A"}));
  EXPECT_TRUE(idx.CheckInvariants().ok());
}

// Review finding 8: a file being read is never chosen as a victim; when only busy files could
// make room, the write waits and nothing is erased.
TEST(DiskIndex, BusyEntriesAreNeverVictims) {
  DiskIndex idx(100);
  idx.Insert("a", 40);  // least recently used, but being read
  idx.Insert("b", 40);
  idx.MarkBusy("a");
  std::vector<DiskFile> victims;
  ASSERT_EQ(idx.Reserve(30, &victims), DiskIndex::Reservation::kOk);
  EXPECT_EQ(Keys(victims), (std::vector<std::string>{"b"}));
  EXPECT_TRUE(idx.Contains("a"));
  idx.Unreserve(30);
  victims.clear();
  // Room only by deleting a: wait, nothing erased.
  EXPECT_EQ(idx.Reserve(70, &victims), DiskIndex::Reservation::kWait);
  EXPECT_TRUE(victims.empty());
  EXPECT_TRUE(idx.Contains("a"));
  EXPECT_EQ(idx.reserved(), 0u);
  idx.UnmarkBusy("a");
  EXPECT_FALSE(idx.Busy("a"));
  EXPECT_EQ(idx.Reserve(70, &victims), DiskIndex::Reservation::kOk);
  EXPECT_EQ(Keys(victims), (std::vector<std::string>{"a"}));
  EXPECT_TRUE(idx.CheckInvariants().ok());
}

TEST(DiskIndex, ScanSkipsTheLockFile) {
  TempDir dir;
  WriteFile(fs::path(dir.path()) / std::string(kDiskLockFile), 0);
  auto scan = ScanDiskDir(dir.path());
  ASSERT_TRUE(scan.ok()) << scan.status().ToString();
  EXPECT_TRUE(scan->files.empty());
  EXPECT_EQ(scan->ignored, 0u);
}

TEST(DiskIndex, TrimAndNamespaceListing) {
  DiskIndex idx(50);
  const std::string n1 = Ns("1"), n2 = Ns("2");
  idx.Insert(n1 + "x", 30);
  idx.Insert(n2 + "y", 30);
  idx.Insert(n1 + "z", 30);
  EXPECT_EQ(Keys(idx.TrimToCapacity()), (std::vector<std::string>{n1 + "x", n2 + "y"}));
  EXPECT_EQ(idx.bytes(), 30u);
  idx.Insert(n2 + "w", 10);
  EXPECT_EQ(idx.KeysOfNamespace(n2), std::vector<std::string>{n2 + "w"});
  EXPECT_TRUE(idx.Erase(n2 + "w"));
  EXPECT_FALSE(idx.Erase(n2 + "w"));
  EXPECT_TRUE(idx.CheckInvariants().ok());
}

}  // namespace
}  // namespace shmkv
