// shmkv-file-worker: moves bytes between the shmkv pool (a POSIX shared-memory segment) and files
// under --root, speaking LMCache's shm_file_worker line protocol, hardened (DESIGN.md §6,
// docs/file-worker.md). PIPE mode on stdin/stdout by default; TCP mode with --listen.
#include <signal.h>
#include <sys/signalfd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>

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

namespace {

constexpr size_t kMaxTokenBytes = 256;

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "shmkv-file-worker: %s\n", message.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace shmkv;
  using namespace shmkv::file_worker;

  CLI::App app{
      "shmkv-file-worker: copies between the shmkv shared-memory pool and files under --root.\n"
      "Line protocol (LMCache shm_file_worker compatible): ATTACH, WRITE, READ, QUIT, plus EXISTS, DELETE, "
      "LIST, STAT, AUTH.\nWithout --listen it serves stdin/stdout (PIPE mode)."};
  std::string root;
  std::string listen;
  std::string token;
  std::string log_level = "warn";
  bool direct = false;
  bool fsync = false;
  size_t queue_depth = 4;
  size_t max_clients = 64;
  std::string io_engine = "auto";
  app.add_option("--root", root, "directory every path is confined to (created when missing)")->required();
  app.add_option("--listen", listen,
                 "TCP mode on HOST:PORT (HOST an IP literal or localhost; default 127.0.0.1; port 0 = any free "
                 "port, printed as 'LISTENING host:port'). A non-loopback HOST requires --token");
  app.add_option("--token", token, "clients must send 'AUTH <token>' as their first line")
      ->envname("SHMKV_FILE_WORKER_TOKEN");
  app.add_flag("--direct", direct, "O_DIRECT file I/O; pool offsets and lengths must be multiples of 4096");
  app.add_option("--queue-depth", queue_depth, "I/O threads, and commands of one client in flight at once")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_flag("--fsync", fsync, "fdatasync each file and fsync its directory before WRITE replies");
  app.add_option("--max-clients", max_clients, "TCP clients served at once")
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

  if (auto s = SetLogLevel(log_level); !s.ok()) return Fail(2, s.message());
  if (!token.empty()) {
    const bool printable = std::all_of(token.begin(), token.end(), [](char c) {
      const auto u = static_cast<unsigned char>(c);
      return u > 0x20 && u != 0x7f;
    });
    if (!printable || token.size() > kMaxTokenBytes) {
      return Fail(2, fmt::format("--token must be 1..{} bytes without spaces or control bytes", kMaxTokenBytes));
    }
  }

  // SIGTERM/SIGINT become a readable signalfd that every session and the accept loop poll, so a
  // stop finishes in-flight commands (no temp file left behind) instead of killing them. Blocked
  // before any thread starts, so every thread inherits the mask.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto sfd = sys::Call([&] { return ::signalfd(-1, &stop_signals, SFD_CLOEXEC | SFD_NONBLOCK); });
  if (!sfd.ok()) return Fail(1, sfd.ToStatus("signalfd").message());
  sys::UniqueFd stop_fd(sfd.value);
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
  session_options.token = token;
  session_options.stop_fd = stop_fd.get();

  if (listen.empty()) {
    ThreadPool pool(queue_depth);
    Session session(*store, pool, session_options);
    const Session::End end = session.Serve(STDIN_FILENO, STDOUT_FILENO);
    Log().info("file worker: PIPE session ended ({})", SessionEndName(end));
    return 0;
  }

  auto address = ParseListenAddress(listen);
  if (!address.ok()) return Fail(2, address.status().message());
  if (!address->loopback && token.empty()) {
    return Fail(2, fmt::format("refusing to listen on non-loopback address {} without --token: anyone who can "
                               "reach it could read and write the pool and files under --root",
                               FormatAddress(address->addr)));
  }
  auto server = TcpServer::Listen(*address);
  if (!server.ok()) return Fail(1, server.status().message());
  std::printf("LISTENING %s\n", server->BoundAddress().c_str());
  std::fflush(stdout);
  Log().info("file worker: listening on {} (root '{}', queue depth {}{})", server->BoundAddress(), store->root(),
             queue_depth, direct ? ", O_DIRECT" : "");

  ThreadPool pool(queue_depth);
  TcpServer::Options server_options;
  server_options.max_clients = max_clients;
  server_options.session = session_options;
  if (auto s = server->Run(*store, pool, server_options, stop_fd.get()); !s.ok()) return Fail(1, s.message());
  return 0;
}
