#include "shmkv/segment.h"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "platform/platform.h"
#include "platform/shm.h"
#include "test_util.h"

namespace shmkv {
namespace {

using testing::Reap;
using testing::SegmentExists;
using testing::Spawn;
using testing::UniqueSegmentName;

constexpr uint64_t kMiB = 1 << 20;

SharedSegment MustCreate(const std::string& name, uint64_t size, bool prefault = true) {
  SegmentCreateOptions o;
  o.name = name;
  o.size = size;
  o.prefault = prefault;
  auto r = SharedSegment::Create(o);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return std::move(r).value();
}

// Resident pages of the mapping that starts at `addr`, from /proc/self/smaps (kB).
long RssKbOfMapping(const void* addr) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  char start_hex[32];
  std::snprintf(start_hex, sizeof start_hex, "%lx-", reinterpret_cast<unsigned long>(addr));
  bool in_mapping = false;
  while (std::getline(smaps, line)) {
    if (line.rfind(start_hex, 0) == 0) in_mapping = true;
    if (in_mapping && line.rfind("Rss:", 0) == 0) return std::stol(line.substr(4));
  }
  return -1;
}

int CountOpenFds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

int CountMappings() {
  std::ifstream maps("/proc/self/maps");
  return static_cast<int>(std::count(std::istreambuf_iterator<char>(maps), {}, '\n'));
}

TEST(SharedSegment, CreateMapsTheNameItReportsAndUnlinksOnDestruction) {
  const std::string name = UniqueSegmentName("create");
  {
    SharedSegment seg = MustCreate(name, 4 * kMiB);
    EXPECT_EQ(seg.name(), name);  // the name reported is the segment that exists
    EXPECT_TRUE(seg.is_owner());
    EXPECT_EQ(seg.size(), 4 * kMiB);
    ASSERT_TRUE(SegmentExists(seg.name()));
    struct stat st {};
    ASSERT_EQ(::stat(("/dev/shm/" + name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), 4 * kMiB);
    std::memset(seg.data(), 0xAB, seg.size());
    EXPECT_EQ(static_cast<unsigned char>(seg.data()[seg.size() - 1]), 0xAB);
  }
  EXPECT_FALSE(SegmentExists(name));
}

TEST(SharedSegment, ShortNameIsPrefixedAndSizeRoundsUpToPages) {
  const std::string bare = UniqueSegmentName("bare").substr(kSegmentPrefix.size());
  SegmentCreateOptions o;
  o.name = "/" + bare;
  o.size = 1;
  auto seg = SharedSegment::Create(o);
  ASSERT_TRUE(seg.ok()) << seg.status().ToString();
  EXPECT_EQ(seg->name(), std::string(kSegmentPrefix) + bare);
  EXPECT_TRUE(SegmentExists(seg->name()));
  EXPECT_EQ(seg->size(), static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)));
}

TEST(SharedSegment, CreateIsExclusiveAndSaysTheOwnerIsAlive) {
  const std::string name = UniqueSegmentName("excl");
  SharedSegment first = MustCreate(name, kMiB);
  std::memset(first.data(), 0x5A, kMiB);
  SegmentCreateOptions o;
  o.name = name;
  o.size = kMiB;
  auto second = SharedSegment::Create(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kAlreadyExists);
  EXPECT_NE(second.status().message().find(name), std::string::npos);
  EXPECT_NE(second.status().message().find("live process owns it"), std::string::npos) << second.status().message();
  // The failed create touched neither the name nor the bytes.
  EXPECT_TRUE(SegmentExists(name));
  EXPECT_EQ(static_cast<unsigned char>(first.data()[123]), 0x5A);
}

TEST(SharedSegment, CapacityCheckNamesBothSizesAndTheContainerHint) {
  // The portable platform has no capacity check: the create would succeed and its prefault fill
  // /dev/shm until SIGBUS.
  if (!platform::kLinux) GTEST_SKIP() << "no /dev/shm capacity check on the portable platform";
  struct statvfs fs {};
  ASSERT_EQ(::statvfs("/dev/shm", &fs), 0);
  const uint64_t free_bytes = uint64_t(fs.f_bavail) * fs.f_frsize;
  const std::string name = UniqueSegmentName("huge");
  SegmentCreateOptions o;
  o.name = name;
  o.size = free_bytes + (64ull << 30);
  auto r = SharedSegment::Create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFull);
  const std::string m = r.status().message();
  EXPECT_NE(m.find(std::to_string(o.size) + " bytes"), std::string::npos) << m;
  EXPECT_NE(m.find("/dev/shm has only"), std::string::npos) << m;
  EXPECT_NE(m.find("--shm-size"), std::string::npos) << m;
  EXPECT_FALSE(SegmentExists(name));
}

TEST(SharedSegment, FallocateFailureLeavesNoSegmentBehind) {
  if (!platform::kLinux) GTEST_SKIP() << "the portable platform sizes with ftruncate, which reserves nothing";
  // Skip the early check so posix_fallocate itself meets the full tmpfs: the error must come at
  // create time (not as a SIGBUS later) and the half-made segment must be gone.
  struct statvfs fs {};
  ASSERT_EQ(::statvfs("/dev/shm", &fs), 0);
  const std::string name = UniqueSegmentName("falloc");
  SegmentCreateOptions o;
  o.name = name;
  o.size = uint64_t(fs.f_bavail) * fs.f_frsize + (64ull << 30);
  o.check_capacity = false;
  auto r = SharedSegment::Create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFull) << r.status().ToString();
  EXPECT_NE(r.status().message().find(name), std::string::npos);
  EXPECT_FALSE(SegmentExists(name));
}

TEST(SharedSegment, ZeroSizeAndBadModeAndBadNameAreRejected) {
  SegmentCreateOptions o;
  o.name = UniqueSegmentName("zero");
  o.size = 0;
  EXPECT_EQ(SharedSegment::Create(o).status().code(), StatusCode::kInvalidArgument);
  o.size = kMiB;
  o.mode = 0666;
  EXPECT_EQ(SharedSegment::Create(o).status().code(), StatusCode::kInvalidArgument);
  o.mode = 0600;
  o.name = "bad/name";
  auto r = SharedSegment::Create(o);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("bad/name"), std::string::npos);
}

TEST(SharedSegment, GroupModeIsAppliedDespiteTheUmask) {
  const mode_t old = ::umask(077);
  SegmentCreateOptions o;
  o.name = UniqueSegmentName("mode");
  o.size = kMiB;
  o.mode = 0660;
  auto seg = SharedSegment::Create(o);
  ::umask(old);
  ASSERT_TRUE(seg.ok());
  struct stat st {};
  ASSERT_EQ(::stat(("/dev/shm/" + seg->name()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST(SharedSegment, PrefaultMakesEveryPageResident) {
  SharedSegment warm = MustCreate(UniqueSegmentName("warm"), 64 * kMiB, /*prefault=*/true);
  SharedSegment cold = MustCreate(UniqueSegmentName("cold"), 64 * kMiB, /*prefault=*/false);
  EXPECT_EQ(RssKbOfMapping(warm.data()), 64 * 1024);
  EXPECT_LT(RssKbOfMapping(cold.data()), 64 * 1024 / 4);
}

TEST(SharedSegment, AttachSharesBytesBothWaysAndNeverUnlinks) {
  SharedSegment owner = MustCreate(UniqueSegmentName("attach"), 2 * kMiB);
  std::memcpy(owner.data(), "hello", 5);
  {
    auto worker = SharedSegment::Attach(owner.name());
    ASSERT_TRUE(worker.ok()) << worker.status().ToString();
    EXPECT_FALSE(worker->is_owner());
    EXPECT_EQ(worker->size(), owner.size());
    EXPECT_NE(worker->data(), owner.data());  // a second mapping of the same pages
    EXPECT_EQ(std::memcmp(worker->data(), "hello", 5), 0);
    std::memcpy(worker->data() + kMiB, "world", 5);
  }
  EXPECT_TRUE(SegmentExists(owner.name()));
  EXPECT_EQ(std::memcmp(owner.data() + kMiB, "world", 5), 0);
}

TEST(SharedSegment, AttachByShortNameFindsThePrefixedSegment) {
  SharedSegment owner = MustCreate(UniqueSegmentName("short"), kMiB);
  auto worker = SharedSegment::Attach("/" + owner.name().substr(kSegmentPrefix.size()));
  ASSERT_TRUE(worker.ok()) << worker.status().ToString();
  EXPECT_EQ(worker->name(), owner.name());
}

TEST(SharedSegment, AttachErrorsNameTheSegmentAndLeaveNoPartialState) {
  SharedSegment owner = MustCreate(UniqueSegmentName("partial"), kMiB);
  const int fds = CountOpenFds();
  const int maps = CountMappings();

  const std::string missing = UniqueSegmentName("missing");
  auto r1 = SharedSegment::Attach(missing);
  ASSERT_FALSE(r1.ok());
  EXPECT_EQ(r1.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r1.status().message().find(missing), std::string::npos) << r1.status().message();

  SegmentAttachOptions too_big;
  too_big.size = 2 * kMiB;
  auto r2 = SharedSegment::Attach(owner.name(), too_big);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r2.status().message().find(owner.name()), std::string::npos) << r2.status().message();

  auto r3 = SharedSegment::Attach("");
  EXPECT_EQ(r3.status().code(), StatusCode::kInvalidArgument);

  EXPECT_EQ(CountOpenFds(), fds);
  EXPECT_EQ(CountMappings(), maps);
  EXPECT_FALSE(SegmentExists(missing));
}

void Chmod(const std::string& name, mode_t mode) {
  ASSERT_EQ(::chmod(("/dev/shm/" + name).c_str(), mode), 0) << std::strerror(errno);
}

TEST(SharedSegment, AttachWithAnExpectedOwnerRefusesAWorldAccessibleSegment) {
  SharedSegment owner = MustCreate(UniqueSegmentName("world"), kMiB);
  SegmentAttachOptions o;
  o.expected_owner = ::geteuid();
  ASSERT_TRUE(SharedSegment::Attach(owner.name(), o).ok());
  auto refuse_every_mode = [&] {
    for (mode_t mode : {0606, 0604, 0601}) {
      Chmod(owner.name(), mode);
      auto r = SharedSegment::Attach(owner.name(), o);
      ASSERT_FALSE(r.ok()) << fmt::format("mode {:04o} was accepted", mode);
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
      const std::string m = r.status().message();
      EXPECT_NE(m.find(owner.name()), std::string::npos) << m;
      EXPECT_NE(m.find(fmt::format("mode {:04o}", mode)), std::string::npos) << m;
      EXPECT_NE(m.find(fmt::format("uid {}", ::geteuid())), std::string::npos) << m;
    }
  };
  // Once before counting: a sanitizer's allocator maps memory the first time a size is used.
  refuse_every_mode();
  const int fds = CountOpenFds();
  const int maps = CountMappings();
  refuse_every_mode();
  EXPECT_EQ(CountOpenFds(), fds);  // refused before mapping: nothing left behind
  EXPECT_EQ(CountMappings(), maps);
  Chmod(owner.name(), 0660);  // --socket-mode 660: the group may share the pool
  EXPECT_TRUE(SharedSegment::Attach(owner.name(), o).ok());
  Chmod(owner.name(), 0606);
  EXPECT_TRUE(SharedSegment::Attach(owner.name()).ok()) << "without an expected owner nothing is checked";
}

TEST(SharedSegment, AttachWithAnExpectedOwnerRefusesAnotherOwnersSegment) {
  SharedSegment owner = MustCreate(UniqueSegmentName("owner"), kMiB);
  SegmentAttachOptions o;
  o.expected_owner = ::geteuid() + 4242;  // the uid the server reported is not the segment's owner
  auto r = SharedSegment::Attach(owner.name(), o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  const std::string m = r.status().message();
  EXPECT_NE(m.find(owner.name()), std::string::npos) << m;
  EXPECT_NE(m.find(fmt::format("owned by uid {}", ::geteuid())), std::string::npos) << m;
  EXPECT_NE(m.find(fmt::format("server runs as uid {}", ::geteuid() + 4242)), std::string::npos) << m;
  EXPECT_NE(m.find("mode 0600"), std::string::npos) << m;
}

TEST(SharedSegment, AChildThatAttachesAndExitsLeavesTheSegmentIntact) {
  SharedSegment owner = MustCreate(UniqueSegmentName("child_exit"), kMiB);
  pid_t pid = Spawn([&] {
    auto w = SharedSegment::Attach(owner.name());
    if (!w.ok()) return 2;
    std::memcpy(w->data() + 100, "child", 5);
    return 0;  // destructors run: munmap only
  });
  int status = Reap(pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_TRUE(SegmentExists(owner.name()));
  EXPECT_EQ(std::memcmp(owner.data() + 100, "child", 5), 0);
  EXPECT_TRUE(SharedSegment::Attach(owner.name()).ok());
}

TEST(SharedSegment, AChildKilledWithSigkillLeavesTheSegmentIntact) {
  SharedSegment owner = MustCreate(UniqueSegmentName("child_kill"), kMiB);
  pid_t pid = Spawn([&] {
    auto w = SharedSegment::Attach(owner.name());
    if (!w.ok()) return 2;
    std::memcpy(w->data() + 200, "killed", 6);
    ::raise(SIGKILL);
    return 0;
  });
  int status = Reap(pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_TRUE(SegmentExists(owner.name()));
  EXPECT_EQ(std::memcmp(owner.data() + 200, "killed", 6), 0);
  // The attacher held no lock: the owner's segment is still reported live, not stale.
  auto all = ListSegments();
  ASSERT_TRUE(all.ok());
  auto it = std::find_if(all->begin(), all->end(), [&](const SegmentInfo& s) { return s.name == owner.name(); });
  ASSERT_NE(it, all->end());
  EXPECT_TRUE(it->live);
}

TEST(SharedSegment, MovedFromSegmentReleasesNothing) {
  const std::string name = UniqueSegmentName("move");
  SharedSegment a = MustCreate(name, kMiB);
  SharedSegment b = std::move(a);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_FALSE(a.is_owner());
  EXPECT_TRUE(SegmentExists(name));
  SharedSegment c = MustCreate(UniqueSegmentName("move2"), kMiB);
  const std::string c_name = c.name();
  c = std::move(b);  // c's own segment is released (unlinked), b's is kept
  EXPECT_FALSE(SegmentExists(c_name));
  EXPECT_TRUE(SegmentExists(name));
  EXPECT_EQ(c.name(), name);
}

// A segment directory (--shm-dir): a private directory under /dev/shm, a tmpfs without huge pages,
// so these run on every Linux host; the huge tmpfs and hugetlbfs cases are in
// tests/python/test_huge_pages.py (they mount file systems).
class SegmentDir : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!platform::kLinux) GTEST_SKIP() << "segment directories are Linux only";
    char tmpl[] = "/dev/shm/shmkv-dir-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (!dir_.empty()) ::rmdir(dir_.c_str());
  }
  SegmentCreateOptions Options(const std::string& name, HugePages huge = HugePages::kOff) const {
    SegmentCreateOptions o;
    o.name = name;
    o.size = kMiB;
    o.dir = dir_;
    o.huge_pages = huge;
    o.pin_with_cuda = false;
    return o;
  }
  std::string dir_;
};

TEST_F(SegmentDir, CreateAttachAndUnlinkInTheDirectory) {
  const std::string name = UniqueSegmentName("dir");
  auto seg = SharedSegment::Create(Options(name));
  ASSERT_TRUE(seg.ok()) << seg.status().ToString();
  EXPECT_EQ(seg->path(), dir_ + "/" + name);
  EXPECT_EQ(seg->dir(), dir_);
  EXPECT_EQ(seg->page_size(), 4096u);  // --huge-pages off: no huge pages, checked in smaps
  struct stat st {};
  ASSERT_EQ(::stat(seg->path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // In /dev/shm the name is only held: a locked 1-byte file, so no other pool can take the name
  // there and a client that attaches by name alone (older ones: no shm_path) fails on its size.
  struct stat held {};
  ASSERT_EQ(::stat(("/dev/shm/" + name).c_str(), &held), 0);
  EXPECT_EQ(held.st_size, 1);
  std::memcpy(seg->data() + 4096, "in a dir", 8);

  SegmentAttachOptions ao;
  ao.dir = dir_;
  ao.expected_owner = ::geteuid();
  auto att = SharedSegment::Attach(name, ao);
  ASSERT_TRUE(att.ok()) << att.status().ToString();
  EXPECT_EQ(std::memcmp(att->data() + 4096, "in a dir", 8), 0);
  EXPECT_EQ(att->path(), seg->path());
  SegmentAttachOptions by_name_only;  // what an older client does
  by_name_only.size = seg->size();
  auto old_client = SharedSegment::Attach(name, by_name_only);
  EXPECT_EQ(old_client.status().code(), StatusCode::kInvalidArgument) << old_client.status().ToString();
  EXPECT_NE(old_client.status().message().find("holds 1 bytes"), std::string::npos) << old_client.status().ToString();
  auto same_name = SharedSegment::Create(Options(name));  // in /dev/shm or in the directory: taken
  EXPECT_EQ(same_name.status().code(), StatusCode::kAlreadyExists);
  SegmentCreateOptions in_default = Options(name);
  in_default.dir.clear();
  EXPECT_NE(SharedSegment::Create(in_default).status().message().find("a live process owns it"), std::string::npos);

  // Listed and kept while live; unlinked with its owner.
  const std::string dirs[] = {dir_};
  auto listed = ListSegments(dirs);
  ASSERT_TRUE(listed.ok());
  auto it = std::find_if(listed->begin(), listed->end(),
                         [&](const SegmentInfo& s) { return s.name == name && s.dir == dir_; });
  ASSERT_NE(it, listed->end());
  EXPECT_TRUE(it->live);
  EXPECT_EQ(it->size, kMiB);
  auto held_name = std::find_if(listed->begin(), listed->end(),
                                [&](const SegmentInfo& s) { return s.name == name && s.dir.empty(); });
  ASSERT_NE(held_name, listed->end());
  EXPECT_TRUE(held_name->live) << "the name held in /dev/shm is locked: no gc removes it";
  const std::string path = seg->path();
  *seg = SharedSegment::Create(Options(UniqueSegmentName("dir2"))).value();  // releases the first
  EXPECT_NE(::access(path.c_str(), F_OK), 0) << "the owner's destruction must unlink " << path;
  EXPECT_FALSE(SegmentExists(name)) << "and the name it held in /dev/shm";
}

TEST_F(SegmentDir, DevShmGivenAsTheDirectoryIsTheDefaultPlace) {
  const std::string name = UniqueSegmentName("devshm");
  auto o = Options(name);
  o.dir = "/dev/shm";
  auto seg = SharedSegment::Create(o);
  ASSERT_TRUE(seg.ok()) << seg.status().ToString();
  EXPECT_EQ(seg->dir(), "");
  EXPECT_EQ(seg->path(), "/dev/shm/" + name);
  EXPECT_TRUE(SharedSegment::Attach(name).ok());
}

TEST_F(SegmentDir, StaleSegmentsInTheDirectoryAreRemovedOnlyWhenAsked) {
  const std::string name = UniqueSegmentName("dirstale");
  const std::string path = dir_ + "/" + name;
  // A dead owner's segment: a prefixed file nobody holds locked, older than the creation grace.
  { std::ofstream(path) << std::string(4096, 'x'); }
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  auto in_default = RemoveStaleSegments(false);
  ASSERT_TRUE(in_default.ok());
  EXPECT_EQ(::access(path.c_str(), F_OK), 0) << "a scan of /dev/shm alone must not reach into the directory";
  const std::string dirs[] = {dir_};
  auto dry = RemoveStaleSegments(true, nullptr, dirs);
  ASSERT_TRUE(dry.ok());
  EXPECT_TRUE(
      std::any_of(dry->begin(), dry->end(), [&](const SegmentInfo& s) { return s.name == name && s.dir == dir_; }));
  EXPECT_EQ(::access(path.c_str(), F_OK), 0);
  auto removed = RemoveStaleSegments(false, nullptr, dirs);
  ASSERT_TRUE(removed.ok());
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
}

TEST_F(SegmentDir, RefusesDirectoriesOthersCanWriteOrThatAreNotMemory) {
  ASSERT_EQ(::chmod(dir_.c_str(), 0777), 0);
  auto open_dir = SharedSegment::Create(Options(UniqueSegmentName("dir777")));
  EXPECT_EQ(open_dir.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(open_dir.status().message().find("lets other users remove or rename files"), std::string::npos)
      << open_dir.status().ToString();
  ASSERT_EQ(::chmod(dir_.c_str(), 01777), 0);  // sticky, as /dev/shm: fine
  EXPECT_TRUE(SharedSegment::Create(Options(UniqueSegmentName("dir1777"))).ok());
  ASSERT_EQ(::chmod(dir_.c_str(), 0700), 0);

  auto relative = Options(UniqueSegmentName("rel"));
  relative.dir = "shm";
  EXPECT_NE(SharedSegment::Create(relative).status().message().find("must be an absolute path"), std::string::npos);

  // /proc is no memory file system for a pool.
  auto proc = Options(UniqueSegmentName("proc"));
  proc.dir = "/proc";
  const Status s = SharedSegment::Create(proc).status();
  EXPECT_NE(s.message().find("not in memory"), std::string::npos) << s.ToString();
}

TEST_F(SegmentDir, HugePagesOnFailsWhereTheMountGivesNoneAndNamesIt) {
  auto info = platform::InspectShmDir(dir_);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  if (info->huge_tmpfs()) GTEST_SKIP() << "/dev/shm is mounted with huge=" << info->huge_option;
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string setting((std::istreambuf_iterator<char>(thp)), {});
  if (setting.find("[always]") != std::string::npos || setting.find("[force]") != std::string::npos ||
      setting.find("[advise]") != std::string::npos || setting.find("[within_size]") != std::string::npos) {
    GTEST_SKIP() << "shmem THP is enabled on this host: " << setting;
  }
  const std::string name = UniqueSegmentName("hugeon");
  const Status s = SharedSegment::Create(Options(name, HugePages::kOn)).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--huge-pages on"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find(info->mount_point), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("nr_hugepages"), std::string::npos) << s.ToString();
  EXPECT_NE(::access((dir_ + "/" + name).c_str(), F_OK), 0) << "a failed create must leave no file";
  // auto: the same pool with 4 KiB pages.
  auto fallback = SharedSegment::Create(Options(name, HugePages::kAuto));
  ASSERT_TRUE(fallback.ok()) << fallback.status().ToString();
  EXPECT_EQ(fallback->page_size(), 4096u);
  EXPECT_EQ(fallback->huge_page_bytes(), 0u);
}

}  // namespace
}  // namespace shmkv
