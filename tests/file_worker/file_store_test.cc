// FileStore against real files in a temporary root: round trips, atomic replacement, and every
// way out of the root (.., absolute paths, symlinks at any component, FIFOs), with both resolvers.
#include "file_worker/file_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "file_worker/uring.h"
#include "fw_test_util.h"

namespace shmkv::file_worker {
namespace {

using testing::ReadFile;
using testing::TempDir;
using testing::Tree;
using testing::WriteFile;

std::vector<std::byte> Pattern(size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed) & 0xff);
  return v;
}

std::string AsString(const std::vector<std::byte>& v) {
  return {reinterpret_cast<const char*>(v.data()), v.size()};
}

// Each test runs with openat2 (where the kernel has it) and with the component walk, and with
// READ/WRITE bytes moved by pread/pwrite and by io_uring.
class FileStoreTest : public ::testing::TestWithParam<std::tuple<bool, bool>> {
 protected:
  void SetUp() override {
    FileStore::Options o;
    o.allow_openat2 = std::get<0>(GetParam());
    if (std::get<1>(GetParam())) {
      if (!platform::kHaveIoUring) GTEST_SKIP() << "this build has no io_uring (portable platform)";
      auto ring = Ring::Create(4);
      ASSERT_TRUE(ring.ok()) << ring.status().ToString();
      io_ = std::make_unique<UringExecutor>(std::move(ring).value());
    }
    auto s = FileStore::Open(root_.path(), o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::make_unique<FileStore>(std::move(s).value());
  }
  RelPath Rel(std::string_view p) {
    auto r = store_->Normalize(p);
    EXPECT_TRUE(r.ok()) << p << ": " << r.status().ToString();
    return std::move(r).value();
  }

  TempDir root_;
  TempDir outside_;
  std::unique_ptr<FileStore> store_;
  std::unique_ptr<UringExecutor> io_;  // null: pread/pwrite
};

INSTANTIATE_TEST_SUITE_P(ResolversAndEngines, FileStoreTest,
                         ::testing::Combine(::testing::Values(true, false), ::testing::Values(false, true)),
                         [](const auto& p) {
                           return std::string(std::get<0>(p.param) ? "openat2" : "walk") +
                                  (std::get<1>(p.param) ? "_uring" : "_threads");
                         });

TEST_P(FileStoreTest, NormalizeKeepsRelativePathsAndDropsDotsAndEmptyComponents) {
  EXPECT_EQ(Rel("a").str(), "a");
  EXPECT_EQ(Rel("./a//b/").str(), "a/b");
  EXPECT_EQ(Rel("a/./b/c.data").str(), "a/b/c.data");
  EXPECT_EQ(Rel("k-SEP-v.data").str(), "k-SEP-v.data");
  EXPECT_EQ(Rel("caf\xc3\xa9").str(), "caf\xc3\xa9");  // UTF-8 names are fine
}

TEST_P(FileStoreTest, NormalizeAcceptsAbsolutePathsInsideTheRootOnly) {
  EXPECT_EQ(Rel(root_.path() + "/x/y").str(), "x/y");
  EXPECT_EQ(Rel(store_->root() + "/z").str(), "z");
  for (const std::string& bad : {std::string("/etc/passwd"), outside_.path() + "/f", root_.path() + "evil/f",
                                 root_.path() + "/../x", std::string("/")}) {
    auto r = store_->Normalize(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_FALSE(store_->Normalize(root_.path()).ok());                      // the root is not a file
  EXPECT_TRUE(store_->Normalize(root_.path(), /*allow_root=*/true).ok());  // but LIST may name it
}

TEST_P(FileStoreTest, NormalizeRefusesTraversalControlBytesAndReservedNames) {
  for (const std::string& bad :
       {std::string(".."), std::string("../x"), std::string("a/../../x"), std::string("a/.."), std::string("a/b/.."),
        std::string(""), std::string("."), std::string("a b"), std::string("a\tb"), std::string("a\nb"),
        std::string("a\x7f"), std::string("a", 1) + '\0', std::string(kTempPrefix) + "123",
        "d/" + std::string(kTempPrefix), std::string(256, 'n'), std::string(4097, 'a')}) {
    auto r = store_->Normalize(bad);
    EXPECT_FALSE(r.ok()) << "accepted " << bad;
  }
  auto dots = store_->Normalize("a/../b");
  ASSERT_FALSE(dots.ok());
  EXPECT_NE(dots.status().message().find("'..'"), std::string::npos);
}

TEST_P(FileStoreTest, WriteReadStatExistsDeleteRoundTrip) {
  const auto data = Pattern(100000, 7);
  auto w = store_->Write(Rel("deep/er/obj.data"), data.data(), data.size(), io_.get());
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(*w, data.size());
  EXPECT_EQ(ReadFile(root_ / "deep/er/obj.data"), AsString(data));
  struct stat st {};
  ASSERT_EQ(::stat((root_ / "deep/er/obj.data").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  EXPECT_EQ(*store_->Stat(Rel("deep/er/obj.data")), data.size());
  EXPECT_TRUE(*store_->Exists(Rel("deep/er/obj.data")));
  EXPECT_FALSE(*store_->Exists(Rel("deep/er/none")));
  EXPECT_FALSE(*store_->Exists(Rel("nodir/none")));
  EXPECT_FALSE(*store_->Exists(Rel("deep/er/obj.data/below")));  // a file is no directory

  std::vector<std::byte> back(200000, std::byte{0xee});
  auto r = store_->Read(Rel("deep/er/obj.data"), back.data(), back.size(), io_.get());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, data.size());  // min(len, file size)
  EXPECT_EQ(std::memcmp(back.data(), data.data(), data.size()), 0);
  EXPECT_EQ(back[data.size()], std::byte{0xee});  // nothing past the file size is touched

  auto partial = store_->Read(Rel("deep/er/obj.data"), back.data(), 10, io_.get());
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ(*partial, 10u);

  EXPECT_TRUE(*store_->Delete(Rel("deep/er/obj.data")));
  EXPECT_FALSE(*store_->Delete(Rel("deep/er/obj.data")));
  auto gone = store_->Read(Rel("deep/er/obj.data"), back.data(), 1, io_.get());
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(store_->Stat(Rel("deep/er/obj.data")).ok());
}

TEST_P(FileStoreTest, WriteReplacesAtomicallyAndLeavesNoTempFiles) {
  const auto one = Pattern(5000, 1);
  const auto two = Pattern(3000, 2);
  ASSERT_TRUE(store_->Write(Rel("f"), one.data(), one.size(), io_.get()).ok());
  const int old_fd = ::open((root_ / "f").c_str(), O_RDONLY);  // a reader of the old version
  ASSERT_GE(old_fd, 0);
  ASSERT_TRUE(store_->Write(Rel("f"), two.data(), two.size(), io_.get()).ok());
  EXPECT_EQ(ReadFile(root_ / "f"), AsString(two));
  // The old reader keeps the complete old bytes: the new file arrived by rename, not in place.
  std::string old(one.size(), '\0');
  EXPECT_EQ(::pread(old_fd, old.data(), old.size(), 0), static_cast<ssize_t>(one.size()));
  EXPECT_EQ(old, AsString(one));
  ::close(old_fd);
  EXPECT_EQ(Tree(root_.path()), std::vector<std::string>{"f"});

  ASSERT_TRUE(store_->Write(Rel("empty"), nullptr, 0, io_.get()).ok());
  EXPECT_EQ(*store_->Stat(Rel("empty")), 0u);
}

TEST_P(FileStoreTest, AFailedWriteLeavesNeitherTheFileNorATempFile) {
  // Pool memory that faults (as after the owner shrank the segment): pwrite reports EFAULT.
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  void* hole = ::mmap(nullptr, page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(hole, MAP_FAILED);
  auto w = store_->Write(Rel("sub/f"), static_cast<const std::byte*>(hole), page, io_.get());
  ::munmap(hole, page);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(Tree(root_.path()), std::vector<std::string>{"sub"});
}

TEST_P(FileStoreTest, ListIsRecursiveSortedAndHidesLinksAndTempFiles) {
  const auto d = Pattern(10, 3);
  for (const char* p : {"b", "a/x", "a/y/z", "c.data"})
    ASSERT_TRUE(store_->Write(Rel(p), d.data(), d.size(), io_.get()).ok());
  WriteFile(root_ / (std::string(kTempPrefix) + "leftover"), "torn");
  ASSERT_EQ(::symlink(outside_.path().c_str(), (root_ / "link").c_str()), 0);
  ASSERT_EQ(::mkdir((root_ / "empty").c_str(), 0700), 0);
  WriteFile(root_ / "has space", "x");

  auto all = store_->List(*store_->Normalize(".", true));
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(*all, (std::vector<std::string>{"a/x", "a/y/z", "b", "c.data"}));
  auto sub = store_->List(Rel("a"));
  ASSERT_TRUE(sub.ok());
  EXPECT_EQ(*sub, (std::vector<std::string>{"a/x", "a/y/z"}));
  EXPECT_TRUE(store_->List(Rel("missing"))->empty());
  EXPECT_FALSE(store_->List(Rel("b")).ok());     // a file
  EXPECT_FALSE(store_->List(Rel("link")).ok());  // never followed
}

TEST_P(FileStoreTest, ASymlinkedDirectoryInsideTheRootLeadsNowhere) {
  WriteFile(outside_ / "secret", "top secret");
  ASSERT_EQ(::symlink(outside_.path().c_str(), (root_ / "out").c_str()), 0);
  ASSERT_EQ(::mkdir((root_ / "d").c_str(), 0700), 0);
  ASSERT_EQ(::symlink("../out", (root_ / "d/rel").c_str()), 0);
  const auto data = Pattern(64, 9);
  std::vector<std::byte> buf(64);

  for (const char* p : {"out/new", "out/secret", "d/rel/new", "d/rel/secret", "out/sub/new"}) {
    auto w = store_->Write(Rel(p), data.data(), data.size(), io_.get());
    ASSERT_FALSE(w.ok()) << p;
    EXPECT_NE(w.status().message().find("symbolic link"), std::string::npos) << w.status().message();
    EXPECT_FALSE(store_->Read(Rel(p), buf.data(), buf.size(), io_.get()).ok()) << p;
    EXPECT_FALSE(store_->Stat(Rel(p)).ok()) << p;
    EXPECT_FALSE(store_->Exists(Rel(p)).ok()) << p;
    EXPECT_FALSE(store_->Delete(Rel(p)).ok()) << p;
  }
  EXPECT_EQ(Tree(outside_.path()), std::vector<std::string>{"secret"});
  EXPECT_EQ(ReadFile(outside_ / "secret"), "top secret");
}

TEST_P(FileStoreTest, ASymlinkAsTheFileItselfIsNeverFollowedNorReplaced) {
  WriteFile(outside_ / "target", "precious");
  ASSERT_EQ(::symlink((outside_ / "target").c_str(), (root_ / "leaf").c_str()), 0);
  const auto data = Pattern(64, 5);
  std::vector<std::byte> buf(64);
  EXPECT_FALSE(store_->Write(Rel("leaf"), data.data(), data.size(), io_.get()).ok());
  EXPECT_FALSE(store_->Read(Rel("leaf"), buf.data(), buf.size(), io_.get()).ok());
  EXPECT_FALSE(store_->Stat(Rel("leaf")).ok());
  EXPECT_FALSE(store_->Exists(Rel("leaf")).ok());
  EXPECT_FALSE(store_->Delete(Rel("leaf")).ok());
  EXPECT_EQ(ReadFile(outside_ / "target"), "precious");
  struct stat st {};
  ASSERT_EQ(::lstat((root_ / "leaf").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  // A dangling link pointing out, where a WRITE would have created the target.
  ASSERT_EQ(::symlink((outside_ / "created").c_str(), (root_ / "dangling").c_str()), 0);
  EXPECT_FALSE(store_->Write(Rel("dangling"), data.data(), data.size(), io_.get()).ok());
  EXPECT_EQ(Tree(outside_.path()), std::vector<std::string>{"target"});
}

TEST_P(FileStoreTest, NonRegularFilesAreRefusedWithoutBlocking) {
  ASSERT_EQ(::mkfifo((root_ / "fifo").c_str(), 0600), 0);
  ASSERT_EQ(::mkdir((root_ / "dir").c_str(), 0700), 0);
  std::vector<std::byte> buf(16);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = store_->Read(Rel("fifo"), buf.data(), buf.size(), io_.get());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a regular file"), std::string::npos) << r.status().message();
  EXPECT_FALSE(store_->Write(Rel("fifo"), buf.data(), buf.size(), io_.get()).ok());
  EXPECT_FALSE(store_->Write(Rel("dir"), buf.data(), buf.size(), io_.get()).ok());
  EXPECT_FALSE(store_->Read(Rel("dir"), buf.data(), buf.size(), io_.get()).ok());
  EXPECT_FALSE(store_->Delete(Rel("dir")).ok());
  EXPECT_FALSE(store_->Stat(Rel("dir")).ok());
  EXPECT_FALSE(*store_->Exists(Rel("dir")));
  // A regular file where a directory is needed.
  WriteFile(root_ / "plain", "x");
  EXPECT_FALSE(store_->Write(Rel("plain/below"), buf.data(), buf.size(), io_.get()).ok());
}

TEST(FileStoreOpen, CreatesTheRootAndRefusesSlash) {
  TempDir parent;
  auto s = FileStore::Open(parent / "a/b/root", {});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE(std::filesystem::is_directory(parent / "a/b/root"));
  EXPECT_FALSE(FileStore::Open("/", {}).ok());
  EXPECT_FALSE(FileStore::Open("", {}).ok());
  FileStore::Options no_create;
  no_create.create_root = false;
  EXPECT_FALSE(FileStore::Open(parent / "missing", no_create).ok());
}

class FileStoreDirect : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(Engines, FileStoreDirect, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? "uring" : "threads"; });

TEST_P(FileStoreDirect, RoundTripsAlignedBuffers) {
  std::unique_ptr<UringExecutor> io;
  if (GetParam()) {
    if (!platform::kHaveIoUring) GTEST_SKIP() << "this build has no io_uring (portable platform)";
    auto ring = Ring::Create(4);
    ASSERT_TRUE(ring.ok()) << ring.status().ToString();
    io = std::make_unique<UringExecutor>(std::move(ring).value());
  }
  TempDir root;  // /var/tmp: a disk file system
  FileStore::Options o;
  o.direct = true;
  auto s = FileStore::Open(root.path(), o);
  if (!s.ok() && s.status().code() == StatusCode::kUnavailable) GTEST_SKIP() << s.status().ToString();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const size_t n = 3 * 4096;
  auto* src = static_cast<std::byte*>(std::aligned_alloc(4096, n));
  auto* dst = static_cast<std::byte*>(std::aligned_alloc(4096, 2 * n));
  for (size_t i = 0; i < n; ++i) src[i] = static_cast<std::byte>(i * 7);
  auto rel = s->Normalize("direct.bin");
  ASSERT_TRUE(rel.ok());
  auto w = s->Write(*rel, src, n, io.get());
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  auto r = s->Read(*rel, dst, 2 * n, io.get());  // asks for more than the file holds
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, n);
  EXPECT_EQ(std::memcmp(src, dst, n), 0);
  std::free(src);
  std::free(dst);
}

TEST(FileStoreDirect, ARootWithoutODirectFailsAtOpenWithAClearMessage) {
  // tmpfs refused O_DIRECT before Linux 6.6 and accepts it since; either way the probe at Open
  // decides, says why, and leaves nothing behind.
  if (!std::filesystem::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  TempDir root("/dev/shm");
  FileStore::Options o;
  o.direct = true;
  auto s = FileStore::Open(root.path(), o);
  EXPECT_TRUE(Tree(root.path()).empty());
  if (s.ok()) GTEST_SKIP() << "this kernel's tmpfs supports O_DIRECT";
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(s.status().message().find("does not support O_DIRECT"), std::string::npos) << s.status().message();
}

TEST(Uring, ARingThatCannotBeSetUpIsAClearUnavailableError) {
  // 0 entries is refused by io_uring_setup (EINVAL), standing in for ENOSYS/EPERM in a container.
  auto ring = Ring::Create(0);
  ASSERT_FALSE(ring.ok());
  EXPECT_EQ(ring.status().code(), StatusCode::kUnavailable);
  const char* expected = platform::kHaveIoUring ? "io_uring_queue_init(0) failed" : "this build has none";
  EXPECT_NE(ring.status().message().find(expected), std::string::npos) << ring.status().message();
}

TEST(Uring, ManyThreadsShareOneRingAndEachGetsItsOwnResult) {
  // More concurrent callers than ring entries: the executor queues them, none gets another's result.
  if (!platform::kHaveIoUring) GTEST_SKIP() << "this build has no io_uring (portable platform)";
  auto ring = Ring::Create(2);
  ASSERT_TRUE(ring.ok()) << ring.status().ToString();
  UringExecutor io(std::move(ring).value());
  TempDir dir;
  std::vector<std::thread> threads;
  std::vector<int> bad(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      const std::string path = dir / ("f" + std::to_string(t));
      const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0) {
        bad[t] = 1;
        return;
      }
      const auto data = Pattern(4096 + static_cast<size_t>(t), static_cast<uint32_t>(t + 1));
      for (int i = 0; i < 50; ++i) {
        if (io.Write(fd, data.data(), static_cast<uint32_t>(data.size()), 0) != static_cast<int64_t>(data.size())) {
          bad[t] = 2;
        }
        std::vector<std::byte> back(data.size() + 100);
        if (io.Read(fd, back.data(), static_cast<uint32_t>(back.size()), 0) != static_cast<int64_t>(data.size()) ||
            std::memcmp(back.data(), data.data(), data.size()) != 0) {
          bad[t] = 3;
        }
      }
      // Errors come back as -errno, as pread would report them.
      if (io.Read(-1, nullptr, 1, 0) != -EBADF) bad[t] = 4;
      ::close(fd);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad, std::vector<int>(8, 0));
}

}  // namespace
}  // namespace shmkv::file_worker
