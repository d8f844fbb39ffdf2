#include "server/file_worker_link.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "common/log.h"
#include "common/syscall.h"
#include "platform/process.h"
#include "shmkv/segment.h"

extern char** environ;

namespace shmkv {

namespace {

constexpr auto kHandshakeTimeout = std::chrono::seconds(10);

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("ended with wait status {:#x}", status);
}

// Reaps the child: politely (it should exit by itself) for up to `grace`, then with SIGKILL.
std::string Reap(pid_t pid, std::chrono::milliseconds grace) {
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (;;) {
    auto r = sys::Call([&] { return ::waitpid(pid, &status, WNOHANG); });
    if (!r.ok()) return fmt::format("could not be waited for ({})", std::strerror(r.err));
    if (r.value == pid) return DescribeExit(status);
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::kill(pid, SIGKILL);
  sys::Call([&] { return ::waitpid(pid, &status, 0); });
  return "did not exit and was killed";
}

Result<uint64_t> ParseReply(std::string_view line) {
  if (line == "OK") return uint64_t{0};
  if (line.starts_with("OK ")) {
    uint64_t n = 0;
    const std::string_view digits = line.substr(3);
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
    if (ec == std::errc{} && p == digits.data() + digits.size()) return n;
    return Status::Protocol(fmt::format("file worker reply '{}' is not OK <number>", line.substr(0, 80)));
  }
  if (line.starts_with("ERROR ")) return Status::IoError(std::string(line.substr(6)));
  return Status::Protocol(fmt::format("unexpected file worker reply '{}'", line.substr(0, 80)));
}

// One blocking line read with a deadline (the start-up handshake only).
Result<std::string> ReadLineBlocking(int fd, std::chrono::milliseconds timeout) {
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Status::Timeout("no reply from the file worker within 10 s");
    pollfd p{fd, POLLIN, 0};
    auto r = sys::Call([&] { return ::poll(&p, 1, static_cast<int>(left.count())); });
    if (!r.ok()) return r.ToStatus("poll on the file worker's stdout");
    if (r.value == 0) continue;
    char c = 0;
    auto n = sys::Call([&] { return ::read(fd, &c, 1); });
    if (!n.ok()) return n.ToStatus("reading the file worker's stdout");
    if (n.value == 0) return Status::Unavailable("the file worker closed its stdout (it exited; see its stderr above)");
    if (c == '\n') return line;
    line.push_back(c);
  }
}

}  // namespace

std::string DefaultFileWorkerBinary() {
  if (auto path = platform::ExecutablePath(); path.ok()) {
    const std::filesystem::path exe(*path);
    for (const auto& candidate :
         {exe.parent_path() / "shmkv-file-worker", exe.parent_path() / "file_worker" / "shmkv-file-worker"}) {
      if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
    }
  }
  return "shmkv-file-worker";  // posix_spawnp searches PATH
}

namespace {

struct Child {
  pid_t pid = 0;
  sys::UniqueFd to_worker, from_worker;
};

// The worker's fd for FileWorkerOptions::lock_fd (after stdin, stdout and stderr).
constexpr int kWorkerLockFd = 3;

Result<Child> SpawnChild(const FileWorkerOptions& options) {
  // A copy above the low numbers, so the dup2s below never clobber it whatever fd it has here.
  sys::UniqueFd lock_copy;
  if (options.lock_fd >= 0) {
    auto d = sys::Call([&] { return ::fcntl(options.lock_fd, F_DUPFD_CLOEXEC, 10); });
    if (!d.ok()) return Status::FromErrno("passing the disk directory's lock to the file worker", d.err);
    lock_copy = sys::UniqueFd(d.value);
  }
  sys::UniqueFd to_r, to_w, from_r, from_w;
  SHMKV_RETURN_IF_ERROR(platform::CloexecPipe(to_r, to_w).WithContext("pipe for the file worker"));
  SHMKV_RETURN_IF_ERROR(platform::CloexecPipe(from_r, from_w).WithContext("pipe for the file worker"));

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, to_r.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, from_w.get(), STDOUT_FILENO);
  if (lock_copy.valid()) posix_spawn_file_actions_adddup2(&actions, lock_copy.get(), kWorkerLockFd);
  // Nothing else of the server's: client sockets and the listener would stay open in the worker
  // (a restarted one is spawned while clients are connected).
  posix_spawn_file_actions_addclosefrom_np(&actions, lock_copy.valid() ? kWorkerLockFd + 1 : STDERR_FILENO + 1);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Its own process group: a terminal's Ctrl-C reaches the server, which then stops the worker
  // in order (closing its stdin) instead of both racing. SIGPIPE back to default for the child.
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF);

  const std::string depth = std::to_string(options.queue_depth);
  // --parent-pid: the worker dies with us (a SIGKILLed server must not leave it writing);
  // --attach-prefix: it can only ever map shmkv pools.
  std::vector<std::string> args = {options.binary,
                                   "--root",
                                   options.root,
                                   "--queue-depth",
                                   depth,
                                   "--log-level",
                                   options.log_level,
                                   "--parent-pid",
                                   std::to_string(::getpid()),
                                   "--attach-prefix",
                                   std::string(kSegmentPrefix)};
  if (lock_copy.valid()) args.insert(args.end(), {"--lock-fd", std::to_string(kWorkerLockFd)});
  if (options.direct) args.emplace_back("--direct");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = options.binary.find('/') == std::string::npos
                     ? ::posix_spawnp(&pid, options.binary.c_str(), &actions, &attr, argv.data(), environ)
                     : ::posix_spawn(&pid, options.binary.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    return Status::FromErrno(fmt::format("starting the file worker '{}' (set --file-worker)", options.binary), rc);
  }
  return Child{pid, std::move(to_w), std::move(from_r)};
}

}  // namespace

Result<std::unique_ptr<FileWorkerLink>> FileWorkerLink::Spawn(asio::io_context& io, const FileWorkerOptions& options,
                                                              DeathHandler on_death) {
  auto child = SpawnChild(options);
  if (!child.ok()) return child.status();
  return std::unique_ptr<FileWorkerLink>(new FileWorkerLink(io, child->pid, child->to_worker.release(),
                                                            child->from_worker.release(), options.reply_timeout,
                                                            std::move(on_death)));
}

Result<std::unique_ptr<FileWorkerLink>> FileWorkerLink::Start(asio::io_context& io, const FileWorkerOptions& options,
                                                              const std::string& shm_name, uint64_t shm_size,
                                                              DeathHandler on_death) {
  auto child = SpawnChild(options);
  if (!child.ok()) return child.status();
  const pid_t pid = child->pid;
  sys::UniqueFd& to_w = child->to_worker;
  sys::UniqueFd& from_r = child->from_worker;
  const std::string attach = fmt::format("ATTACH {} {} 0\n", shm_name, shm_size);
  auto w = sys::Call([&] { return ::write(to_w.get(), attach.data(), attach.size()); });
  Result<std::string> reply = w.ok() ? ReadLineBlocking(from_r.get(), kHandshakeTimeout)
                                     : Result<std::string>(w.ToStatus("writing to the file worker"));
  if (!reply.ok() || *reply != "OK") {
    to_w.reset();
    const std::string how = Reap(pid, std::chrono::milliseconds(2000));
    const std::string why = reply.ok() ? fmt::format("ATTACH answered '{}'", *reply) : reply.status().message();
    return Status::Unavailable(fmt::format("file worker '{}' (pid {}) failed to attach segment {}: {}; it {}",
                                           options.binary, pid, shm_name, why, how));
  }
  return std::unique_ptr<FileWorkerLink>(
      new FileWorkerLink(io, pid, to_w.release(), from_r.release(), options.reply_timeout, std::move(on_death)));
}

FileWorkerLink::FileWorkerLink(asio::io_context& io, pid_t pid, int to_worker, int from_worker,
                               std::chrono::milliseconds reply_timeout, DeathHandler on_death)
    : io_(io),
      pid_(pid),
      to_worker_(io, to_worker),
      from_worker_(io, from_worker),
      on_death_(std::move(on_death)),
      reply_timeout_(reply_timeout),
      watchdog_(io),
      grace_(io) {
  ReadReplies();
}

FileWorkerLink::~FileWorkerLink() {
  *token_ = false;
  watchdog_.cancel();
  grace_.cancel();
  asio::error_code ignored;
  if (pidfd_) pidfd_->close(ignored);
  to_worker_.close(ignored);  // EOF: the worker finishes what is in flight and exits
  from_worker_.close(ignored);
  if (!reaped_) {
    // Alive: it gets 5 s to finish its writes. Dying (a reap still pending): no more waiting.
    const std::string how = Reap(pid_, std::chrono::milliseconds(alive_ ? 5000 : 0));
    Log().debug("file worker (pid {}) {}", pid_, how);
  }
}

void FileWorkerLink::Send(std::string line, Callback done) {
  if (!alive_) {
    asio::post(io_, [done = std::move(done)] { done(Status::Unavailable("the file worker is not running")); });
    return;
  }
  out_pending_.append(line);
  out_pending_.push_back('\n');
  if (pending_.empty()) ArmWatchdog();
  pending_.push_back(std::move(done));
  WriteMore();
}

// One deadline for the oldest unanswered command, re-armed at every reply.
void FileWorkerLink::ArmWatchdog() {
  watchdog_.expires_after(reply_timeout_);
  watchdog_.async_wait([this, token = token_](const asio::error_code& ec) {
    if (ec || !*token || pending_.empty()) return;
    Die(fmt::format("no reply within {} ms (hung: stuck disk or stopped process)", reply_timeout_.count()));
  });
}

void FileWorkerLink::WriteMore() {
  if (writing_ || out_pending_.empty() || !alive_) return;
  writing_ = true;
  out_flight_.swap(out_pending_);
  out_pending_.clear();
  asio::async_write(to_worker_, asio::buffer(out_flight_), [this, token = token_](const asio::error_code& ec, size_t) {
    if (!*token) return;
    writing_ = false;
    out_flight_.clear();
    if (ec) return Die(fmt::format("writing to it failed: {}", ec.message()));
    WriteMore();
  });
}

void FileWorkerLink::ReadReplies() {
  asio::async_read_until(
      from_worker_, *in_, '\n', [this, token = token_, in = in_](const asio::error_code& ec, size_t n) {
        if (!*token) return;
        if (ec) return Die(ec == asio::error::eof ? "its stdout closed" : "reading its stdout failed: " + ec.message());
        std::string line(asio::buffers_begin(in->data()),
                         asio::buffers_begin(in->data()) + static_cast<ptrdiff_t>(n) - 1);
        in->consume(n);
        if (pending_.empty()) return Die(fmt::format("it sent a reply nobody asked for: '{}'", line.substr(0, 80)));
        Callback done = std::move(pending_.front());
        pending_.pop_front();
        if (pending_.empty()) {
          watchdog_.cancel();
        } else {
          ArmWatchdog();
        }
        done(ParseReply(line));
        if (*token && alive_) ReadReplies();
      });
}

void FileWorkerLink::Die(const std::string& why) {
  if (!alive_) return;
  alive_ = false;
  watchdog_.cancel();
  asio::error_code ignored;
  to_worker_.close(ignored);
  from_worker_.close(ignored);
  int status = 0;
  auto done = sys::Call([&] { return ::waitpid(pid_, &status, WNOHANG); });
  if (done.ok() && done.value == pid_) return Buried(why, DescribeExit(status));
  sys::UniqueFd exit_watch = platform::WatchProcessExit(pid_);
  if (!done.ok() || !exit_watch.valid()) {
    return Buried(why, Reap(pid_, std::chrono::milliseconds(200)));  // no exit watch: the blocking way
  }
  pidfd_ = std::make_unique<asio::posix::stream_descriptor>(io_, exit_watch.release());
  pidfd_->async_wait(asio::posix::stream_descriptor::wait_read,
                     [this, token = token_, why](const asio::error_code& ec) {
                       if (!*token || ec) return;
                       grace_.cancel();
                       // Exited: this waitpid returns at once.
                       Buried(why, Reap(pid_, std::chrono::milliseconds(0)));
                     });
  grace_.expires_after(std::chrono::milliseconds(200));
  grace_.async_wait([this, token = token_](const asio::error_code& ec) {
    if (!*token || ec) return;
    ::kill(pid_, SIGKILL);  // the pidfd turns readable once it is gone
  });
}

void FileWorkerLink::Buried(const std::string& why, const std::string& how) {
  reaped_ = true;
  const std::string message = fmt::format("file worker (pid {}) is gone: {}; it {}", pid_, why, how);
  std::deque<Callback> failed;
  failed.swap(pending_);
  auto token = token_;
  for (Callback& cb : failed) {
    cb(Status::Unavailable(message));
    if (!*token) return;
  }
  if (on_death_) on_death_(message);
}

}  // namespace shmkv
