// Session and TcpServer end to end inside the test process: a real segment, real files, the
// protocol spoken over a socketpair or a loopback TCP connection.
#include "file_worker/session.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "file_worker/file_store.h"
#include "file_worker/tcp_server.h"
#include "file_worker/thread_pool.h"
#include "fw_test_util.h"
#include "shmkv/segment.h"
#include "test_util.h"

namespace shmkv::file_worker {
namespace {

using testing::ReadFile;
using testing::TempDir;
using testing::Tree;

constexpr uint64_t kSegSize = 1 << 20;
constexpr uint64_t kBase = 0x7f0000000000;  // the address the client says its mapping starts at

SharedSegment MakeSegment(std::string_view tag) {
  SegmentCreateOptions o;
  o.name = shmkv::testing::UniqueSegmentName(tag);
  o.size = kSegSize;
  o.pin_with_cuda = false;
  auto s = SharedSegment::Create(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

// Mappings of a segment in this process (/proc/self/maps names it /dev/shm/<name>).
int MappingCount(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);) {
    if (line.size() >= name.size() && line.compare(line.size() - name.size(), name.size(), name) == 0) ++n;
  }
  return n;
}

// The client side of a connection: sends lines, reads reply lines with a deadline.
class Peer {
 public:
  explicit Peer(int fd) : fd_(fd) {}
  ~Peer() { Close(); }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }
  void Send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        ADD_FAILURE() << "send failed: " << std::strerror(errno);
        return;
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
  }
  // The next reply line without '\n'; "<eof>" or "<timeout>" otherwise.
  std::string Line(int timeout_ms = 10000) {
    for (;;) {
      const size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, timeout_ms) != 1) return "<timeout>";
      char chunk[4096];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n <= 0) return "<eof>";
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }
  std::string Call(std::string_view cmd) {
    Send(std::string(cmd) + "\n");
    return Line();
  }

 private:
  int fd_;
  std::string buf_;
};

template <typename F>
SessionOptions Opts(F set) {
  SessionOptions o;
  set(o);
  return o;
}

// Every session test runs with both engines: GetParam() true = READ/WRITE through io_uring.
class SessionTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { OpenStore({}); }
  void TearDown() override { Finish(); }

  void OpenStore(FileStore::Options o) {
    auto s = FileStore::Open(root_.path(), o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::make_unique<FileStore>(std::move(s).value());
  }

  // Starts a session on one end of a socketpair; the test talks through peer_.
  void Start(SessionOptions options = {}) {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    server_fd_ = sv[0];
    peer_ = std::make_unique<Peer>(sv[1]);
    if (GetParam()) {
      if (!platform::kHaveIoUring) GTEST_SKIP() << "this build has no io_uring (portable platform)";
      auto ring = Ring::Create(8);
      ASSERT_TRUE(ring.ok()) << ring.status().ToString();
      uring_ = std::make_unique<UringExecutor>(std::move(ring).value());
      options.uring = uring_.get();
    }
    session_ = std::make_unique<Session>(*store_, pool_, std::move(options));
    thread_ = std::thread([this] {
      end_ = session_->Serve(server_fd_, server_fd_);
      ::shutdown(server_fd_, SHUT_RDWR);  // as TcpServer does: the client sees EOF once the session ends
    });
  }
  // Closes the client side and waits for the session to end.
  Session::End Finish() {
    if (peer_) ::shutdown(peer_->fd(), SHUT_WR);
    if (thread_.joinable()) thread_.join();
    if (server_fd_ >= 0) ::close(server_fd_);
    server_fd_ = -1;
    peer_.reset();
    return end_;
  }
  std::string Attach(const SharedSegment& seg, uint64_t size = kSegSize) {
    return peer_->Call(fmt::format("ATTACH {} {} {}", seg.name(), size, kBase));
  }
  // Non-periodic bytes (xorshift), so a copy to the wrong offset cannot match by accident.
  void Fill(uint64_t off, uint64_t len, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (uint64_t i = 0; i < len; ++i) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      seg_.data()[off + i] = static_cast<std::byte>(x & 0xff);
    }
  }
  std::string PoolBytes(uint64_t off, uint64_t len) {
    return {reinterpret_cast<const char*>(seg_.data() + off), static_cast<size_t>(len)};
  }

  TempDir root_;
  TempDir outside_;
  SharedSegment seg_ = MakeSegment("fws");
  std::unique_ptr<FileStore> store_;
  std::unique_ptr<UringExecutor> uring_;  // before pool_: the pool's tasks use it, so it goes last
  ThreadPool pool_{4};
  std::unique_ptr<Session> session_;
  std::unique_ptr<Peer> peer_;
  std::thread thread_;
  int server_fd_ = -1;
  Session::End end_ = Session::End::kIoError;
};

TEST_P(SessionTest, RoundTripCopiesPoolBytesToAFileAndBack) {
  Start();
  Fill(8192, 20000, 1);
  EXPECT_EQ(Attach(seg_), "OK");
  EXPECT_EQ(peer_->Call(fmt::format("WRITE obj/one.data {} 20000", kBase + 8192)), "OK 20000");
  EXPECT_EQ(ReadFile(root_ / "obj/one.data"), PoolBytes(8192, 20000));
  // READ asks for more than the file holds: it gets the file size. Hex pointers work too.
  EXPECT_EQ(peer_->Call(fmt::format("READ obj/one.data {:#x} 30000", kBase + 65536)), "OK 20000");
  EXPECT_EQ(PoolBytes(65536, 20000), PoolBytes(8192, 20000));
  EXPECT_EQ(peer_->Call("STAT obj/one.data"), "OK 20000");
  EXPECT_EQ(peer_->Call("EXISTS obj/one.data"), "OK 1");
  EXPECT_EQ(peer_->Call("EXISTS obj/two.data"), "OK 0");
  EXPECT_EQ(peer_->Call(fmt::format("WRITE {} {} 10", root_ / "abs.data", kBase)), "OK 10");
  EXPECT_EQ(peer_->Call("LIST"), "OK abs.data obj/one.data");
  EXPECT_EQ(peer_->Call("LIST obj"), "OK obj/one.data");
  EXPECT_EQ(peer_->Call("LIST nothing"), "OK");
  EXPECT_EQ(peer_->Call("DELETE obj/one.data"), "OK 1");
  EXPECT_EQ(peer_->Call("DELETE obj/one.data"), "OK 0");
  EXPECT_EQ(peer_->Call("QUIT"), "OK");
  EXPECT_EQ(peer_->Line(), "<eof>");  // nothing after QUIT; the session closes its side when done
  EXPECT_EQ(Finish(), Session::End::kQuit);
}

TEST_P(SessionTest, HostileInputsEachGetAnErrorAndTheSessionKeepsServing) {
  Start();
  ASSERT_EQ(Attach(seg_), "OK");
  const std::string outside = outside_ / "victim";
  const std::vector<std::string> hostile = {
      fmt::format("WRITE ../escape {} 16", kBase),
      fmt::format("WRITE a/../../escape {} 16", kBase),
      fmt::format("WRITE {} {} 16", outside, kBase),
      fmt::format("READ {} {} 16", outside, kBase),
      fmt::format("WRITE {}/../escape {} 16", root_.path(), kBase),
      fmt::format("WRITE /tmp/shmkv_fw_escape_{} {} 16", ::getpid(), kBase),
      fmt::format("WRITE my\x01file {} 16", kBase),
      fmt::format("WRITE my file {} 16", kBase),
      fmt::format("WRITE f\x1b {} 16", kBase),
      fmt::format("WRITE f {} 16", kBase - 1),                       // below base
      fmt::format("WRITE f {} 2", kBase + kSegSize - 1),             // offset+len past the end
      fmt::format("WRITE f {} 18446744073709551615", kBase + 4096),  // offset+len wraps
      fmt::format("READ f {} 18446744073709551615", kBase),
      fmt::format("WRITE f {} {}", kBase, kSegSize + 1),  // len > segment
      "WRITE f 18446744073709551615 16",
      "WRITE f -1 16",
      fmt::format("WRITE f {} -16", kBase),
      fmt::format("WRITE f +{} 16", kBase),
      "WRITE f abc 16",
      fmt::format("WRITE f {} 12abc", kBase),
      fmt::format("WRITE f {} 99999999999999999999999999", kBase),
      "WRITE f 0x 16",
      "FROB f",
      "write f 1 1",
      "",
      "WRITE f",
      fmt::format("WRITE {} {} 16", std::string(kTempPrefix) + "x", kBase),
      "STAT /etc/passwd",
      "LIST ..",
      "DELETE ../x",
      "ATTACH lmcache_l1_pool_does_not_exist_at_all 4096 0",
  };
  for (const auto& line : hostile) {
    const std::string reply = peer_->Call(line);
    EXPECT_TRUE(reply.starts_with("ERROR ")) << line << " -> " << reply;
    EXPECT_EQ(reply.find('\n'), std::string::npos);
  }
  // The failed ATTACH left the session detached (see the attach test); attach again and work.
  ASSERT_EQ(Attach(seg_), "OK");
  EXPECT_EQ(peer_->Call(fmt::format("WRITE ok {} 16", kBase)), "OK 16");
  EXPECT_TRUE(Tree(outside_.path()).empty());
  EXPECT_EQ(Tree(root_.path()), std::vector<std::string>{"ok"});
  EXPECT_FALSE(std::filesystem::exists(fmt::format("/tmp/shmkv_fw_escape_{}", ::getpid())));
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(root_.path()).parent_path() / "escape"));
}

TEST_P(SessionTest, WriteOrReadBeforeAttachIsAnError) {
  Start();
  EXPECT_EQ(peer_->Call("WRITE f 4096 16"), "ERROR not attached: send ATTACH <shm_name> <size> <base_addr> first");
  EXPECT_TRUE(peer_->Call("READ f 4096 16").starts_with("ERROR not attached"));
  EXPECT_EQ(peer_->Call("EXISTS f"), "OK 0");  // file-only commands need no segment
  EXPECT_TRUE(Tree(root_.path()).empty());
}

TEST_P(SessionTest, ASecondAttachReplacesTheFirstWithoutALeak) {
  SharedSegment other = MakeSegment("fws2");
  Start();
  EXPECT_EQ(MappingCount(seg_.name()), 1);  // this test's own (owner) mapping
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(Attach(i % 2 == 0 ? seg_ : other), "OK");
    ASSERT_EQ(peer_->Call(fmt::format("WRITE f{} {} 100", i, kBase)), "OK 100");
  }
  // The session now maps only `other` (attached last); its mapping of seg_ is gone.
  EXPECT_EQ(MappingCount(seg_.name()), 1);
  EXPECT_EQ(MappingCount(other.name()), 2);
  // The name is taken as given (one leading '/' allowed), as LMCache's worker does: no prefix is
  // added, so the bare name is another (missing) segment.
  EXPECT_EQ(peer_->Call(fmt::format("ATTACH {} {} {}", seg_.name().substr(kSegmentPrefix.size()), 4096, kBase)),
            fmt::format("ERROR attach failed: segment '{}' does not exist", seg_.name().substr(kSegmentPrefix.size())));
  ASSERT_EQ(peer_->Call(fmt::format("ATTACH /{} {} {}", seg_.name(), 4096, kBase)), "OK");
  EXPECT_EQ(MappingCount(other.name()), 1);
  EXPECT_EQ(peer_->Call(fmt::format("WRITE g {} 4097", kBase)), "ERROR len 4097 exceeds the segment size 4096");
  // A failed ATTACH (too large) drops the old mapping too: no WRITE can use stale pointers.
  EXPECT_TRUE(Attach(seg_, kSegSize * 4).starts_with("ERROR attach failed"));
  EXPECT_EQ(MappingCount(seg_.name()), 1);
  EXPECT_TRUE(peer_->Call(fmt::format("WRITE g {} 16", kBase)).starts_with("ERROR not attached"));
}

TEST_P(SessionTest, PipelinedCommandsReplyInCommandOrderWithSerialMeaning) {
  Start(Opts([](SessionOptions& o) { o.queue_depth = 4; }));
  Fill(0, kSegSize / 2, 9);
  std::memset(seg_.data() + kSegSize / 2, 0, kSegSize / 2);
  std::string batch = fmt::format("ATTACH {} {} {}\n", seg_.name(), kSegSize, kBase);
  std::vector<std::string> expected = {"OK"};
  for (int i = 0; i < 16; ++i) {
    const uint64_t len = 1000 + 517 * static_cast<uint64_t>(i);
    const uint64_t src = 4096 * static_cast<uint64_t>(i);
    const uint64_t dst = kSegSize / 2 + 16384 * static_cast<uint64_t>(i);
    // Each READ and STAT depends on the WRITE before it: ordering must make them see it.
    batch += fmt::format("WRITE obj{} {} {}\n", i, kBase + src, len);
    batch += fmt::format("STAT obj{}\n", i);
    batch += fmt::format("READ obj{} {} {}\n", i, kBase + dst, 16384);
    batch += "BOGUS\n";
    expected.insert(expected.end(), {fmt::format("OK {}", len), fmt::format("OK {}", len), fmt::format("OK {}", len),
                                     "ERROR unknown command: 'BOGUS'"});
  }
  batch += "DELETE obj3\nEXISTS obj3\nQUIT\nEXISTS obj4\n";  // nothing after QUIT runs
  expected.insert(expected.end(), {"OK 1", "OK 0", "OK"});
  peer_->Send(batch);
  for (size_t i = 0; i < expected.size(); ++i) ASSERT_EQ(peer_->Line(), expected[i]) << "reply " << i;
  EXPECT_EQ(Finish(), Session::End::kQuit);
  for (int i = 0; i < 16; ++i) {
    const uint64_t len = 1000 + 517 * static_cast<uint64_t>(i);
    EXPECT_EQ(PoolBytes(kSegSize / 2 + 16384 * static_cast<uint64_t>(i), len),
              PoolBytes(4096 * static_cast<uint64_t>(i), len));
  }
}

TEST_P(SessionTest, AnOverlongLineIsRefusedAndTheNextCommandWorks) {
  Start();
  peer_->Send("EXISTS " + std::string(3 * kMaxLineBytes, 'a'));  // no newline yet
  EXPECT_TRUE(peer_->Line().starts_with("ERROR line too long"));
  peer_->Send(std::string(100, 'a') + "\nEXISTS b\n");
  EXPECT_EQ(peer_->Line(), "OK 0");
  peer_->Send("EXISTS " + std::string(kMaxLineBytes, 'c') + "\nEXISTS d\n");  // all at once
  EXPECT_TRUE(peer_->Line().starts_with("ERROR line too long"));
  EXPECT_EQ(peer_->Line(), "OK 0");
}

TEST_P(SessionTest, ACommandCutOffByADisconnectIsNeverRun) {
  Start();
  ASSERT_EQ(Attach(seg_), "OK");
  peer_->Send(fmt::format("WRITE cut {} 40", kBase));  // the client meant 4096, then died
  ::shutdown(peer_->fd(), SHUT_WR);
  EXPECT_TRUE(peer_->Line().starts_with("ERROR incomplete command at end of input"));
  EXPECT_EQ(Finish(), Session::End::kEof);
  EXPECT_TRUE(Tree(root_.path()).empty());
}

TEST_P(SessionTest, AClientThatVanishesWithCommandsInFlightCostsNothing) {
  Start(Opts([](SessionOptions& o) { o.queue_depth = 2; }));
  ASSERT_EQ(Attach(seg_), "OK");
  std::string batch;
  for (int i = 0; i < 20; ++i) batch += fmt::format("WRITE v{} {} {}\n", i, kBase, kSegSize);
  peer_->Send(batch);
  peer_->Close();  // gone without reading a single reply
  thread_.join();
  // Every WRITE either landed whole or not at all; no temp file is left behind.
  for (const auto& name : Tree(root_.path())) {
    EXPECT_FALSE(name.starts_with(kTempPrefix)) << name;
    EXPECT_EQ(std::filesystem::file_size(root_ / name), kSegSize) << name;
  }
}

TEST_P(SessionTest, DirectModeRefusesUnalignedRequestsClearly) {
  FileStore::Options o;
  o.direct = true;
  OpenStore(o);
  Start();
  ASSERT_EQ(Attach(seg_), "OK");
  Fill(4096, 8192, 4);
  const std::string unaligned_off = peer_->Call(fmt::format("WRITE d {} 4096", kBase + 100));
  EXPECT_TRUE(unaligned_off.starts_with("ERROR --direct")) << unaligned_off;
  EXPECT_NE(unaligned_off.find("offset 100"), std::string::npos);
  EXPECT_TRUE(peer_->Call(fmt::format("READ d {} 100", kBase)).starts_with("ERROR --direct"));
  EXPECT_EQ(peer_->Call(fmt::format("WRITE d {} 8192", kBase + 4096)), "OK 8192");
  EXPECT_EQ(peer_->Call(fmt::format("READ d {} 16384", kBase + 65536)), "OK 8192");
  EXPECT_EQ(PoolBytes(65536, 8192), PoolBytes(4096, 8192));
}

// A segment named the way LMCache names its own: no shmkv prefix (issue 9 item 9).
class ForeignSegment {
 public:
  explicit ForeignSegment(uint64_t size) : name_(fmt::format("shmkv_fw_foreign_{}_{}", ::getpid(), counter_++)) {
    const int fd = ::shm_open(("/" + name_).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    EXPECT_NE(p, MAP_FAILED);
    ::close(fd);
    data_ = static_cast<char*>(p);
    size_ = size;
  }
  ~ForeignSegment() {
    ::munmap(data_, size_);
    ::shm_unlink(("/" + name_).c_str());
  }
  const std::string& name() const { return name_; }
  char* data() const { return data_; }

 private:
  static inline int counter_ = 0;
  std::string name_;
  char* data_ = nullptr;
  uint64_t size_ = 0;
};

TEST_P(SessionTest, AttachTakesTheNameAsGivenLikeLMCache) {
  ForeignSegment lmc(kSegSize);
  std::memset(lmc.data(), 'L', 4096);
  Start();
  ASSERT_EQ(peer_->Call(fmt::format("ATTACH {} {} {}", lmc.name(), kSegSize, kBase)), "OK");
  EXPECT_EQ(peer_->Call(fmt::format("WRITE l {} 4096", kBase)), "OK 4096");
  EXPECT_EQ(ReadFile(root_ / "l"), std::string(4096, 'L'));
  ASSERT_EQ(peer_->Call(fmt::format("ATTACH /{} {} {}", lmc.name(), kSegSize, kBase)), "OK");
  EXPECT_EQ(peer_->Call(fmt::format("READ l {} 4096", kBase + 8192)), "OK 4096");
  EXPECT_EQ(std::string(lmc.data() + 8192, 4096), std::string(4096, 'L'));
  for (const std::string& name : std::vector<std::string>{"..", "/..", ".", "/", "a/b", "//x", std::string(256, 'n')}) {
    const std::string reply = peer_->Call(fmt::format("ATTACH {} 4096 0", name));
    EXPECT_TRUE(reply.starts_with("ERROR attach failed: segment name")) << name << " -> " << reply;
  }
}

TEST_P(SessionTest, AttachPrefixRestrictsAttachNames) {
  ForeignSegment lmc(kSegSize);
  Start(Opts([](SessionOptions& o) { o.attach_prefix = std::string(kSegmentPrefix); }));
  EXPECT_EQ(peer_->Call(fmt::format("ATTACH {} {} {}", lmc.name(), kSegSize, kBase)),
            fmt::format("ERROR attach failed: segment name '{}' does not start with --attach-prefix '{}'", lmc.name(),
                        kSegmentPrefix));
  EXPECT_EQ(Attach(seg_), "OK");
  EXPECT_EQ(peer_->Call(fmt::format("ATTACH /{} {} {}", seg_.name(), kSegSize, kBase)), "OK");
}

TEST_P(SessionTest, WithATokenTheFirstLineMustAuthenticate) {
  Start(Opts([](SessionOptions& o) { o.token = "s3cret"; }));
  EXPECT_EQ(peer_->Call("EXISTS x"), "ERROR authentication required: the first line must be AUTH <token>");
  EXPECT_EQ(peer_->Line(), "<eof>");
  EXPECT_EQ(Finish(), Session::End::kAuthFailed);

  Start(Opts([](SessionOptions& o) { o.token = "s3cret"; }));
  EXPECT_EQ(peer_->Call("AUTH s3cre"), "ERROR authentication failed: wrong token");
  EXPECT_EQ(Finish(), Session::End::kAuthFailed);

  Start(Opts([](SessionOptions& o) { o.token = "s3cret"; }));
  EXPECT_EQ(peer_->Call("AUTH s3cret"), "OK");
  EXPECT_EQ(peer_->Call("EXISTS x"), "OK 0");
  EXPECT_EQ(peer_->Call("QUIT"), "OK");
  EXPECT_EQ(Finish(), Session::End::kQuit);

  Start(Opts([](SessionOptions& o) {
    o.token = "s3cret";
    o.auth_timeout_ms = 100;
  }));
  EXPECT_EQ(peer_->Line(), "ERROR authentication timeout: the first line must be AUTH <token>");
  EXPECT_EQ(Finish(), Session::End::kAuthFailed);

  // The admission hook (TCP's --max-clients) runs once the token matched and can refuse.
  int admissions = 0;
  Start(Opts([&](SessionOptions& o) {
    o.token = "s3cret";
    o.on_authenticated = [&] {
      ++admissions;
      return Status::Busy("too many clients (at most 0)");
    };
  }));
  EXPECT_EQ(peer_->Call("AUTH wrong"), "ERROR authentication failed: wrong token");
  EXPECT_EQ(Finish(), Session::End::kAuthFailed);
  EXPECT_EQ(admissions, 0);
  Start(Opts([&](SessionOptions& o) {
    o.token = "s3cret";
    o.on_authenticated = [&] {
      ++admissions;
      return Status::Busy("too many clients (at most 0)");
    };
  }));
  EXPECT_EQ(peer_->Call("AUTH s3cret"), "ERROR too many clients (at most 0)");
  EXPECT_EQ(peer_->Line(), "<eof>");
  EXPECT_EQ(Finish(), Session::End::kAuthFailed);
  EXPECT_EQ(admissions, 1);
}

TEST_P(SessionTest, TheStopDescriptorEndsTheSession) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  Start(Opts([&](SessionOptions& o) { o.stop_fd = p[0]; }));
  EXPECT_EQ(peer_->Call("EXISTS x"), "OK 0");
  ASSERT_EQ(::write(p[1], "x", 1), 1);
  thread_.join();
  EXPECT_EQ(end_, Session::End::kShutdown);
  ::close(p[0]);
  ::close(p[1]);
}

INSTANTIATE_TEST_SUITE_P(Engines, SessionTest, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? "uring" : "threads"; });

TEST(ListenAddress, ParsesLoopbackAndRefusesNames) {
  struct Case {
    const char* text;
    bool loopback;
  };
  for (const Case& c :
       {Case{"127.0.0.1:0", true}, Case{":0", true}, Case{"localhost:80", true}, Case{"127.1.2.3:9", true},
        Case{"[::1]:0", true}, Case{"0.0.0.0:5", false}, Case{"10.1.2.3:5", false}, Case{"[::]:5", false}}) {
    auto a = ParseListenAddress(c.text);
    ASSERT_TRUE(a.ok()) << c.text << ": " << a.status().ToString();
    EXPECT_EQ(a->loopback, c.loopback) << c.text;
  }
  for (const char* bad : {"127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:x", "example.com:80",
                          "::1:80", "[::1]80", "[::1", "1.2.3:4"}) {
    EXPECT_FALSE(ParseListenAddress(bad).ok()) << bad;
  }
  EXPECT_EQ(FormatAddress(ParseListenAddress("[::1]:7")->addr), "[::1]:7");
}

int Connect(const std::string& bound) {
  const uint16_t port = static_cast<uint16_t>(std::stoi(bound.substr(bound.rfind(':') + 1)));
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  return fd;
}

TEST(TcpServer, ServesSeveralClientsAtOnceEachWithItsOwnAttachment) {
  TempDir root;
  auto store = FileStore::Open(root.path(), {});
  ASSERT_TRUE(store.ok());
  SharedSegment a = MakeSegment("fwta");
  SharedSegment b = MakeSegment("fwtb");
  std::memset(a.data(), 'a', kSegSize);
  std::memset(b.data(), 'b', kSegSize);
  auto server = TcpServer::Listen(*ParseListenAddress("127.0.0.1:0"));
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const std::string bound = server->BoundAddress();
  ASSERT_TRUE(bound.starts_with("127.0.0.1:")) << bound;
  ASSERT_NE(bound, "127.0.0.1:0");
  ThreadPool pool(4);
  int stop[2];
  ASSERT_EQ(::pipe(stop), 0);
  TcpServer::Options options;
  options.max_clients = 3;
  options.session.token = "tok";
  std::thread run([&] { EXPECT_TRUE(server->Run(*store, pool, options, stop[0]).ok()); });

  std::vector<std::unique_ptr<Peer>> peers;
  for (int i = 0; i < 3; ++i) peers.push_back(std::make_unique<Peer>(Connect(bound)));
  for (int i = 0; i < 3; ++i) ASSERT_EQ(peers[i]->Call("AUTH tok"), "OK");
  // All three are connected at once; each attaches its own segment.
  for (int i = 0; i < 3; ++i) {
    const SharedSegment& seg = i == 1 ? b : a;
    ASSERT_EQ(peers[i]->Call(fmt::format("ATTACH {} {} {}", seg.name(), kSegSize, kBase)), "OK");
  }
  for (int i = 0; i < 3; ++i) peers[i]->Send(fmt::format("WRITE c{} {} 1000\n", i, kBase));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(peers[i]->Line(), "OK 1000");
  EXPECT_EQ(ReadFile(root / "c0"), std::string(1000, 'a'));
  EXPECT_EQ(ReadFile(root / "c1"), std::string(1000, 'b'));
  EXPECT_EQ(ReadFile(root / "c2"), std::string(1000, 'a'));

  // A fourth client is over the limit once it has authenticated.
  Peer extra(Connect(bound));
  EXPECT_EQ(extra.Call("AUTH tok"), "ERROR too many clients (at most 3)");
  EXPECT_EQ(extra.Line(), "<eof>");
  // QUIT closes one client; the others keep their sessions.
  EXPECT_EQ(peers[0]->Call("QUIT"), "OK");
  EXPECT_EQ(peers[0]->Line(), "<eof>");
  EXPECT_EQ(peers[1]->Call("STAT c1"), "OK 1000");

  ASSERT_EQ(::write(stop[1], "x", 1), 1);
  run.join();
  EXPECT_EQ(peers[2]->Line(), "<eof>");  // the stop closed the remaining sessions
  ::close(stop[0]);
  ::close(stop[1]);
}

TEST(TcpServer, RefusesToRunWithoutAToken) {
  TempDir root;
  auto store = FileStore::Open(root.path(), {});
  ASSERT_TRUE(store.ok());
  auto server = TcpServer::Listen(*ParseListenAddress("127.0.0.1:0"));
  ASSERT_TRUE(server.ok());
  ThreadPool pool(1);
  const Status s = server->Run(*store, pool, TcpServer::Options{}, -1);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("needs a token"), std::string::npos) << s.message();
}

// Issue 9 item 2: connections that never authenticate cannot take the clients' places.
TEST(TcpServer, UnauthenticatedConnectionsAreCappedOldestFirstAndTimeOut) {
  TempDir root;
  auto store = FileStore::Open(root.path(), {});
  ASSERT_TRUE(store.ok());
  auto server = TcpServer::Listen(*ParseListenAddress("127.0.0.1:0"));
  ASSERT_TRUE(server.ok());
  const std::string bound = server->BoundAddress();
  ThreadPool pool(2);
  int stop[2];
  ASSERT_EQ(::pipe(stop), 0);
  TcpServer::Options options;
  options.max_clients = 1;
  options.max_unauthenticated = 2;
  options.session.token = "tok";
  options.session.auth_timeout_ms = 1500;
  std::thread run([&] { EXPECT_TRUE(server->Run(*store, pool, options, stop[0]).ok()); });

  std::vector<std::unique_ptr<Peer>> idle;
  for (int i = 0; i < 5; ++i) idle.push_back(std::make_unique<Peer>(Connect(bound)));
  // Each new connection over the cap closed the oldest waiting one: 0, 1 and 2 are gone.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(idle[i]->Line(), "ERROR too many unauthenticated connections (at most 2); closing the oldest") << i;
    EXPECT_EQ(idle[i]->Line(), "<eof>") << i;
  }
  // A client that authenticates right away gets in although the waiting room is full.
  Peer good(Connect(bound));
  EXPECT_EQ(good.Call("AUTH tok"), "OK");
  EXPECT_EQ(good.Call("EXISTS x"), "OK 0");
  // The last waiting one times out (idle[3] was pushed out by `good`).
  EXPECT_EQ(idle[3]->Line(), "ERROR too many unauthenticated connections (at most 2); closing the oldest");
  EXPECT_EQ(idle[4]->Line(3000), "ERROR authentication timeout: the first line must be AUTH <token>");
  EXPECT_EQ(idle[4]->Line(), "<eof>");
  // The authenticated client is untouched by all of this.
  EXPECT_EQ(good.Call("EXISTS y"), "OK 0");

  ASSERT_EQ(::write(stop[1], "x", 1), 1);
  run.join();
  ::close(stop[0]);
  ::close(stop[1]);
}

}  // namespace
}  // namespace shmkv::file_worker
