// The C++ client against a real shmkv-server process.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <random>
#include <thread>

#include "client/peer_check.h"
#include "protocol/wire.h"
#include "server/ready_line.h"
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
    StartServer();
  }
  // Starts the server on name_ and socket_ (again, after a kill: it cleans its stale segment).
  void StartServer(std::vector<std::string> extra = {}) {
    int out[2];
    ASSERT_EQ(::pipe(out), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      std::vector<std::string> args = {SHMKV_SERVER_BIN, "--pool-size", "32MiB",       "--shm-name", name_,
                                       "--socket",       socket_,       "--log-level", "warn"};
      args.insert(args.end(), extra.begin(), extra.end());
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(SHMKV_SERVER_BIN, argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    char line[256] = {};
    ssize_t n = ::read(out[0], line, sizeof line - 1);
    ::close(out[0]);
    ASSERT_GT(n, 0);
    auto ready = ParseReadyLine(line);
    ASSERT_TRUE(ready.ok()) << ready.status().ToString();
    ASSERT_EQ(ready->socket, socket_);
  }
  void TearDown() override {
    if (pid_ > 0) {
      ::kill(pid_, SIGCONT);
      ::kill(pid_, SIGTERM);
      testing::Reap(pid_);
    }
  }
  // SIGKILL: the server leaves its socket file and a stale segment, as a crash does.
  void KillServer() {
    ::kill(pid_, SIGKILL);
    testing::Reap(pid_);
    pid_ = -1;
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

std::vector<std::string_view> Views(const std::vector<std::string>& names) {
  return {names.begin(), names.end()};
}

// ---- server restarts -------------------------------------------------------------------------

TEST_F(ServerFixture, CallsThatChangeNothingSucceedRightAfterAServerRestart) {
  auto c = Client::Connect(Options());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->Put("old", std::as_bytes(std::span("abc", 3))).ok());
  const std::string_view key = "old";
  const uint64_t gen = c->info().generation;
  KillServer();
  StartServer();
  auto n = c->Lookup({&key, 1});  // the first call after the restart
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 0u);  // a fresh server: the old object is gone
  EXPECT_NE(c->info().generation, gen);
  EXPECT_EQ(c->info().shm_name, name_);
  KillServer();
  StartServer();
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->at("objects"), 0u);
  ASSERT_TRUE(c->Put("new", std::as_bytes(std::span("xyz", 3))).ok());  // the new segment is mapped
  auto got = c->Get("new");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(std::memcmp(got->data(), "xyz", 3), 0);
}

TEST_F(ServerFixture, CallsThatChangeStateReportARestartAndTheNextCallReconnects) {
  auto c = Client::Connect(Options());
  ASSERT_TRUE(c.ok());
  const std::vector<std::string> names = {"k"};
  const auto keys = std::vector<std::string_view>(names.begin(), names.end());
  const std::vector<uint64_t> sizes = {4096};
  const std::vector<std::pair<std::string, std::function<Status()>>> calls = {
      {"prepare_store", [&] { return c->PrepareStore(keys, sizes).status(); }},
      {"commit_store", [&] { return c->CommitStore(keys); }},
      {"abort_store", [&] { return c->AbortStore(keys).status(); }},
      {"lookup", [&] { return c->Lookup(keys, /*pin=*/true).status(); }},
      {"prepare_retrieve", [&] { return c->PrepareRetrieve(keys).status(); }},
      {"commit_retrieve", [&] { return c->CommitRetrieve(keys); }},
      {"remove", [&] { return c->Remove(keys).status(); }},
      {"clear", [&] { return c->Clear().status(); }},
  };
  for (const auto& [op, call] : calls) {
    KillServer();
    StartServer();
    Status s = call();
    ASSERT_FALSE(s.ok()) << op << " was sent again to the new server";
    EXPECT_EQ(s.code(), StatusCode::kDisconnected) << s.ToString();
    EXPECT_NE(s.message().find(op), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("the next call reconnects"), std::string::npos) << s.message();
    auto stats = c->Stats();
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    EXPECT_EQ(stats->at("reserved_objects") + stats->at("pinned_objects") + stats->at("objects"), 0u) << op;
  }
}

TEST_F(ServerFixture, ARestartThatLosesPostedRepliesIsReportedNotRetriedAway) {
  auto c = Client::Connect(Options());
  ASSERT_TRUE(c.ok());
  const std::vector<std::string> k = {"posted"};
  const std::vector<uint64_t> size = {4096};
  ASSERT_TRUE(c->PrepareStore(Views(k), size).ok());
  ::kill(pid_, SIGSTOP);  // the commit is sent but never answered
  ASSERT_TRUE(c->PostCommitStore(Views(k)).ok());
  KillServer();
  StartServer();
  auto n = c->Lookup(Views(k));
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), StatusCode::kDisconnected);
  EXPECT_NE(n.status().message().find("outcome of 1 posted request(s) is unknown: commit_store (1 keys)"),
            std::string::npos)
      << n.status().message();
  auto again = c->Lookup(Views(k));
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(*again, 0u);
}

// ---- expired leases --------------------------------------------------------------------------

class ShortTtlFixture : public ServerFixture {
 protected:
  void SetUp() override {
    ServerFixture::SetUp();
    KillServer();
    StartServer({"--reserve-ttl", "0.2", "--pin-ttl", "0.2"});
  }
  // A stalled step: longer than the TTL and the server's expiry sweep.
  static void Stall() { std::this_thread::sleep_for(std::chrono::milliseconds(600)); }
  Status PutBytes(Client& c, const std::string& key) {
    return c.Put(key, std::as_bytes(std::span(key.data(), key.size())));
  }
};

TEST_F(ShortTtlFixture, CommitStoreOfAnExpiredReservationNamesItsIndexAndCommitsNothing) {
  auto c = Client::Connect(Options());
  ASSERT_TRUE(c.ok());
  const std::vector<std::string> stalled = {"b"}, fresh = {"a", "c"}, all = {"a", "b", "c"};
  const std::vector<uint64_t> one = {4096}, two = {4096, 4096};
  ASSERT_TRUE(c->PrepareStore(Views(stalled), one).ok());
  Stall();
  ASSERT_TRUE(c->PrepareStore(Views(fresh), two).ok());
  Status s = c->CommitStore(Views(all));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kExpired) << s.ToString();
  EXPECT_EQ(c->last_expired(), std::vector<uint32_t>{1});
  EXPECT_NE(s.message().find("key #1"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("commit_store: commit_store"), std::string::npos) << "named twice: " << s.message();
  EXPECT_EQ(*c->Lookup(Views(fresh)), 0u);  // nothing committed...
  EXPECT_TRUE(c->last_expired().empty());   // ...and a later call resets the indices
  ASSERT_TRUE(c->CommitStore(Views(fresh)).ok()) << "the other reservations are still held";
  EXPECT_EQ(*c->Lookup(Views(fresh)), 2u);
}

TEST_F(ShortTtlFixture, CommitRetrieveOfAnExpiredPinNamesItsIndexAndReleasesTheOthers) {
  auto c = Client::Connect(Options());
  ASSERT_TRUE(c.ok());
  for (const char* k : {"a", "b", "c"}) ASSERT_TRUE(PutBytes(*c, k).ok());
  const std::vector<std::string> stalled = {"b"}, fresh = {"a", "c"}, all = {"a", "b", "c"};
  ASSERT_TRUE(c->PrepareRetrieve(Views(stalled)).ok());
  Stall();
  ASSERT_TRUE(c->PrepareRetrieve(Views(fresh)).ok());
  Status s = c->CommitRetrieve(Views(all));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kExpired) << s.ToString();
  EXPECT_EQ(c->last_expired(), std::vector<uint32_t>{1});
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->at("pinned_objects"), 0u) << "the pins of a and c were released too";
}

TEST_F(ShortTtlFixture, AnExpiredPostedCommitIsReportedWithItsIndicesByTheNextCallAndBySync) {
  auto c = Client::Connect(Options());
  ASSERT_TRUE(c.ok());
  for (const char* k : {"a", "b"}) ASSERT_TRUE(PutBytes(*c, k).ok());
  const std::vector<std::string> first = {"a"}, second = {"b"}, both = {"a", "b"}, other = {"zzz"};
  ASSERT_TRUE(c->PrepareRetrieve(Views(second)).ok());
  Stall();
  ASSERT_TRUE(c->PrepareRetrieve(Views(first)).ok());
  ASSERT_TRUE(c->PostCommitRetrieve(Views(both)).ok());
  auto next = c->Lookup(Views(other));
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kExpired) << next.status().ToString();
  EXPECT_NE(next.status().message().find("posted commit_retrieve"), std::string::npos) << next.status().message();
  EXPECT_EQ(c->last_expired(), std::vector<uint32_t>{1});

  ASSERT_TRUE(c->PrepareRetrieve(Views(first)).ok());
  Stall();
  ASSERT_TRUE(c->PostCommitRetrieve(Views(first)).ok());
  Status s = c->Sync();
  EXPECT_EQ(s.code(), StatusCode::kExpired) << s.ToString();
  EXPECT_EQ(c->last_expired(), std::vector<uint32_t>{0});
  EXPECT_EQ(c->Stats()->at("pinned_objects"), 0u);
}

// ---- whom a client trusts -------------------------------------------------------------------

TEST(ServerTrust, AWorkerTrustsOnlyItsOwnUserOrRoot) {
  EXPECT_TRUE(client::CheckServerUid("/s", 1000, 1000).ok());
  EXPECT_TRUE(client::CheckServerUid("/s", 0, 1000).ok());  // a root server serves every user
  EXPECT_TRUE(client::CheckServerUid("/s", 0, 0).ok());
  Status other = client::CheckServerUid("/run/shmkv.sock", 1001, 1000);
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(other.message().find("'/run/shmkv.sock'"), std::string::npos) << other.message();
  EXPECT_NE(other.message().find("runs as uid 1001"), std::string::npos) << other.message();
  EXPECT_NE(other.message().find("this process as uid 1000"), std::string::npos) << other.message();
  EXPECT_FALSE(client::CheckServerUid("/s", 1000, 0).ok());  // root trusts no one but root
}

// Another user listening on the socket path (root only: the child drops to `nobody`). The client
// refuses right after connect, before it sends a byte.
TEST(ServerTrust, ConnectRefusesAServerOfAnotherUserAndSendsItNothing) {
  if (::geteuid() != 0) GTEST_SKIP() << "a listener of another uid needs root to set up";
  const std::string path = fmt::format("/tmp/shmkv-test-squat-{}.sock", ::getpid());
  ::unlink(path.c_str());
  testing::ReadyPipe ready;
  const pid_t squatter = testing::Spawn([&] {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 3;
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 4) != 0) return 4;
    ready.Signal();
    for (int i = 0; i < 2; ++i) {  // Connect, then QueryStats: each must hang up without sending
      const int conn = ::accept(fd, nullptr, nullptr);
      if (conn < 0) return 5;
      char byte = 0;
      if (::recv(conn, &byte, 1, 0) != 0) return 6;
      ::close(conn);
    }
    return 0;
  });
  ASSERT_TRUE(ready.Wait());
  ClientOptions o;
  o.socket_path = path;
  o.timeout = std::chrono::seconds(5);
  auto c = Client::Connect(o);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  const std::string m = c.status().message();
  EXPECT_NE(m.find(path), std::string::npos) << m;
  EXPECT_NE(m.find("runs as uid 65534"), std::string::npos) << m;
  EXPECT_NE(m.find("this process as uid 0"), std::string::npos) << m;
  auto stats = Client::QueryStats(path, std::chrono::seconds(5));  // the tool path checks too
  EXPECT_EQ(stats.status().code(), StatusCode::kInvalidArgument);
  const int status = testing::Reap(squatter);
  ::unlink(path.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the client sent the squatter something";
}

TEST_F(ServerFixture, ConnectRefusesASegmentEveryUserCanAccessAndAcceptsItOnceFixed) {
  const std::string file = "/dev/shm/" + name_;
  ASSERT_EQ(::chmod(file.c_str(), 0606), 0);
  auto refused = Client::Connect(Options());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  const std::string m = refused.status().message();
  EXPECT_NE(m.find(name_), std::string::npos) << m;
  EXPECT_NE(m.find("mode 0606"), std::string::npos) << m;
  ASSERT_EQ(::chmod(file.c_str(), 0600), 0);
  auto ok = Client::Connect(Options());  // the happy path: our own server, a private segment
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->info().shm_name, name_);
}

// ---- protocol 2: posted commits and chained requests ----------------------------------------

TEST_F(ServerFixture, PostedCommitIsAppliedInOrderAndVisibleToOthers) {
  auto writer = Client::Connect(Options());
  auto reader = Client::Connect(Options());
  ASSERT_TRUE(writer.ok() && reader.ok());
  EXPECT_EQ(writer->info().protocol, 2u);
  const std::vector<std::string> names = {"p0", "p1"};
  const auto keys = Views(names);
  const std::vector<uint64_t> sizes = {8192, 100};
  auto batch = writer->PrepareStore(keys, sizes);
  ASSERT_TRUE(batch.ok()) << batch.status().ToString();
  for (const Slot& s : batch->slots) std::memset(s.bytes.data(), 0x5a, s.bytes.size());
  ASSERT_TRUE(writer->PostCommitStore(keys).ok());
  EXPECT_EQ(writer->posted(), 1u);
  // The writer's next request runs after the commit: it sees both objects.
  auto n = writer->Lookup(keys);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 2u);
  EXPECT_EQ(writer->posted(), 0u);
  EXPECT_EQ(*reader->Lookup(keys), 2u);
  auto got = reader->PrepareRetrieve(keys);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(std::to_integer<int>(got->slots[0].bytes[8191]), 0x5a);
  ASSERT_TRUE(reader->PostCommitRetrieve(keys).ok());
  ASSERT_TRUE(reader->Sync().ok());
  EXPECT_EQ(reader->posted(), 0u);
  EXPECT_EQ(reader->Stats()->at("pinned_objects"), 0u);
}

TEST_F(ServerFixture, FailedPostedCommitFailsTheNextCallWhichIsNotExecuted) {
  auto c = Client::Connect(Options());
  ASSERT_TRUE(c.ok());
  const std::vector<std::string> never = {"never-prepared"}, fresh = {"fresh"};
  const std::vector<uint64_t> size = {4096};
  ASSERT_TRUE(c->PostCommitStore(Views(never)).ok());  // the error comes with the next call
  auto next = c->PrepareStore(Views(fresh), size);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kInvalidArgument);
  const std::string m = next.status().message();
  EXPECT_NE(m.find("posted commit_store"), std::string::npos) << m;
  EXPECT_NE(m.find("not reserved by this session"), std::string::npos) << m;
  EXPECT_NE(m.find("prepare_store was not executed"), std::string::npos) << m;
  // Not executed means nothing was reserved: the key is free for anyone, and the connection
  // is still in step for the next call.
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->at("reserved_objects"), 0u);
  auto again = c->PrepareStore(Views(fresh), size);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->slots[0].status, SlotStatus::kOk);
}

TEST_F(ServerFixture, SyncReportsAFailedPostAndSkipsThePostsChainedAfterIt) {
  auto c = Client::Connect(Options());
  ASSERT_TRUE(c.ok());
  const std::vector<std::string> stored = {"s"}, never = {"never"};
  ASSERT_TRUE(c->Put("s", std::as_bytes(std::span("abc", 3))).ok());
  auto pinned = c->PrepareRetrieve(Views(stored));
  ASSERT_TRUE(pinned.ok());
  ASSERT_EQ(pinned->slots[0].status, SlotStatus::kOk);
  ASSERT_TRUE(c->PostCommitStore(Views(never)).ok());
  ASSERT_TRUE(c->PostCommitRetrieve(Views(stored)).ok());  // chained after the failing one
  EXPECT_EQ(c->posted(), 2u);
  Status s = c->Sync();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("posted commit_store"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("1 later posted request(s) were not executed"), std::string::npos) << s.message();
  EXPECT_EQ(c->posted(), 0u);
  // The skipped commit_retrieve released nothing: the pin is still held, and a plain commit frees it.
  EXPECT_EQ(c->Stats()->at("pinned_objects"), 1u);
  ASSERT_TRUE(c->CommitRetrieve(Views(stored)).ok());
  EXPECT_EQ(c->Stats()->at("pinned_objects"), 0u);
  EXPECT_TRUE(c->Sync().ok());  // nothing posted: nothing to report
}

TEST_F(ServerFixture, PostedRepliesLostToATimeoutAreNamedInTheError) {
  auto c = Client::Connect(Options(std::chrono::milliseconds(200)));
  ASSERT_TRUE(c.ok());
  const std::vector<std::string> k = {"t"};
  const std::vector<uint64_t> size = {4096};
  ASSERT_TRUE(c->PrepareStore(Views(k), size).ok());
  ::kill(pid_, SIGSTOP);
  ASSERT_TRUE(c->PostCommitStore(Views(k)).ok());  // sent; the stopped server never answers
  Status s = c->Sync();
  ::kill(pid_, SIGCONT);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kTimeout);
  EXPECT_NE(s.message().find("outcome of 1 posted request(s) is unknown: commit_store (1 keys)"), std::string::npos)
      << s.message();
  EXPECT_EQ(c->posted(), 0u);
  auto again = c->Lookup(Views(k));  // reconnects
  ASSERT_TRUE(again.ok()) << again.status().ToString();
}

TEST_F(ServerFixture, DestroyingAClientWithPostedCommitsStillAppliesThem) {
  const std::vector<std::string> k = {"d"};
  const std::vector<uint64_t> size = {4096};
  {
    auto c = Client::Connect(Options());
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(c->PrepareStore(Views(k), size).ok());
    ASSERT_TRUE(c->PostCommitStore(Views(k)).ok());
  }  // the destructor waits for the reply (and would log a failure)
  auto other = Client::Connect(Options());
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(*other->Lookup(Views(k)), 1u);
}

// A raw connection, to check what clients other than this one (older, other languages) get.
class RawConnection {
 public:
  explicit RawConnection(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawConnection() { ::close(fd_); }
  bool connected() const { return connected_; }

  // Sends one request map; `body` packs `n` fields after "id" and "op".
  template <typename Body>
  void Send(uint64_t id, std::string_view op, uint32_t n, Body&& body) {
    wire::FrameBuffer fb;
    wire::Packer pk(fb.sbuf());
    pk.pack_map(2 + n);
    wire::PackStr(pk, "id");
    pk.pack_uint64(id);
    wire::PackStr(pk, "op");
    wire::PackStr(pk, op);
    body(pk);
    const std::string_view frame = fb.Finish();
    ASSERT_EQ(::send(fd_, frame.data(), frame.size(), MSG_NOSIGNAL), static_cast<ssize_t>(frame.size()));
  }
  // Reads one reply into the handle; returns the map.
  wire::MapReader Read() {
    uint8_t header[4];
    ReadExact(reinterpret_cast<char*>(header), 4);
    body_.resize(wire::ReadLength(header));
    ReadExact(body_.data(), body_.size());
    handle_ = msgpack::unpack(body_.data(), body_.size());
    auto r = wire::MapReader::From(handle_.get());
    EXPECT_TRUE(r.ok());
    return *r;
  }

 private:
  void ReadExact(char* p, size_t n) {
    while (n > 0) {
      const ssize_t r = ::recv(fd_, p, n, 0);
      ASSERT_GT(r, 0);
      p += r;
      n -= static_cast<size_t>(r);
    }
  }
  int fd_ = -1;
  bool connected_ = false;
  std::string body_;
  msgpack::object_handle handle_;
};

void PackRegister(wire::Packer& pk, std::optional<uint32_t> protocol) {
  wire::PackStr(pk, "instance_id");
  wire::PackStr(pk, "raw");
  wire::PackStr(pk, "namespace");
  pk.pack_map(1);
  wire::PackStr(pk, "model");
  wire::PackStr(pk, "m");
  if (protocol) {
    wire::PackStr(pk, "protocol");
    pk.pack_uint32(*protocol);
  }
}

TEST_F(ServerFixture, VersionOneClientsAreServedVersionOne) {
  RawConnection old_client(socket_);
  ASSERT_TRUE(old_client.connected());
  old_client.Send(1, "register", 2, [](wire::Packer& pk) { PackRegister(pk, std::nullopt); });
  wire::MapReader reg = old_client.Read();
  EXPECT_EQ(*reg.U64("protocol"), 1u);
  // Version 1 knows no `chained`: a request that carries it after a failure still runs.
  old_client.Send(2, "commit_store", 1, [](wire::Packer& pk) {
    wire::PackStr(pk, "keys");
    pk.pack_array(1);
    wire::PackBin(pk, "never");
  });
  EXPECT_FALSE(*old_client.Read().Bool("ok"));
  old_client.Send(3, "health", 1, [](wire::Packer& pk) {
    wire::PackStr(pk, "chained");
    pk.pack_true();
  });
  EXPECT_TRUE(*old_client.Read().Bool("ok"));

  RawConnection newer(socket_);  // a client newer than this server gets the server's version
  newer.Send(1, "register", 3, [](wire::Packer& pk) { PackRegister(pk, 99); });
  EXPECT_EQ(*newer.Read().U64("protocol"), wire::kProtocolVersion);
}

TEST_F(ServerFixture, ChainedRequestAfterAFailureIsNotExecuted) {
  RawConnection c(socket_);
  ASSERT_TRUE(c.connected());
  c.Send(1, "register", 3, [](wire::Packer& pk) { PackRegister(pk, 2); });
  EXPECT_EQ(*c.Read().U64("protocol"), 2u);
  auto keys = [](wire::Packer& pk, std::string_view k) {
    wire::PackStr(pk, "keys");
    pk.pack_array(1);
    wire::PackBin(pk, k);
  };
  // Pipelined: a failing commit, then a chained prepare_store, then an unchained one.
  c.Send(2, "commit_store", 1, [&](wire::Packer& pk) { keys(pk, "never"); });
  for (uint64_t id : {3, 4}) {
    c.Send(id, "prepare_store", id == 3 ? 3 : 2, [&](wire::Packer& pk) {
      keys(pk, id == 3 ? "a" : "b");
      wire::PackStr(pk, "sizes");
      pk.pack_array(1);
      pk.pack_uint64(4096);
      if (id == 3) {
        wire::PackStr(pk, "chained");
        pk.pack_true();
      }
    });
  }
  wire::MapReader failed = c.Read();
  EXPECT_EQ(*failed.U64("id"), 2u);
  EXPECT_FALSE(*failed.Bool("ok"));
  wire::MapReader skipped = c.Read();
  EXPECT_EQ(*skipped.U64("id"), 3u);
  EXPECT_FALSE(*skipped.Bool("ok"));
  EXPECT_EQ(*skipped.Map("error")->Str("code"), wire::kNotExecutedCode);
  wire::MapReader ran = c.Read();
  EXPECT_EQ(*ran.U64("id"), 4u);
  EXPECT_TRUE(*ran.Bool("ok"));
  auto stats = Client::QueryStats(socket_, std::chrono::seconds(5));
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->at("reserved_objects"), 1u);  // "b" only: "a" was never reserved
}

}  // namespace
}  // namespace shmkv
