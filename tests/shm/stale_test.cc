// Stale-segment cleanup against real owners in child processes.
#include <algorithm>

#include "platform/shm.h"
#include "shmkv/segment.h"
#include "test_util.h"

namespace shmkv {
namespace {

using testing::ReadyPipe;
using testing::Reap;
using testing::SegmentExists;
using testing::Spawn;
using testing::UniqueSegmentName;

bool Contains(const std::vector<SegmentInfo>& v, const std::string& name) {
  return std::any_of(v.begin(), v.end(), [&](const SegmentInfo& s) { return s.name == name; });
}

// A child creates `name`, signals, then is killed with SIGKILL: its segment is left stale.
void LeaveStaleSegment(const std::string& name, uint64_t size) {
  ReadyPipe ready;
  pid_t pid = Spawn([&] {
    SegmentCreateOptions o;
    o.name = name;
    o.size = size;
    auto seg = SharedSegment::Create(o);
    if (!seg.ok()) return 2;
    ready.Signal();
    for (;;) ::pause();
  });
  ASSERT_TRUE(ready.Wait());
  ::kill(pid, SIGKILL);
  Reap(pid);
  ASSERT_TRUE(SegmentExists(name));
}

TEST(StaleSegments, AnOwnerKilledWithSigkillLeavesAStaleSegmentThatGcRemoves) {
  const std::string name = UniqueSegmentName("stale");
  LeaveStaleSegment(name, 1 << 20);

  auto listed = ListSegments();
  ASSERT_TRUE(listed.ok());
  auto it = std::find_if(listed->begin(), listed->end(), [&](const SegmentInfo& s) { return s.name == name; });
  ASSERT_NE(it, listed->end());
  EXPECT_FALSE(it->live);
  EXPECT_EQ(it->size, 1u << 20);

  auto dry = RemoveStaleSegments(/*dry_run=*/true);
  ASSERT_TRUE(dry.ok());
  EXPECT_TRUE(Contains(*dry, name));
  EXPECT_TRUE(SegmentExists(name)) << "dry run removed the segment";

  auto removed = RemoveStaleSegments(/*dry_run=*/false);
  ASSERT_TRUE(removed.ok());
  EXPECT_TRUE(Contains(*removed, name));
  EXPECT_FALSE(SegmentExists(name));
}

TEST(StaleSegments, ALiveOwnersSegmentIsNeverRemoved) {
  const std::string name = UniqueSegmentName("live");
  ReadyPipe ready;
  pid_t pid = Spawn([&] {
    SegmentCreateOptions o;
    o.name = name;
    o.size = 1 << 20;
    auto seg = SharedSegment::Create(o);
    if (!seg.ok()) return 2;
    ready.Signal();
    for (;;) ::pause();
  });
  ASSERT_TRUE(ready.Wait());
  auto removed = RemoveStaleSegments(false);
  ASSERT_TRUE(removed.ok());
  EXPECT_FALSE(Contains(*removed, name));
  EXPECT_TRUE(SegmentExists(name));
  auto listed = ListSegments();
  ASSERT_TRUE(listed.ok());
  auto it = std::find_if(listed->begin(), listed->end(), [&](const SegmentInfo& s) { return s.name == name; });
  ASSERT_NE(it, listed->end());
  EXPECT_TRUE(it->live);
  // Once the owner dies without unlinking, the same segment is stale and goes.
  ::kill(pid, SIGKILL);
  Reap(pid);
  ASSERT_TRUE(RemoveStaleSegments(false).ok());
  EXPECT_FALSE(SegmentExists(name));
}

TEST(StaleSegments, ASegmentWithoutThePrefixIsNeverTouched) {
  const std::string name = "shmkv_test_unprefixed_" + std::to_string(::getpid());
  int fd = ::shm_open(("/" + name).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 4096), 0);
  ::close(fd);  // nobody holds a lock on it
  auto removed = RemoveStaleSegments(false);
  ASSERT_TRUE(removed.ok());
  EXPECT_FALSE(Contains(*removed, name));
  EXPECT_TRUE(SegmentExists(name));
  auto listed = ListSegments();
  ASSERT_TRUE(listed.ok());
  EXPECT_FALSE(Contains(*listed, name));
  ::shm_unlink(("/" + name).c_str());
}

TEST(StaleSegments, CreatingOverAStaleSegmentExplainsAndWorksAfterGc) {
  const std::string name = UniqueSegmentName("recreate");
  LeaveStaleSegment(name, 1 << 20);
  SegmentCreateOptions o;
  o.name = name;
  o.size = 1 << 20;
  auto blocked = SharedSegment::Create(o);
  ASSERT_FALSE(blocked.ok());
  EXPECT_EQ(blocked.status().code(), StatusCode::kAlreadyExists);
  EXPECT_NE(blocked.status().message().find("stale"), std::string::npos) << blocked.status().message();
  EXPECT_NE(blocked.status().message().find("shmkv gc"), std::string::npos);
  EXPECT_NE(blocked.status().message().find(fmt::format("owner uid {}", ::geteuid())), std::string::npos)
      << blocked.status().message();
  EXPECT_NE(blocked.status().message().find("mode 0600"), std::string::npos) << blocked.status().message();
  ASSERT_TRUE(RemoveStaleSegments(false).ok());
  auto fresh = SharedSegment::Create(o);
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
}

// A stale segment owned by another user (root only: it takes fchown). Unlocked, so it looks exactly
// like what a dead server of that user leaves behind: on the portable platform that includes its
// lock file (in /tmp, which users share when TMPDIR is unset).
class ForeignSegment {
 public:
  static constexpr uid_t kUid = 65534;  // nobody

  explicit ForeignSegment(const std::string& name) : name_(name), lock_path_(platform::LivenessLockPath(name)) {
    const int fd = ::shm_open(("/" + name).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, 1 << 20), 0);
    EXPECT_EQ(::fchown(fd, kUid, kUid), 0);
    ::close(fd);
    if (!lock_path_.empty()) {
      const int lock = ::open(lock_path_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
      EXPECT_GE(lock, 0) << lock_path_;
      EXPECT_EQ(::fchown(lock, kUid, kUid), 0);
      ::close(lock);
    }
  }
  ~ForeignSegment() {
    ::shm_unlink(("/" + name_).c_str());
    if (!lock_path_.empty()) ::unlink(lock_path_.c_str());
  }
  ForeignSegment(const ForeignSegment&) = delete;
  ForeignSegment& operator=(const ForeignSegment&) = delete;

 private:
  std::string name_;
  std::string lock_path_;
};

TEST(StaleSegments, ARootCleanupNeverRemovesAnotherUsersSegment) {
  if (::geteuid() != 0) GTEST_SKIP() << "creating another user's segment needs root";
  const std::string theirs = UniqueSegmentName("foreign");
  const std::string ours = UniqueSegmentName("own");
  ForeignSegment foreign(theirs);
  LeaveStaleSegment(ours, 1 << 20);

  std::vector<SegmentInfo> skipped;
  auto dry = RemoveStaleSegments(/*dry_run=*/true, &skipped);
  ASSERT_TRUE(dry.ok()) << dry.status().ToString();
  EXPECT_FALSE(Contains(*dry, theirs));
  EXPECT_TRUE(Contains(*dry, ours));
  auto it = std::find_if(skipped.begin(), skipped.end(), [&](const SegmentInfo& s) { return s.name == theirs; });
  ASSERT_NE(it, skipped.end()) << "another user's segment is listed as skipped";
  EXPECT_EQ(it->owner, ForeignSegment::kUid);
  EXPECT_EQ(it->size, 1u << 20);
  EXPECT_FALSE(Contains(skipped, ours));

  auto removed = RemoveStaleSegments(/*dry_run=*/false);  // what a root server does at start
  ASSERT_TRUE(removed.ok()) << removed.status().ToString();
  EXPECT_FALSE(Contains(*removed, theirs));
  EXPECT_TRUE(SegmentExists(theirs)) << "a root cleanup removed another user's segment";
  EXPECT_TRUE(Contains(*removed, ours));
  EXPECT_FALSE(SegmentExists(ours));
}

TEST(StaleSegments, CreatingOverAnotherUsersSegmentNamesTheOwnerAndMode) {
  if (::geteuid() != 0) GTEST_SKIP() << "creating another user's segment needs root";
  const std::string name = UniqueSegmentName("squat");
  ForeignSegment foreign(name);
  SegmentCreateOptions o;
  o.name = name;
  o.size = 1 << 20;
  auto r = SharedSegment::Create(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kAlreadyExists);
  const std::string m = r.status().message();
  EXPECT_NE(m.find(name), std::string::npos) << m;
  EXPECT_NE(m.find("another user"), std::string::npos) << m;
  EXPECT_NE(m.find("uid 65534"), std::string::npos) << m;
  EXPECT_NE(m.find("mode 0600"), std::string::npos) << m;
  EXPECT_EQ(m.find("shmkv gc"), std::string::npos) << "gc would not remove it: " << m;
  EXPECT_TRUE(SegmentExists(name));
}

TEST(StaleSegments, AnOwnerThatExitsCleanlyUnlinksItsSegment) {
  const std::string name = UniqueSegmentName("clean");
  pid_t pid = Spawn([&] {
    SegmentCreateOptions o;
    o.name = name;
    o.size = 1 << 20;
    return SharedSegment::Create(o).ok() ? 0 : 2;  // destroyed before exit
  });
  int status = Reap(pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  EXPECT_FALSE(SegmentExists(name));
}

}  // namespace
}  // namespace shmkv
