// The C++ client against a real shmkv-server process.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "shmkv/client.h"
#include "test_util.h"

#ifndef SHMKV_SERVER_BIN
#error "SHMKV_SERVER_BIN must name the shmkv-server binary"
#endif

namespace shmkv {
namespace {

class ServerFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    name_ = testing::UniqueSegmentName("cs");
    socket_ = fmt::format("/tmp/shmkv-test-{}.sock", name_);
    int out[2];
    ASSERT_EQ(::pipe(out), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      ::execl(SHMKV_SERVER_BIN, SHMKV_SERVER_BIN, "--pool-size", "32MiB", "--shm-name", name_.c_str(), "--socket",
              socket_.c_str(), "--log-level", "warn", nullptr);
      ::_exit(127);
    }
    ::close(out[1]);
    char line[256] = {};
    ssize_t n = ::read(out[0], line, sizeof line - 1);
    ::close(out[0]);
    ASSERT_GT(n, 0);
    ASSERT_EQ(std::string(line).rfind("shmkv-server ready:", 0), 0u) << line;
  }
  void TearDown() override {
    if (pid_ > 0) {
      ::kill(pid_, SIGCONT);
      ::kill(pid_, SIGTERM);
      testing::Reap(pid_);
    }
  }
  ClientOptions Options(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    ClientOptions o;
    o.socket_path = socket_;
    o.instance_id = "cpp-test";
    o.ns.model = "m";
    o.timeout = timeout;
    return o;
  }
  std::string name_, socket_;
  pid_t pid_ = -1;
};

TEST_F(ServerFixture, StoreAndRetrieveThroughZeroCopySlots) {
  auto c = Client::Connect(Options());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->info().shm_name, name_);
  EXPECT_EQ(c->info().pool_size, 32u << 20);
  std::vector<std::string> names = {"c0", "c1", "c2"};
  std::vector<std::string_view> keys(names.begin(), names.end());
  std::vector<uint64_t> sizes = {1 << 20, 5000, 4096};
  auto batch = c->PrepareStore(keys, sizes);
  ASSERT_TRUE(batch.ok()) << batch.status().ToString();
  std::mt19937 rng(3);
  std::vector<std::vector<std::byte>> data;
  for (size_t i = 0; i < keys.size(); ++i) {
    const Slot& s = batch->slots[i];
    ASSERT_EQ(s.status, SlotStatus::kOk);
    ASSERT_EQ(s.bytes.size(), sizes[i]);
    EXPECT_EQ(s.offset % 4096, 0u);
    std::vector<std::byte> d(sizes[i]);
    for (auto& b : d) b = static_cast<std::byte>(rng());
    std::memcpy(s.bytes.data(), d.data(), d.size());
    data.push_back(std::move(d));
  }
  ASSERT_TRUE(c->CommitStore(keys).ok());
  EXPECT_EQ(*c->Lookup(keys), 3u);
  auto out = c->PrepareRetrieve(keys);
  ASSERT_TRUE(out.ok());
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_EQ(out->slots[i].status, SlotStatus::kOk);
    EXPECT_EQ(std::memcmp(out->slots[i].bytes.data(), data[i].data(), data[i].size()), 0);
  }
  ASSERT_TRUE(c->CommitRetrieve(keys).ok());
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->at("objects"), 3u);
  EXPECT_EQ(stats->at("pinned_objects"), 0u);
}

TEST_F(ServerFixture, TimeoutNamesOperationInstanceAndDeadline) {
  auto c = Client::Connect(Options(std::chrono::milliseconds(200)));
  ASSERT_TRUE(c.ok());
  ::kill(pid_, SIGSTOP);
  std::string_view key = "k";
  auto r = c->Lookup({&key, 1});
  ::kill(pid_, SIGCONT);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout);
  const std::string m = r.status().message();
  EXPECT_NE(m.find("lookup"), std::string::npos) << m;
  EXPECT_NE(m.find("cpp-test"), std::string::npos) << m;
  EXPECT_NE(m.find("200 ms"), std::string::npos) << m;
  auto again = c->Lookup({&key, 1});  // reconnects
  ASSERT_TRUE(again.ok()) << again.status().ToString();
}

TEST_F(ServerFixture, ConnectToANonexistentSocketFailsClearly) {
  ClientOptions o = Options();
  o.socket_path = "/tmp/shmkv-no-such-server.sock";
  auto c = Client::Connect(o);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("is the server running"), std::string::npos) << c.status().message();
}

}  // namespace
}  // namespace shmkv
