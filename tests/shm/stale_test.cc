// Stale-segment cleanup against real owners in child processes.
#include <algorithm>

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
  ASSERT_TRUE(RemoveStaleSegments(false).ok());
  auto fresh = SharedSegment::Create(o);
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
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
