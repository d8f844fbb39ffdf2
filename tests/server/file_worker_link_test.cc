// FileWorkerLink (src/server/file_worker_link.h) against the real shmkv-file-worker binary in PIPE
// mode, attached to a real segment created here: replies complete the callbacks in command
// order, an ERROR reply is kIoError with its reason, and a worker that dies or hangs fails what
// is pending with kUnavailable and calls the death handler exactly once.
#include "server/file_worker_link.h"

#include <signal.h>
#include <unistd.h>

#include <asio.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "file_worker/fw_test_util.h"
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

constexpr uint64_t kPoolBytes = 1 << 20;
constexpr auto npos = std::string::npos;

// Runs the loop until `done` holds or `limit` passes; returns whether it holds.
bool RunUntil(asio::io_context& io, const std::function<bool()>& done, std::chrono::milliseconds limit = 3000ms) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    io.restart();
    io.run_one_for(5ms);
  }
  return true;
}

// Runs the loop for `d` (the handlers due meanwhile run).
void RunFor(asio::io_context& io, std::chrono::milliseconds d) {
  (void)RunUntil(
      io, [] { return false; }, d);
}

// Waits until `pid` is stopped (state T in /proc/<pid>/stat), so a command sent now stays
// unanswered.
bool WaitStopped(pid_t pid) {
  for (int i = 0; i < 400; ++i) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    const std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const size_t paren = stat.rfind(')');
    if (paren != npos && paren + 2 < stat.size() && stat[paren + 2] == 'T') return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

bool ProcessGone(pid_t pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

// One command's outcome, filled in by its callback.
using Reply = std::shared_ptr<std::optional<Result<uint64_t>>>;

class FileWorkerLinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The server ignores SIGPIPE (DiskTier::Start): writing to a killed worker's pipe must be an
    // error for the link to handle, not the death of the test process.
    ::signal(SIGPIPE, SIG_IGN);
    SegmentCreateOptions o;
    o.name = testing::UniqueSegmentName("fwl");
    o.size = kPoolBytes;
    o.prefault = false;
    o.pin_with_cuda = false;
    auto seg = SharedSegment::Create(o);
    ASSERT_TRUE(seg.ok()) << seg.status().ToString();
    segment_.emplace(std::move(seg).value());
    options_.binary = SHMKV_FILE_WORKER_BIN;
    options_.root = dir_.path();
  }

  FileWorkerLink::DeathHandler CountDeaths() {
    return [this](const std::string& why) { deaths_.push_back(why); };
  }

  Result<std::unique_ptr<FileWorkerLink>> Start() {
    return FileWorkerLink::Start(io_, options_, segment_->name(), segment_->size(), CountDeaths());
  }

  Reply Send(FileWorkerLink& link, std::string line) {
    auto reply = std::make_shared<std::optional<Result<uint64_t>>>();
    link.Send(std::move(line), [reply](Result<uint64_t> r) {
      EXPECT_FALSE(reply->has_value()) << "a callback ran twice";
      reply->emplace(std::move(r));
    });
    return reply;
  }

  bool AllAnswered(const std::vector<Reply>& replies) {
    for (const Reply& r : replies) {
      if (!r->has_value()) return false;
    }
    return true;
  }

  std::byte* pool() { return segment_->data(); }

  asio::io_context io_;
  TempDir dir_;
  std::optional<SharedSegment> segment_;
  FileWorkerOptions options_;
  std::vector<std::string> deaths_;
};

TEST_F(FileWorkerLinkTest, WriteThenReadRoundTripsThroughThePool) {
  auto link = Start();
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  ASSERT_TRUE((*link)->alive());
  const pid_t pid = (*link)->pid();
  ASSERT_GT(pid, 0);

  constexpr size_t kLen = 5000;  // not a multiple of the page: the worker moves exactly len bytes
  constexpr uint64_t kReadAt = 65536;
  std::string pattern(kLen, '\0');
  for (size_t i = 0; i < kLen; ++i) pattern[i] = static_cast<char>((i * 131 + 7) & 0xff);
  std::memcpy(pool(), pattern.data(), kLen);
  std::memset(pool() + kReadAt, 0, kLen + 16);

  // Pipelined: the READ is sent before the WRITE's reply, and sees the write.
  Reply w = Send(**link, fmt::format("WRITE ns/obj 0 {}", kLen));
  Reply r = Send(**link, fmt::format("READ ns/obj {} {}", kReadAt, kLen));
  EXPECT_EQ((*link)->in_flight(), 2u);
  ASSERT_TRUE(RunUntil(io_, [&] { return AllAnswered({w, r}); }));
  ASSERT_TRUE((*w)->ok()) << (*w)->status().ToString();
  EXPECT_EQ(***w, kLen);
  ASSERT_TRUE((*r)->ok()) << (*r)->status().ToString();
  EXPECT_EQ(***r, kLen);
  EXPECT_EQ(std::memcmp(pool() + kReadAt, pattern.data(), kLen), 0);
  EXPECT_EQ(static_cast<int>(pool()[kReadAt + kLen]), 0);  // nothing beyond len
  EXPECT_EQ(ReadFile(dir_ / "ns/obj"), pattern);
  EXPECT_EQ((*link)->in_flight(), 0u);
  EXPECT_TRUE(deaths_.empty());

  // Destroying the link ends the worker (EOF on its stdin) and reaps it: no death reported.
  link->reset();
  EXPECT_TRUE(ProcessGone(pid));
  EXPECT_TRUE(deaths_.empty());
}

TEST_F(FileWorkerLinkTest, PipelinedCommandsCompleteInCommandOrder) {
  auto link = Start();
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  constexpr int kFiles = 8;
  struct Expected {
    std::string line;
    uint64_t value;
  };
  std::vector<Expected> commands;
  for (int i = 0; i < kFiles; ++i) commands.push_back({fmt::format("WRITE f{} {} {}", i, i * 4096, i + 1), i + 1u});
  for (int i = kFiles - 1; i >= 0; --i) {
    commands.push_back({fmt::format("STAT f{}", i), static_cast<uint64_t>(i + 1)});
    commands.push_back({fmt::format("EXISTS f{}", i), 1});
    commands.push_back({fmt::format("EXISTS g{}", i), 0});
  }
  std::vector<size_t> order;
  std::vector<Reply> replies;
  for (size_t i = 0; i < commands.size(); ++i) {
    auto reply = std::make_shared<std::optional<Result<uint64_t>>>();
    replies.push_back(reply);
    (*link)->Send(commands[i].line, [&order, reply, i](Result<uint64_t> r) {
      order.push_back(i);
      reply->emplace(std::move(r));
    });
  }
  EXPECT_EQ((*link)->in_flight(), commands.size());
  ASSERT_TRUE(RunUntil(io_, [&] { return AllAnswered(replies); }));
  ASSERT_EQ(order.size(), commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {
    EXPECT_EQ(order[i], i);
    ASSERT_TRUE((*replies[i])->ok()) << commands[i].line << ": " << (*replies[i])->status().ToString();
    EXPECT_EQ(***replies[i], commands[i].value) << commands[i].line;  // each reply reached its own command
  }
  EXPECT_TRUE(deaths_.empty());
}

TEST_F(FileWorkerLinkTest, AnErrorReplyIsAnIoErrorWithTheReasonAndTheLinkServesOn) {
  auto link = Start();
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  Reply missing = Send(**link, "READ no/such/file 0 4096");
  Reply escape = Send(**link, "READ ../outside 0 4096");
  Reply after = Send(**link, "EXISTS no/such/file");
  ASSERT_TRUE(RunUntil(io_, [&] { return AllAnswered({missing, escape, after}); }));
  ASSERT_FALSE((*missing)->ok());
  EXPECT_EQ((*missing)->status().code(), StatusCode::kIoError);
  EXPECT_NE((*missing)->status().message().find("No such file"), npos) << (*missing)->status().ToString();
  ASSERT_FALSE((*escape)->ok());
  EXPECT_EQ((*escape)->status().code(), StatusCode::kIoError);
  EXPECT_NE((*escape)->status().message().find("'..'"), npos) << (*escape)->status().ToString();
  EXPECT_EQ((*escape)->status().message().rfind("ERROR", 0), npos) << "the ERROR prefix is not part of the reason";
  ASSERT_TRUE((*after)->ok()) << (*after)->status().ToString();
  EXPECT_EQ(***after, 0u);
  EXPECT_TRUE((*link)->alive());
  EXPECT_TRUE(deaths_.empty());
}

TEST_F(FileWorkerLinkTest, AMissingBinaryIsAClearErrorAtStart) {
  options_.binary = dir_ / "no-such-file-worker";
  auto link = Start();
  ASSERT_FALSE(link.ok());
  const std::string m = link.status().message();
  EXPECT_NE(m.find(options_.binary), npos) << m;
  EXPECT_NE(m.find("set --file-worker"), npos) << m;
  EXPECT_NE(m.find("No such file or directory"), npos) << m;
  auto spawned = FileWorkerLink::Spawn(io_, options_, CountDeaths());
  ASSERT_FALSE(spawned.ok());
  EXPECT_NE(spawned.status().message().find(options_.binary), npos) << spawned.status().ToString();
  EXPECT_TRUE(deaths_.empty());
}

TEST_F(FileWorkerLinkTest, AWorkerThatCannotAttachTheSegmentFailsStartNamingIt) {
  const std::string absent = testing::UniqueSegmentName("absent");
  auto link = FileWorkerLink::Start(io_, options_, absent, kPoolBytes, CountDeaths());
  ASSERT_FALSE(link.ok());
  EXPECT_EQ(link.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(link.status().message().find("failed to attach segment " + absent), npos) << link.status().ToString();
  EXPECT_TRUE(deaths_.empty());
}

// The restart path: spawned without the blocking handshake, attached through Send.
TEST_F(FileWorkerLinkTest, ASpawnedWorkerAttachesThroughSend) {
  auto link = FileWorkerLink::Spawn(io_, options_, CountDeaths());
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  std::memset(pool() + 4096, 'z', 10);
  Reply attach = Send(**link, fmt::format("ATTACH {} {} 0", segment_->name(), segment_->size()));
  Reply write = Send(**link, "WRITE z 4096 10");
  ASSERT_TRUE(RunUntil(io_, [&] { return AllAnswered({attach, write}); }));
  ASSERT_TRUE((*attach)->ok()) << (*attach)->status().ToString();
  EXPECT_EQ(***attach, 0u);  // a bare OK
  ASSERT_TRUE((*write)->ok()) << (*write)->status().ToString();
  EXPECT_EQ(ReadFile(dir_ / "z"), std::string(10, 'z'));
}

TEST_F(FileWorkerLinkTest, AKilledWorkerFailsPendingCallbacksAndCallsTheDeathHandlerOnce) {
  auto link = Start();
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  const pid_t pid = (*link)->pid();
  // Stopped first, so that the commands are certainly unanswered when it dies.
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  ASSERT_TRUE(WaitStopped(pid));
  std::vector<Reply> pending = {Send(**link, "EXISTS a"), Send(**link, "STAT b"), Send(**link, "DELETE c")};
  RunFor(io_, 50ms);  // the commands reach the pipe
  EXPECT_FALSE(AllAnswered(pending));
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_TRUE(RunUntil(io_, [&] { return AllAnswered(pending) && !deaths_.empty(); }));
  for (const Reply& r : pending) {
    ASSERT_FALSE((*r)->ok());
    EXPECT_EQ((*r)->status().code(), StatusCode::kUnavailable);
    EXPECT_NE((*r)->status().message().find("killed by signal 9"), npos) << (*r)->status().ToString();
  }
  EXPECT_FALSE((*link)->alive());
  EXPECT_EQ((*link)->in_flight(), 0u);
  ASSERT_EQ(deaths_.size(), 1u);
  EXPECT_NE(deaths_[0].find(fmt::format("pid {}", pid)), npos) << deaths_[0];
  EXPECT_NE(deaths_[0].find("killed by signal 9"), npos) << deaths_[0];

  // A dead link answers at once, from the loop, and reports no second death.
  Reply late = Send(**link, "EXISTS a");
  EXPECT_FALSE(late->has_value());  // not from inside Send
  ASSERT_TRUE(RunUntil(io_, [&] { return late->has_value(); }));
  EXPECT_EQ((*late)->status().code(), StatusCode::kUnavailable);
  RunFor(io_, 100ms);
  EXPECT_EQ(deaths_.size(), 1u);
  EXPECT_TRUE(ProcessGone(pid));  // reaped, not left a zombie
}

TEST_F(FileWorkerLinkTest, AHungWorkerIsDetectedByTheReplyTimeout) {
  options_.reply_timeout = 300ms;
  auto link = Start();
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  const pid_t pid = (*link)->pid();
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  ASSERT_TRUE(WaitStopped(pid));
  const auto t0 = std::chrono::steady_clock::now();
  Reply r = Send(**link, "EXISTS a");
  ASSERT_TRUE(RunUntil(io_, [&] { return r->has_value() && !deaths_.empty(); }));
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  EXPECT_GE(waited.count(), 300);
  EXPECT_LT(waited.count(), 2000);
  ASSERT_FALSE((*r)->ok());
  EXPECT_EQ((*r)->status().code(), StatusCode::kUnavailable);
  EXPECT_NE((*r)->status().message().find("no reply within 300 ms"), npos) << (*r)->status().ToString();
  ASSERT_EQ(deaths_.size(), 1u);
  EXPECT_NE(deaths_[0].find("hung"), npos) << deaths_[0];
  EXPECT_FALSE((*link)->alive());
  EXPECT_TRUE(ProcessGone(pid));  // the stopped worker was killed and reaped
}

// The deadline covers an unanswered command, not an idle worker.
TEST_F(FileWorkerLinkTest, AnIdleWorkerIsNotAHungWorker) {
  options_.reply_timeout = 300ms;
  auto link = Start();
  ASSERT_TRUE(link.ok()) << link.status().ToString();
  Reply first = Send(**link, "EXISTS a");
  ASSERT_TRUE(RunUntil(io_, [&] { return first->has_value(); }));
  RunFor(io_, 500ms);
  EXPECT_TRUE(deaths_.empty());
  EXPECT_TRUE((*link)->alive());
  Reply second = Send(**link, "EXISTS a");
  ASSERT_TRUE(RunUntil(io_, [&] { return second->has_value(); }));
  EXPECT_TRUE((*second)->ok()) << (*second)->status().ToString();
  EXPECT_TRUE(deaths_.empty());
}

}  // namespace
}  // namespace shmkv
