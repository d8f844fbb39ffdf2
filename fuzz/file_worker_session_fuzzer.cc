// libFuzzer target: a whole file worker Session (src/file_worker/session.*) fed one input as the
// byte stream of a client: command lines, pipelined, over a real 64 KiB shared-memory segment and
// a real temporary root directory. No sockets: the input is a memfd (read to its end, then end of
// input), the replies go to another memfd.
//
// In the input, "$SEG" stands for this process's segment name (so seeds and the dictionary work
// in every run) and "$LONG" for 9000 bytes of 'a' (a line over the 8192-byte limit, which
// libFuzzer's slowly growing input length would take long to reach). An input that starts with
// '!' and a flags byte runs with: 1 a token ("tok": the first line must be "AUTH tok"), 2
// --attach-prefix "shmkv_fuzz_", 4 the io_uring engine (where the kernel has it). Rules checked
// after each input (a violation aborts):
//   - one reply line per command line, each "OK..." or "ERROR ...", in the framing clients use;
//   - nothing appears outside the root, and no temp file of a WRITE is left behind;
//   - the segment's mapping is dropped when the session ends (no leak).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

#include "file_worker/file_store.h"
#include "file_worker/protocol.h"
#include "file_worker/session.h"
#include "file_worker/thread_pool.h"
#include "file_worker/uring.h"

namespace {

using namespace shmkv::file_worker;
namespace fs = std::filesystem;

constexpr size_t kSegmentBytes = 64 * 1024;

[[noreturn]] void Violated(const char* rule, const std::string& detail) {
  std::fprintf(stderr, "fuzz rule violated: %s: %s\n", rule, detail.c_str());
  std::abort();
}

#define FUZZ_CHECK(cond, detail)          \
  do {                                    \
    if (!(cond)) Violated(#cond, detail); \
  } while (0)

// Everything that lives for the whole run: the segment, the directories, the I/O threads.
struct World {
  World() {
    base = (fs::temp_directory_path() / "shmkv_fuzz_session_XXXXXX").string();
    if (::mkdtemp(base.data()) == nullptr) std::abort();
    root = base + "/root";
    fs::create_directories(root);
    // A file beside the root: it must never change.
    std::FILE* f = std::fopen((base + "/outside").c_str(), "w");
    if (f == nullptr) std::abort();
    std::fputs("outside the root", f);
    std::fclose(f);
    auto s = FileStore::Open(root, {});
    if (!s.ok()) std::abort();
    store = std::make_unique<FileStore>(std::move(s).value());
    segment = "shmkv_fuzz_" + std::to_string(::getpid());
    const int fd = ::shm_open(("/" + segment).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 || ::ftruncate(fd, kSegmentBytes) != 0) std::abort();
    ::close(fd);
    if (auto ring = Ring::Create(4); ring.ok()) uring = std::make_unique<UringExecutor>(std::move(ring).value());
  }
  ~World() {
    ::shm_unlink(("/" + segment).c_str());
    std::error_code ec;
    fs::remove_all(base, ec);
  }
  std::string base;
  std::string root;
  std::string segment;
  std::unique_ptr<FileStore> store;
  std::unique_ptr<UringExecutor> uring;  // before the pool: its tasks use it, so it goes last
  ThreadPool pool{2};
};

World& TheWorld() {
  static World world;
  return world;
}

int MemFd(const char* name, std::string_view content) {
  const int fd = ::memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) std::abort();
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n <= 0) std::abort();
    done += static_cast<size_t>(n);
  }
  if (::lseek(fd, 0, SEEK_SET) != 0) std::abort();
  return fd;
}

std::string ReadAll(int fd) {
  std::string out;
  if (::lseek(fd, 0, SEEK_SET) != 0) std::abort();
  char buf[65536];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  return out;
}

// The replies a session owes: one per '\n'-terminated line up to and including the first QUIT
// (with a token: or the first line that is not "AUTH <token>"), plus one for bytes after the last
// '\n' (an incomplete or overlong command), unless the session ended before. An overlong line
// gets its reply without being parsed, so it is never the session's first command.
size_t ExpectedReplies(std::string_view input, const std::string& token) {
  size_t n = 0;
  size_t start = 0;
  bool authenticated = token.empty();
  for (size_t nl; (nl = input.find('\n', start)) != std::string_view::npos; start = nl + 1) {
    ++n;
    const std::string_view line = input.substr(start, nl - start);
    if (line.size() > kMaxLineBytes + 1) continue;
    auto cmd = ParseCommand(line);
    if (!authenticated) {
      if (!cmd.ok() || cmd->verb != Verb::kAuth || cmd->text != token) return n;
      authenticated = true;
      continue;
    }
    if (cmd.ok() && cmd->verb == Verb::kQuit) return n;
  }
  return n + (start < input.size() ? 1 : 0);
}

void ReplaceAll(std::string& s, std::string_view what, const std::string& with) {
  for (size_t at = 0; (at = s.find(what, at)) != std::string::npos; at += with.size()) s.replace(at, what.size(), with);
}

bool Mapped(const std::string& segment) {
  std::FILE* maps = std::fopen("/proc/self/maps", "r");
  if (maps == nullptr) return false;
  char line[4096];
  bool found = false;
  while (!found && std::fgets(line, sizeof line, maps) != nullptr) {
    found = std::strstr(line, ("/dev/shm/" + segment).c_str()) != nullptr;
  }
  std::fclose(maps);
  return found;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = TheWorld();
  std::string input(reinterpret_cast<const char*>(data), size);
  SessionOptions options;
  options.queue_depth = 4;
  if (input.size() >= 2 && input[0] == '!') {
    const auto flags = static_cast<unsigned char>(input[1]);
    if ((flags & 1) != 0) options.token = "tok";
    if ((flags & 2) != 0) options.attach_prefix = "shmkv_fuzz_";
    if ((flags & 4) != 0) options.uring = w.uring.get();
    input.erase(0, 2);
  }
  ReplaceAll(input, "$SEG", w.segment);
  ReplaceAll(input, "$LONG", std::string(9000, 'a'));

  const int in_fd = MemFd("fuzz-in", input);
  const int out_fd = MemFd("fuzz-out", "");
  {
    Session session(*w.store, w.pool, options);
    (void)session.Serve(in_fd, out_fd);
  }
  const std::string out = ReadAll(out_fd);
  ::close(in_fd);
  ::close(out_fd);

  // Framing: whole lines, each a reply.
  FUZZ_CHECK(out.empty() || out.back() == '\n', out.substr(0, 200));
  size_t replies = 0;
  for (size_t start = 0, nl; (nl = out.find('\n', start)) != std::string::npos; start = nl + 1) {
    const std::string_view line(out.data() + start, nl - start);
    FUZZ_CHECK(line == "OK" || line.starts_with("OK ") || line.starts_with("ERROR "), std::string(line.substr(0, 200)));
    ++replies;
  }
  const size_t expected = ExpectedReplies(input, options.token);
  FUZZ_CHECK(replies == expected, "replies " + std::to_string(replies) + ", expected " + std::to_string(expected));
  // (Reading /proc/self/maps is slow: only when the input could have mapped the segment.)
  if (input.find("ATTACH") != std::string::npos) {
    FUZZ_CHECK(!Mapped(w.segment), "the segment is still mapped after the session ended");
  }

  // Confinement: the base directory holds the root and the untouched file, nothing else; no temp
  // file of a WRITE survives its command. Then the root is emptied for the next input.
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(w.base)) {
    const std::string name = e.path().filename().string();
    FUZZ_CHECK(name == "root" || name == "outside", "unexpected entry beside the root: " + name);
    ++entries;
  }
  FUZZ_CHECK(entries == 2 && fs::file_size(w.base + "/outside") == 16, "the file beside the root changed");
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(w.root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    FUZZ_CHECK(!name.starts_with(kTempPrefix), "temp file left behind: " + it->path().string());
  }
  for (const auto& e : fs::directory_iterator(w.root)) fs::remove_all(e.path(), ec);
  return 0;
}
