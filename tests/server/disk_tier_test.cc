// DiskTier (src/server/disk_tier.h) through the Tier interface, as KvService drives it, with a
// real Store over a real segment and the real shmkv-file-worker writing into a temporary
// directory (docs/l2-tier.md): write-through, loads back into L1, lookups over alternating
// tiers, remove and clear, health when the worker dies, and loads of keys the tier lacks.
#include "server/disk_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <asio.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "file_worker/fw_test_util.h"
#include "server/disk_index.h"
#include "server/store.h"
#include "server/tier.h"
#include "shmkv/segment.h"
#include "test_util.h"

#ifndef SHMKV_FILE_WORKER_BIN
#error "SHMKV_FILE_WORKER_BIN must name the shmkv-file-worker binary"
#endif

namespace shmkv {
namespace {

using namespace std::chrono_literals;
using file_worker::testing::ReadFile;
using file_worker::testing::TempDir;

constexpr uint64_t kPoolBytes = 64 * 4096;
constexpr SessionId kSession = 1;
const std::string kNs1(kNamespaceDigestBytes, '\x11');
const std::string kNs2(kNamespaceDigestBytes, '\x22');

bool RunUntil(asio::io_context& io, const std::function<bool()>& done, std::chrono::milliseconds limit = 3000ms) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    io.restart();
    io.run_one_for(5ms);
  }
  return true;
}

void RunFor(asio::io_context& io, std::chrono::milliseconds d) {
  (void)RunUntil(
      io, [] { return false; }, d);
}

// The children of this process whose command name starts with `comm` (from /proc/<pid>/stat;
// names are cut at 15 characters there).
std::vector<pid_t> ChildrenNamed(std::string_view comm) {
  std::vector<pid_t> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream f(entry.path() / "stat");
    const std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close + 4 >= stat.size()) continue;
    const std::string_view command = std::string_view(stat).substr(open + 1, close - open - 1);
    // ") S ppid ..."
    const pid_t ppid = static_cast<pid_t>(std::stol(stat.substr(close + 4)));
    if (ppid == ::getpid() && command.starts_with(comm.substr(0, 15))) out.push_back(std::stoi(name));
  }
  return out;
}

// Whether `dir`'s file system takes an O_DIRECT open (tmpfs before Linux 6.6 does not).
bool DirectIoWorksIn(const std::string& dir) {
  const std::string probe = dir + "/.direct-probe";
  const int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
  if (fd < 0) {
    ::unlink(probe.c_str());  // ramfs creates the file before it refuses O_DIRECT
    return false;
  }
  ::close(fd);
  ::unlink(probe.c_str());
  return true;
}

std::string Pattern(size_t n, int seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 31 + static_cast<size_t>(seed) * 97 + 1) & 0xff);
  return s;
}

class DiskTierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SegmentCreateOptions o;
    o.name = testing::UniqueSegmentName("dtier");
    o.size = kPoolBytes;
    o.prefault = false;
    o.pin_with_cuda = false;
    auto seg = SharedSegment::Create(o);
    ASSERT_TRUE(seg.ok()) << seg.status().ToString();
    segment_.emplace(std::move(seg).value());
    StoreOptions so;
    so.pool_size = segment_->size();
    so.track_dirty = true;  // a lower tier runs
    auto store = Store::Create(so);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_.emplace(std::move(store).value());
    store_->OpenSession(kSession);
  }

  void TearDown() override {
    disk_.reset();  // before the store it works on
    if (store_) {
      const Status s = store_->CheckInvariants();
      EXPECT_TRUE(s.ok()) << s.ToString();
    }
  }

  void StartTier(bool write_through = true) {
    options_.dir = dir_.path() + "/l2";
    options_.capacity = 16 << 20;
    options_.write_through = write_through;
    options_.worker_binary = SHMKV_FILE_WORKER_BIN;
    auto t = DiskTier::Start(io_, *store_, segment_->name(), segment_->size(), options_, segment_->data());
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    disk_ = std::move(t).value();
  }

  Tier& tier() { return *disk_; }

  // Stores `data` under `key` in L1 (prepare, copy into the pool, commit), as a client does.
  void PutL1(const std::string& key, const std::string& data) {
    const std::string_view keys[] = {key};
    const uint64_t sizes[] = {data.size()};
    auto slots = store_->PrepareStore(kSession, keys, sizes, Clock::now());
    ASSERT_TRUE(slots.ok()) << slots.status().ToString();
    ASSERT_EQ((*slots)[0].status, SlotStatus::kOk);
    std::memcpy(segment_->data() + (*slots)[0].offset, data.data(), data.size());
    ASSERT_TRUE(store_->CommitStore(kSession, keys, Clock::now()).ok());
  }

  // PutL1, then the tier writes it (write-through) and the write completes.
  void PutAndWrite(const std::string& key, const std::string& data) {
    const uint64_t before = Stat("l2_writes");
    PutL1(key, data);
    tier().AfterL1Change();
    ASSERT_TRUE(RunUntil(io_, [&] { return Stat("l2_writes") == before + 1 && Stat("l2_writes_in_flight") == 0; }))
        << "write of the object did not complete";
  }

  // Drops the L1 copy, so only the disk holds the object.
  void DropFromL1(const std::string& key) {
    const std::string_view keys[] = {key};
    ASSERT_EQ(store_->Remove(keys)[0], RemoveOutcome::kRemoved);
    ASSERT_FALSE(store_->IsCommitted(key));
  }

  uint64_t Stat(std::string_view name) const {
    std::vector<TierCounter> out;
    disk_->AppendStats(out);
    for (const auto& [n, v] : out) {
      if (n == name) return v;
    }
    ADD_FAILURE() << "no counter " << name;
    return 0;
  }

  // The file of an object of `length` bytes: padded to 4096 under "<key>.<length>" with O_DIRECT.
  std::string FileOf(const std::string& key, uint64_t length) const {
    return options_.dir + "/" + DiskPath(DiskFile{key, length, disk_->direct() ? AlignUp(length) : length});
  }
  // What that file holds: the object, then zeros up to the file's size.
  std::string OnDisk(const std::string& data) const {
    std::string out = data;
    if (disk_->direct()) out.resize(AlignUp(data.size()), '\0');
    return out;
  }

  Tier::Covered CoveredByL1() {
    return [this](std::string_view k) { return store_->IsCommitted(k); };
  }

  std::optional<size_t> LookupLeading(const std::vector<std::string>& keys) {
    const std::vector<std::string_view> views(keys.begin(), keys.end());
    auto count = std::make_shared<std::optional<size_t>>();
    // Alone below L1: covered means committed in L1, as the service passes it.
    tier().LookupLeading(views, CoveredByL1(), [count](size_t n) {
      EXPECT_FALSE(count->has_value()) << "completed twice";
      *count = n;
    });
    EXPECT_TRUE(RunUntil(io_, [&] { return count->has_value(); }));
    return *count;
  }

  std::optional<std::vector<std::string>> Load(std::vector<std::string> keys) {
    auto pinned = std::make_shared<std::optional<std::vector<std::string>>>();
    tier().Load(std::move(keys), CoveredByL1(), [pinned](std::vector<std::string> io_pinned) {
      EXPECT_FALSE(pinned->has_value()) << "completed twice";
      *pinned = std::move(io_pinned);
    });
    EXPECT_TRUE(RunUntil(io_, [&] { return pinned->has_value(); }));
    return *pinned;
  }

  pid_t WorkerPid() {
    const std::vector<pid_t> workers = ChildrenNamed("shmkv-file-worker");
    EXPECT_EQ(workers.size(), 1u);
    return workers.empty() ? -1 : workers[0];
  }

  asio::io_context io_;
  TempDir dir_;
  std::optional<SharedSegment> segment_;
  std::optional<Store> store_;
  DiskTierOptions options_;
  std::unique_ptr<DiskTier> disk_;
};

TEST_F(DiskTierTest, WriteThroughPutsACommittedObjectOnDisk) {
  StartTier(/*write_through=*/true);
  EXPECT_EQ(tier().name(), "l2");
  EXPECT_TRUE(tier().Health().up);
  EXPECT_EQ(tier().Health().reason, "");
  const std::string key = kNs1 + "a";
  const std::string data = Pattern(5000, 1);
  PutL1(key, data);
  EXPECT_FALSE(tier().Holds(key));  // committed, not yet written
  EXPECT_EQ(store_->stats().dirty_objects, 1u);
  tier().AfterL1Change();
  ASSERT_TRUE(RunUntil(io_, [&] { return tier().Holds(key); }));
  EXPECT_EQ(Stat("l2_objects"), 1u);
  EXPECT_EQ(Stat("l2_bytes"), disk_->direct() ? 8192u : 5000u);  // the file's bytes
  EXPECT_EQ(Stat("l2_writes"), 1u);
  EXPECT_EQ(Stat("l2_write_bytes"), 5000u);
  EXPECT_EQ(Stat("l2_write_errors"), 0u);
  EXPECT_EQ(Stat("l2_available"), 1u);
  EXPECT_EQ(ReadFile(FileOf(key, data.size())), OnDisk(data));
  EXPECT_EQ(store_->stats().dirty_objects, 0u);  // clean: eviction may drop it now
  EXPECT_TRUE(store_->IsCommitted(key));         // and L1 keeps its copy
}

// Demote mode (the default) writes nothing while L1 is less than half full.
TEST_F(DiskTierTest, WriteBehindWaitsForTheWatermark) {
  StartTier(/*write_through=*/false);
  const std::string small = kNs1 + "s";
  PutL1(small, Pattern(4096, 2));
  tier().AfterL1Change();
  RunFor(io_, 100ms);
  EXPECT_FALSE(tier().Holds(small));
  EXPECT_EQ(Stat("l2_writes"), 0u);
  // Past half of the pool: the oldest commits are written first.
  PutL1(kNs1 + "big", Pattern(kPoolBytes / 2, 3));
  tier().AfterL1Change();
  ASSERT_TRUE(RunUntil(io_, [&] { return Stat("l2_writes") >= 1; }));
  EXPECT_TRUE(tier().Holds(small));
}

TEST_F(DiskTierTest, LoadBringsTheObjectBackIntoL1ByteForByte) {
  StartTier();
  const std::string key = kNs1 + "load";
  const std::string data = Pattern(5000, 4);
  PutAndWrite(key, data);
  DropFromL1(key);
  EXPECT_TRUE(tier().Holds(key));
  // Whatever the loaded slot is, its bytes must come from the file, not from what was there.
  std::memset(segment_->data(), 0, segment_->size());

  auto pinned = Load({key});
  ASSERT_TRUE(pinned.has_value());
  EXPECT_EQ(*pinned, std::vector<std::string>{key});
  ASSERT_TRUE(store_->IsCommitted(key));
  EXPECT_EQ(Stat("l2_loads"), 1u);
  EXPECT_EQ(Stat("l2_load_bytes"), 5000u);
  EXPECT_EQ(Stat("l2_loads_in_flight"), 0u);
  EXPECT_EQ(Stat("l2_read_errors"), 0u);
  EXPECT_EQ(store_->stats().dirty_objects, 0u);  // loaded objects are clean: on disk already

  const std::string_view keys[] = {key};
  const std::vector<SlotResult> slots = store_->PrepareRetrieve(kSession, keys, Clock::now());
  ASSERT_EQ(slots[0].status, SlotStatus::kOk);
  ASSERT_EQ(slots[0].length, data.size());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(segment_->data() + slots[0].offset), data.size()), data);
  store_->IoUnpin(key);  // the caller releases the tier's io pins once its reader holds the object
  EXPECT_TRUE(store_->CommitRetrieve(kSession, keys).ok());
}

// A batch of [in L1, on disk only]: the L1 key is protected (io-pinned) while room is made for
// the load, and both come back pinned for the caller.
TEST_F(DiskTierTest, LoadOfABatchPinsItsL1KeysAndItsLoads) {
  StartTier();
  const std::string in_l1 = kNs1 + "l1", on_disk = kNs1 + "disk";
  PutAndWrite(on_disk, Pattern(4096, 5));
  DropFromL1(on_disk);
  PutL1(in_l1, Pattern(100, 6));
  auto pinned = Load({in_l1, on_disk});
  ASSERT_TRUE(pinned.has_value());
  EXPECT_EQ(*pinned, (std::vector<std::string>{in_l1, on_disk}));
  EXPECT_EQ(store_->stats().pinned_objects, 2u);
  for (const std::string& k : *pinned) store_->IoUnpin(k);
  EXPECT_EQ(store_->stats().pinned_objects, 0u);
}

TEST_F(DiskTierTest, LookupLeadingCountsRunsThatAlternateBetweenL1AndDisk) {
  StartTier();
  const std::string b = kNs1 + "b", c = kNs1 + "c", e = kNs1 + "e", f = kNs1 + "f", g = kNs1 + "g";
  for (const std::string& k : {b, e, g}) {
    PutAndWrite(k, Pattern(4096, k.back()));
    DropFromL1(k);
  }
  PutL1(c, Pattern(4096, 7));  // L1 only: not written
  ASSERT_FALSE(tier().Holds(c));
  ASSERT_EQ(Stat("l2_hits"), 0u);
  // [b disk, c L1, e disk, f nowhere, g disk]: the run ends at f.
  EXPECT_EQ(LookupLeading({b, c, e, f, g}), std::optional<size_t>(3));
  EXPECT_EQ(Stat("l2_hits"), 2u);  // b and e; c is L1's hit
  EXPECT_EQ(LookupLeading({c, b}), std::optional<size_t>(2));
  EXPECT_EQ(Stat("l2_hits"), 3u);
  EXPECT_EQ(LookupLeading({f, b}), std::optional<size_t>(0));
  EXPECT_EQ(LookupLeading({}), std::optional<size_t>(0));
  // Equal keys of another namespace are other objects.
  EXPECT_EQ(LookupLeading({kNs2 + "b"}), std::optional<size_t>(0));
  EXPECT_EQ(Stat("l2_hits"), 3u);
}

TEST_F(DiskTierTest, RemoveDropsTheDiskCopy) {
  StartTier();
  const std::string key = kNs1 + "rm";
  PutAndWrite(key, Pattern(3000, 8));
  ASSERT_TRUE(std::filesystem::exists(FileOf(key, 3000)));
  EXPECT_TRUE(tier().Remove(key));
  EXPECT_FALSE(tier().Holds(key));
  EXPECT_EQ(Stat("l2_objects"), 0u);
  EXPECT_EQ(Stat("l2_bytes"), 0u);
  ASSERT_TRUE(RunUntil(io_, [&] { return Stat("l2_deletes") == 1; }));
  EXPECT_FALSE(std::filesystem::exists(FileOf(key, 3000)));
  EXPECT_TRUE(store_->IsCommitted(key));  // the tier drops its own copy only; L1 is the service's
  EXPECT_FALSE(tier().Remove(key));       // nothing left to drop
  EXPECT_FALSE(tier().Remove(kNs1 + "never"));
  EXPECT_FALSE(tier().Remove("short"));  // not even a namespaced key
}

TEST_F(DiskTierTest, ClearDropsTheNamespacesDiskCopiesAndCountsOnlyThoseL1Lacks) {
  StartTier();
  const std::string both = kNs1 + "x", disk_only = kNs1 + "y", l1_only = kNs1 + "z", other = kNs2 + "x";
  PutAndWrite(both, Pattern(4096, 9));
  PutAndWrite(disk_only, Pattern(4096, 10));
  PutAndWrite(other, Pattern(4096, 11));
  DropFromL1(disk_only);
  DropFromL1(other);
  PutL1(l1_only, Pattern(4096, 12));
  ASSERT_EQ(Stat("l2_objects"), 3u);

  // L1 counts x and z itself (Store::Clear); of the disk copies only y is not in L1.
  EXPECT_EQ(tier().Clear(kNs1), 1u);
  EXPECT_FALSE(tier().Holds(both));
  EXPECT_FALSE(tier().Holds(disk_only));
  EXPECT_TRUE(tier().Holds(other));
  EXPECT_EQ(Stat("l2_objects"), 1u);
  ASSERT_TRUE(RunUntil(io_, [&] { return Stat("l2_deletes") == 2; }));
  EXPECT_FALSE(std::filesystem::exists(FileOf(both, 4096)));
  EXPECT_FALSE(std::filesystem::exists(FileOf(disk_only, 4096)));
  EXPECT_TRUE(std::filesystem::exists(FileOf(other, 4096)));
  EXPECT_EQ(tier().Clear(kNs1), 0u);  // nothing left
}

TEST_F(DiskTierTest, HealthGoesDownWhenTheWorkerIsKilled) {
  StartTier();
  const std::string key = kNs1 + "h";
  PutAndWrite(key, Pattern(4096, 13));
  DropFromL1(key);
  ASSERT_TRUE(tier().Holds(key));
  const pid_t pid = WorkerPid();
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  // Down as soon as the link sees the EOF; the death is counted once the worker is reaped.
  ASSERT_TRUE(RunUntil(
      io_, [&] { return !tier().Health().up && Stat("l2_worker_deaths") == 1; }, 1500ms));
  const TierHealth health = tier().Health();
  EXPECT_NE(health.reason.find("not running"), std::string::npos) << health.reason;
  EXPECT_EQ(Stat("l2_available"), 0u);
  EXPECT_EQ(Stat("l2_worker_deaths"), 1u);
  // Unavailable, the tier holds nothing and loads nothing; its files stay.
  EXPECT_FALSE(tier().Holds(key));
  EXPECT_EQ(LookupLeading({key}), std::optional<size_t>(0));
  auto pinned = Load({key});
  ASSERT_TRUE(pinned.has_value());
  EXPECT_TRUE(pinned->empty());
  EXPECT_FALSE(store_->IsCommitted(key));
  EXPECT_TRUE(std::filesystem::exists(FileOf(key, 4096)));
}

// The worker is restarted after DiskTier::kRestartDelay, and the tier serves its files again.
TEST_F(DiskTierTest, AKilledWorkerIsRestartedAndTheTierServesAgain) {
  StartTier();
  const std::string key = kNs1 + "r";
  PutAndWrite(key, Pattern(4096, 14));
  DropFromL1(key);
  const pid_t pid = WorkerPid();
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_TRUE(RunUntil(
      io_, [&] { return !tier().Health().up; }, 1500ms));
  ASSERT_TRUE(RunUntil(
      io_, [&] { return tier().Health().up; }, DiskTier::kRestartDelay + 1500ms));
  EXPECT_EQ(Stat("l2_worker_restarts"), 1u);
  EXPECT_EQ(Stat("l2_available"), 1u);
  EXPECT_NE(WorkerPid(), pid);
  EXPECT_TRUE(tier().Holds(key));
  auto pinned = Load({key});
  ASSERT_TRUE(pinned.has_value());
  EXPECT_EQ(*pinned, std::vector<std::string>{key});
  for (const std::string& k : *pinned) store_->IoUnpin(k);
}

TEST_F(DiskTierTest, LoadOfAKeyItDoesNotHoldCompletesWithNothingPinned) {
  StartTier();
  const std::string on_disk = kNs1 + "d";
  PutAndWrite(on_disk, Pattern(4096, 15));
  DropFromL1(on_disk);
  for (const std::vector<std::string>& batch : std::vector<std::vector<std::string>>{
           {kNs1 + "nope"},
           {},
           {kNs1 + "nope", on_disk},  // the prefix ends at the first key it cannot load
           {"short"}}) {
    auto pinned = Load(batch);
    ASSERT_TRUE(pinned.has_value());
    EXPECT_TRUE(pinned->empty());
  }
  const StoreStats s = store_->stats();
  EXPECT_EQ(s.pinned_objects, 0u);
  EXPECT_EQ(s.reserved_objects, 0u);
  EXPECT_EQ(s.objects, 0u);
  EXPECT_FALSE(store_->IsCommitted(on_disk));
  EXPECT_EQ(Stat("l2_loads"), 0u);
  EXPECT_EQ(Stat("l2_loads_in_flight"), 0u);
  EXPECT_EQ(Stat("l2_read_errors"), 0u);
}

// O_DIRECT (the test directory is on a disk file system): an object of unaligned length is
// written padded with zeros (not with what the slot held before) under "<key>.<length>", and it
// comes back with its true length, byte for byte.
TEST_F(DiskTierTest, PaddedObjectsComeBackWithTheirTrueLength) {
  if (!DirectIoWorksIn(dir_.path())) GTEST_SKIP() << dir_.path() << " refuses O_DIRECT";
  StartTier();
  ASSERT_TRUE(disk_->direct());
  const std::string key = kNs1 + "pad";
  const std::string data = Pattern(5000, 21);
  std::memset(segment_->data(), 0xee, segment_->size());  // stale bytes where the padding goes
  PutAndWrite(key, data);
  const std::string file = options_.dir + "/" + DiskPath(key) + ".5000";
  EXPECT_EQ(ReadFile(file), data + std::string(8192 - 5000, '\0'));
  EXPECT_FALSE(std::filesystem::exists(options_.dir + "/" + DiskPath(key)));
  EXPECT_EQ(Stat("l2_write_bytes"), 5000u);
  DropFromL1(key);
  std::memset(segment_->data(), 0, segment_->size());
  auto pinned = Load({key});
  ASSERT_TRUE(pinned.has_value());
  ASSERT_EQ(*pinned, std::vector<std::string>{key});
  EXPECT_EQ(Stat("l2_load_bytes"), 5000u);
  EXPECT_EQ(Stat("l2_read_errors"), 0u);
  const std::string_view keys[] = {key};
  const std::vector<SlotResult> slots = store_->PrepareRetrieve(kSession, keys, Clock::now());
  ASSERT_EQ(slots[0].status, SlotStatus::kOk);
  EXPECT_EQ(slots[0].length, 5000u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(segment_->data() + slots[0].offset), 5000), data);
  store_->IoUnpin(key);
  EXPECT_TRUE(store_->CommitRetrieve(kSession, keys).ok());

  // A restart finds the true length in the name.
  disk_.reset();
  const std::string_view k[] = {key};
  (void)store_->Remove(k);
  StartTier();
  EXPECT_TRUE(tier().Holds(key));
  EXPECT_EQ(Stat("l2_bytes"), 8192u);
  pinned = Load({key});
  ASSERT_TRUE(pinned.has_value());
  ASSERT_EQ(*pinned, std::vector<std::string>{key});
  const std::vector<SlotResult> again = store_->PrepareRetrieve(kSession, keys, Clock::now());
  ASSERT_EQ(again[0].status, SlotStatus::kOk);
  EXPECT_EQ(again[0].length, 5000u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(segment_->data() + again[0].offset), 5000), data);
  store_->IoUnpin(key);
  EXPECT_TRUE(store_->CommitRetrieve(kSession, keys).ok());
}

// Files written before padding existed (or with buffered I/O): "<key>", exactly the object, of
// any length. An O_DIRECT tier loads them (the read stops at the file's end) and the object
// keeps its length; the pool bytes after it, beyond the slot, are untouched.
TEST_F(DiskTierTest, OldUnpaddedFilesStillLoad) {
  if (!DirectIoWorksIn(dir_.path())) GTEST_SKIP() << dir_.path() << " refuses O_DIRECT";
  const std::string odd = kNs1 + "old-odd", even = kNs1 + "old-even";
  const std::string odd_data = Pattern(5000, 22), even_data = Pattern(8192, 23);
  const std::string base = dir_.path() + "/l2/";
  std::filesystem::create_directories(base + HexEncode(kNs1));
  file_worker::testing::WriteFile(base + DiskPath(odd), odd_data);
  file_worker::testing::WriteFile(base + DiskPath(even), even_data);
  StartTier();
  ASSERT_TRUE(disk_->direct());
  EXPECT_EQ(Stat("l2_objects"), 2u);
  EXPECT_EQ(Stat("l2_bytes"), 5000u + 8192);
  std::memset(segment_->data(), 0x77, segment_->size());
  auto pinned = Load({odd, even});
  ASSERT_TRUE(pinned.has_value());
  ASSERT_EQ(*pinned, (std::vector<std::string>{odd, even}));
  EXPECT_EQ(Stat("l2_read_errors"), 0u);
  EXPECT_EQ(Stat("l2_load_bytes"), 5000u + 8192);
  const std::string_view keys[] = {odd, even};
  const std::vector<SlotResult> slots = store_->PrepareRetrieve(kSession, keys, Clock::now());
  ASSERT_EQ(slots[0].status, SlotStatus::kOk);
  ASSERT_EQ(slots[1].status, SlotStatus::kOk);
  EXPECT_EQ(slots[0].length, 5000u);
  EXPECT_EQ(slots[1].length, 8192u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(segment_->data() + slots[0].offset), 5000), odd_data);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(segment_->data() + slots[1].offset), 8192), even_data);
  for (const SlotResult& sl : slots) {  // nothing written past either slot (whole 4096-byte units)
    const uint64_t end = sl.offset + AlignUp(sl.length);
    if (end < segment_->size() && end != slots[0].offset && end != slots[1].offset) {
      EXPECT_EQ(segment_->data()[end], std::byte{0x77});
    }
  }
  for (const std::string& k : *pinned) store_->IoUnpin(k);
  EXPECT_TRUE(store_->CommitRetrieve(kSession, keys).ok());
  // The old files stay as they are (nothing is rewritten).
  EXPECT_EQ(ReadFile(base + DiskPath(odd)), odd_data);
}

// --disk-direct off: buffered I/O, unpadded files, whatever the file system.
TEST_F(DiskTierTest, DirectOffWritesUnpaddedFiles) {
  options_.direct = DiskDirectIo::kOff;
  StartTier();
  EXPECT_FALSE(disk_->direct());
  const std::string key = kNs1 + "buf";
  const std::string data = Pattern(5000, 24);
  PutAndWrite(key, data);
  EXPECT_EQ(ReadFile(options_.dir + "/" + DiskPath(key)), data);
  EXPECT_EQ(Stat("l2_bytes"), 5000u);
  DropFromL1(key);
  auto pinned = Load({key});
  ASSERT_TRUE(pinned.has_value());
  ASSERT_EQ(*pinned, std::vector<std::string>{key});
  for (const std::string& k : *pinned) store_->IoUnpin(k);
}

}  // namespace
}  // namespace shmkv
