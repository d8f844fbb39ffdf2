// shmkv-file-worker: moves bytes between the shmkv pool (a POSIX shared-memory segment) and files
// under --root, speaking LMCache's shm_file_worker line protocol, hardened (docs/design.md §6,
// docs/file-worker.md). PIPE mode on stdin/stdout by default; TCP mode with --listen.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "common/log.h"
#include "common/syscall.h"
#include "file_worker/file_store.h"
#include "file_worker/protocol.h"
#include "file_worker/session.h"
#include "file_worker/tcp_server.h"
#include "file_worker/thread_pool.h"
#include "file_worker/uring.h"
#include "platform/process.h"
#include "shmkv/version.h"

namespace {

constexpr size_t kMaxTokenBytes = 256;
constexpr const char* kTokenEnv = "SHMKV_FILE_WORKER_TOKEN";

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "shmkv-file-worker: %s\n", message.c_str());
  return code;
}

// A token is 1..kMaxTokenBytes printable bytes without spaces: it travels as one AUTH argument.
std::string TokenProblem(std::string_view token) {
  if (token.empty()) return "is empty";
  const bool printable = std::all_of(token.begin(), token.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u != 0x7f;
  });
  if (!printable || token.size() > kMaxTokenBytes) {
    return fmt::format("must be 1..{} bytes without spaces or control bytes", kMaxTokenBytes);
  }
  return "";
}

// The token of --token-file: the whole file, less one trailing newline ("\n" or "\r\n").
shmkv::Result<std::string> ReadTokenFile(const std::string& path) {
  using shmkv::Status;
  namespace sys = shmkv::sys;
  auto fd = sys::Call([&] { return ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY); });
  if (!fd.ok()) return Status::FromErrno(fmt::format("--token-file '{}'", path), fd.err);
  sys::UniqueFd owned(fd.value);
  struct stat st {};
  if (::fstat(owned.get(), &st) == 0) {
    if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(fmt::format("--token-file '{}' is not a file", path));
    if ((st.st_mode & S_IROTH) != 0) {
      std::fprintf(stderr,
                   "shmkv-file-worker: warning: --token-file '%s' is readable by every user; make it mode 0600\n",
                   path.c_str());
    }
  }
  std::string text;
  char buf[512];
  for (;;) {
    auto n = sys::Call([&] { return ::read(owned.get(), buf, sizeof buf); });
    if (!n.ok()) return Status::FromErrno(fmt::format("--token-file '{}': read", path), n.err);
    if (n.value == 0) break;
    text.append(buf, static_cast<size_t>(n.value));
    if (text.size() > kMaxTokenBytes + 2) break;  // too long either way; do not read a huge file
  }
  if (text.ends_with('\n')) text.pop_back();
  if (text.ends_with('\r')) text.pop_back();
  if (const std::string why = TokenProblem(text); !why.empty()) {
    return Status::InvalidArgument(fmt::format("--token-file '{}': the token {}", path, why));
  }
  return text;
}

// Overwrites the value of --token in our own argv, which is what `ps` and /proc/PID/cmdline show
// (a short window after exec remains: hence the warning, and --token-file).
void ScrubTokenFromArgv(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* value = nullptr;
    if (std::strcmp(argv[i], "--token") == 0 && i + 1 < argc) {
      value = argv[i + 1];
    } else if (std::strncmp(argv[i], "--token=", 8) == 0) {
      value = argv[i] + 8;
    }
    if (value != nullptr) std::memset(value, 'x', std::strlen(value));
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace shmkv;
  using namespace shmkv::file_worker;

  CLI::App app{
      "shmkv-file-worker: copies between the shmkv shared-memory pool and files under --root.\n"
      "Line protocol (LMCache shm_file_worker compatible): ATTACH, WRITE, READ, QUIT, plus EXISTS, DELETE, "
      "LIST, STAT, AUTH.\nWithout --listen it serves stdin/stdout (PIPE mode)."};
  app.set_version_flag("--version", std::string("shmkv-file-worker ") + shmkv::kVersionString);
  std::string root;
  std::string listen;
  std::string token;
  std::string token_file;
  std::string attach_prefix;
  std::string log_level = "warn";
  bool direct = false;
  bool fsync = false;
  const SessionOptions session_defaults;  // the defaults are written there, once
  size_t queue_depth = session_defaults.queue_depth;
  size_t max_clients = 64;
  size_t max_unauthenticated = 16;
  double auth_timeout_s = session_defaults.auth_timeout_ms / 1000.0;
  pid_t parent_pid = 0;
  int lock_fd = -1;
  std::string io_engine = "auto";
  // Checked after parsing, not with ->required(): CLI11 checks required options before unknown
  // ones, and a misspelt --root-dir must be named as such.
  app.add_option("--root", root, "directory every path is confined to (created when missing; required)");
  app.add_option("--listen", listen,
                 "TCP mode on HOST:PORT (HOST an IP literal or localhost; default 127.0.0.1; port 0 = any free "
                 "port, printed as 'LISTENING host:port'). Needs a token (--token-file or $SHMKV_FILE_WORKER_TOKEN)");
  auto* token_file_opt =
      app.add_option("--token-file", token_file,
                     "TCP mode: file holding the token clients must send as 'AUTH <token>' (one trailing newline "
                     "is ignored). Or set $SHMKV_FILE_WORKER_TOKEN");
  app.add_option("--token", token,
                 "the token on the command line: visible to every local user in ps until the worker has started; "
                 "prefer --token-file or $SHMKV_FILE_WORKER_TOKEN")
      ->excludes(token_file_opt);
  app.add_option("--auth-timeout", auth_timeout_s,
                 "TCP mode: seconds a connection may take to send 'AUTH <token>' before it is closed")
      ->check(CLI::Range(0.05, 3600.0))
      ->capture_default_str();
  app.add_option("--max-unauthenticated", max_unauthenticated,
                 "TCP mode: connections that have not authenticated yet; one more closes the oldest")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--attach-prefix", attach_prefix,
                 "ATTACH only segments whose name (without its leading '/') starts with this, e.g. lmcache_l1_pool_");
  app.add_option("--parent-pid", parent_pid,
                 "die with this parent process (SIGKILL through PR_SET_PDEATHSIG; refused when the parent is already "
                 "gone); set by shmkv-server for its L2 worker")
      ->check(CLI::Range(1, INT_MAX));
  app.add_option("--lock-fd", lock_fd,
                 "inherited descriptor of a lock file locked with flock(LOCK_EX): kept (and the lock held) for the "
                 "worker's life; refused unless the lock is held through it. Set by shmkv-server (its L2 directory)")
      ->check(CLI::Range(3, INT_MAX));
  app.add_flag("--direct", direct, "O_DIRECT file I/O; pool offsets and lengths must be multiples of 4096");
  app.add_option("--queue-depth", queue_depth, "I/O threads, and commands of one client in flight at once")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_flag("--fsync", fsync, "fdatasync each file and fsync its directory before WRITE replies");
  app.add_option("--max-clients", max_clients, "TCP mode: authenticated clients served at once")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--io-engine", io_engine,
                 "how READ/WRITE move bytes: uring (io_uring; fail at start if unavailable), threads (blocking "
                 "pread/pwrite on the I/O threads) or auto (uring when io_uring can be set up, else threads)")
      ->check(CLI::IsMember({"auto", "uring", "threads"}))
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error exits 2, as the documentation says.
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (root.empty()) {
    fmt::print(stderr, "--root is required\nRun with --help for more information.\n");
    return 2;
  }

  // First: a parent that dies from here on takes the worker along (SIGKILL, so nothing queued in
  // its pipe runs after it). The signal is armed only now, after exec: a parent that died before
  // this line is caught by the getppid() check (the worker was reparented, so it is not PID).
  if (parent_pid != 0) {
    if (Status s = platform::KillWhenParentExits(); !s.ok()) {
      return Fail(1, s.WithContext("--parent-pid").message());
    }
    if (const pid_t actual = ::getppid(); actual != parent_pid) {
      return Fail(1, fmt::format("--parent-pid {}: the worker's parent is {}, not {} (it has exited); not starting",
                                 parent_pid, actual, parent_pid));
    }
  }
  // The lock stays held through this descriptor until the worker has exited, i.e. after its last
  // write: so whoever owns the lock next (a new shmkv-server) cannot meet a write of ours.
  sys::UniqueFd dir_lock;
  if (lock_fd >= 0) {
    struct stat st {};
    if (::fstat(lock_fd, &st) != 0) {
      return Fail(1, Status::FromErrno(fmt::format("--lock-fd {}", lock_fd), errno).message());
    }
    dir_lock.reset(lock_fd);
    if (!S_ISREG(st.st_mode)) return Fail(1, fmt::format("--lock-fd {}: not a regular file", lock_fd));
    // Through a descriptor sharing the holder's open file description this succeeds at once
    // (LOCK_EX is already ours); when another open file description holds it, we must not run.
    auto locked = sys::Call([&] { return ::flock(lock_fd, LOCK_EX | LOCK_NB); });
    if (!locked.ok()) {
      return Fail(1, locked.err == EWOULDBLOCK
                         ? fmt::format("--lock-fd {}: the lock on it is held by another process; not starting", lock_fd)
                         : Status::FromErrno(fmt::format("--lock-fd {}: flock", lock_fd), locked.err).message());
    }
    (void)::fcntl(lock_fd, F_SETFD, FD_CLOEXEC);
  }

  if (auto s = SetLogLevel(log_level); !s.ok()) return Fail(2, s.message());
  if (!attach_prefix.empty()) {
    if (auto p = CheckSegmentName(attach_prefix, ""); !p.ok() || attach_prefix.front() == '/') {
      return Fail(2, fmt::format("--attach-prefix '{}': a segment name prefix has no '/', spaces or control bytes",
                                 attach_prefix));
    }
  }
  // The token: --token-file, --token (scrubbed from argv, with a warning) or the environment.
  if (!token.empty() || app.count("--token") > 0) {
    ScrubTokenFromArgv(argc, argv);
    if (const std::string why = TokenProblem(token); !why.empty()) return Fail(2, "--token " + why);
    if (!listen.empty()) {
      std::fprintf(stderr,
                   "shmkv-file-worker: warning: --token on the command line is visible to other local users (ps, "
                   "/proc/PID/cmdline) until the worker has started; use --token-file or $%s\n",
                   kTokenEnv);
    }
  } else if (!token_file.empty()) {
    auto t = ReadTokenFile(token_file);
    if (!t.ok()) return Fail(2, t.status().message());
    token = std::move(t).value();
  } else if (const char* env = std::getenv(kTokenEnv); env != nullptr && !listen.empty()) {
    // Only TCP reads the environment: a PIPE worker inherits its parent's environment, and a token
    // meant for some TCP worker must not lock the parent out of its own child.
    if (const std::string why = TokenProblem(env); !why.empty()) return Fail(2, fmt::format("${} {}", kTokenEnv, why));
    token = env;
  }
  std::optional<ListenAddress> address;
  if (!listen.empty()) {
    auto parsed = ParseListenAddress(listen);
    if (!parsed.ok()) return Fail(2, parsed.status().message());
    if (token.empty()) {
      // Loopback too: any local user can connect to 127.0.0.1, then ATTACH any segment this uid
      // can open, copy it to a file and READ it into their own segment (or write into the pool).
      return Fail(2, fmt::format("--listen {} needs a token: a client can read and write every shared-memory "
                                 "segment and file this user can open, and loopback is open to every local user. "
                                 "Give one with --token-file FILE (or ${}); clients send 'AUTH <token>' first",
                                 FormatAddress(parsed->addr), kTokenEnv));
    }
    address = *parsed;
  }

  // SIGTERM/SIGINT become a readable signalfd that every session and the accept loop poll, so a
  // stop finishes in-flight commands (no temp file left behind) instead of killing them. Blocked
  // before any thread starts, so every thread inherits the mask.
  auto stop = platform::StopSignalDescriptor();
  if (!stop.ok()) return Fail(1, stop.status().message());
  sys::UniqueFd stop_fd = std::move(stop).value();
  // A client that vanishes must cost an EPIPE on one write, not the process.
  ::signal(SIGPIPE, SIG_IGN);

  FileStore::Options store_options;
  store_options.direct = direct;
  store_options.fsync = fsync;
  auto store = FileStore::Open(root, store_options);
  if (!store.ok()) return Fail(1, store.status().message());

  // The ring outlives every pool below (declared first, destroyed last): pool tasks use it.
  std::unique_ptr<UringExecutor> uring;
  if (io_engine != "threads") {
    auto ring = Ring::Create(static_cast<unsigned>(queue_depth));
    if (ring.ok()) {
      uring = std::make_unique<UringExecutor>(std::move(ring).value());
    } else if (io_engine == "uring") {
      return Fail(1, fmt::format("--io-engine uring: {}", ring.status().message()));
    }
    // One line on stderr, so an operator sees which engine a container really gets.
    if (log_level != "off") {
      const std::string why =
          uring ? fmt::format("io_uring (--io-engine {}; queue depth {})", io_engine, queue_depth)
                : fmt::format("threads (--io-engine auto: io_uring unavailable: {})", ring.status().message());
      std::fprintf(stderr, "shmkv-file-worker: I/O engine %s\n", why.c_str());
    }
  } else if (log_level != "off") {
    std::fprintf(stderr, "shmkv-file-worker: I/O engine threads (--io-engine threads)\n");
  }

  SessionOptions session_options;
  session_options.queue_depth = queue_depth;
  session_options.uring = uring.get();
  session_options.attach_prefix = attach_prefix;
  session_options.stop_fd = stop_fd.get();

  if (!address) {
    // PIPE mode asks for no token: its only peer is the process that started it.
    ThreadPool pool(queue_depth);
    Session session(*store, pool, session_options);
    const Session::End end = session.Serve(STDIN_FILENO, STDOUT_FILENO);
    Log().info("file worker: PIPE session ended ({})", SessionEndName(end));
    return 0;
  }

  session_options.token = token;
  session_options.auth_timeout_ms = static_cast<int>(auth_timeout_s * 1000.0);
  auto server = TcpServer::Listen(*address);
  if (!server.ok()) return Fail(1, server.status().message());
  std::printf("LISTENING %s\n", server->BoundAddress().c_str());
  std::fflush(stdout);
  Log().info("file worker: listening on {} (root '{}', queue depth {}{})", server->BoundAddress(), store->root(),
             queue_depth, direct ? ", O_DIRECT" : "");

  ThreadPool pool(queue_depth);
  TcpServer::Options server_options;
  server_options.max_clients = max_clients;
  server_options.max_unauthenticated = max_unauthenticated;
  server_options.session = session_options;
  if (auto s = server->Run(*store, pool, server_options, stop_fd.get()); !s.ok()) return Fail(1, s.message());
  return 0;
}
