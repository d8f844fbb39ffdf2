// shmkv-server and its C++ client against their baselines, every baseline in the same run.
//
// The binary starts its own shmkv-server (fork/exec, 4 GiB pool, socket in a fresh temp dir) and
// stops it at exit. Round-trip and byte rates are wall-clock (UseRealTime); with N client
// threads they are the sum over all N clients.
//
// Control path
//   RawPingPong/req:72/rep:24  two processes on a Unix socketpair, blocking write + read each way:
//                              the kernel's floor for one round trip of prepare/commit-sized frames
//   RawPingPongPolled/...      diagnostic: the same, waiting in poll() / epoll_wait like shmkv does
//   StoreCommit/batch:B/post:P prepare_store + commit_store of B keys (two requests; 4 KiB objects);
//                              with P=1 the commit is posted (PostCommitStore): one wait per pair
//   Lookup/threads:N           lookup of one stored key (one round trip), N clients
//   RetrievePair/post:P/threads:N  prepare_retrieve, copy 16 B out of the slot, commit_retrieve
//                              (posted when P=1), N clients
//   RedisGet/threads:N         hiredis GET of a 16-byte value, N blocking clients (needs a Redis)
// Data path (bytes = bytes stored + bytes retrieved; B objects of M MiB per call, B*M <= 32)
//   DataShmkv/mib:M/batch:B/post:P/remove:R
//                              prepare_store, memcpy into the slots, commit_store, prepare_retrieve,
//                              memcpy out of the slots, commit_retrieve (commits posted when P=1);
//                              then remove the keys (timed when R is 1, untimed when 0) so the
//                              next iteration reuses the slots
//   DataSlotMemcpy/mib:M/batch:B  diagnostic: the same memcpys to and from slots, no calls
//   DataMemcpy/mib:M/batch:B   the same memcpys of the same bytes through a private buffer
//   DataRedis/mib:M/batch:B    hiredis SET then GET of the same bytes (pipelined per batch),
//                              copied out of the reply
// Paired (for a loaded machine: shmkv and its baseline alternate in blocks within one loop, so
// both meet the same load; the counter `ratio` is shmkv over the baseline)
//   PairedControl/kind:K       raw ping-pong vs 1-key store pair waited (0), posted (1), lookup (2)
//   PairedData/mib:M/batch:B/post:P  memcpy vs a shmkv cycle with the remove timed
//
//   build/bench/server/server_bench [--shmkv_server_bin=PATH] [--redis_socket=PATH]
//                                   [--client_cpu=N] [--server_cpu=N] [--pool_size=SIZE]
//                                   [--server_arg=ARG]... [benchmark flags]
//
// --server_arg appends ARG to the server's command line (e.g. --server_arg=--shm-dir=/mnt/huge
// --server_arg=--huge-pages=on: bench/huge_pages_bench.sh); the context `pool_huge_pages` records
// what the pool got (the ready line's huge_pages=). --pool_size: the pool (default 4GiB).
// --private_huge_pages=1 puts the private buffers (the memcpy baseline's, and the source and
// destination of every shmkv copy) on transparent huge pages (MADV_HUGEPAGE, 2 MiB aligned).
//
// SHMKV_SERVER_BIN and SHMKV_BENCH_REDIS_SOCKET stand in for the first two flags. The server
// binary defaults to ../../src/shmkv-server next to this binary (the build tree). Without a Redis
// socket the Redis cases are skipped. --client_cpu pins this process (its client threads
// included), --server_cpu the server and the echo process (see PinTo). bench/run_server_bench.sh
// starts Redis, runs this and redis-benchmark, and prints the table of docs/performance-server.md.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "server/ready_line.h"
#include "shmkv/client.h"

namespace shmkv {
namespace {

constexpr uint64_t kControlObjectBytes = 4096;                  // control-path objects: one 4 KiB slot each
constexpr uint64_t kClearEvery = 64 * 1024;                     // stored control-path objects before an untimed clear
constexpr size_t kReadValueBytes = 16;                          // the value lookups and retrieves read (= redis -d 16)
constexpr std::string_view kRedisReadKey = "key:__rand_int__";  // the key redis-benchmark -t get reads

struct Config {
  std::string server_bin;
  std::string redis_socket;
  std::string socket;   // the server's, set once it is ready
  int client_cpu = -1;  // CPU of this process and its client threads (-1: the scheduler's choice)
  int server_cpu = -1;  // CPU of the server and of the ping-pong echo process
  std::string pool_size = "4GiB";
  std::vector<std::string> server_args;  // appended to the server's command line (--server_arg=...)
  std::string huge_pages;                // the ready line's huge_pages= (what the pool got)
  bool private_huge_pages = false;       // MADV_HUGEPAGE on the private buffers (--private_huge_pages=1)
};
Config g_config;
std::atomic<uint64_t> g_next_key{1};
pid_t g_server_pid = -1;

// CPU time the server process has used so far, in ns (its main thread, which does all the work;
// /proc/PID/schedstat's first field). Unlike wall-clock rates it hardly moves when other
// processes load the machine, so old and new code can be compared on a busy one. -1: unknown.
int64_t ServerCpuNs() {
  if (g_server_pid <= 0) return -1;
  FILE* f = std::fopen(fmt::format("/proc/{}/schedstat", g_server_pid).c_str(), "r");
  if (f == nullptr) return -1;
  long long ns = -1;
  if (std::fscanf(f, "%lld", &ns) != 1) ns = -1;
  std::fclose(f);
  return ns;
}

// Sets the counter server_cpu_us: the server's CPU µs per iteration of a single-client run.
class ServerCpu {
 public:
  ServerCpu() : start_(ServerCpuNs()) {}
  void Report(benchmark::State& state) const {
    const int64_t end = ServerCpuNs();
    if (start_ < 0 || end < 0 || state.iterations() == 0) return;
    state.counters["server_cpu_us"] = static_cast<double>(end - start_) / 1e3 / static_cast<double>(state.iterations());
  }

 private:
  int64_t start_;
};

// Pins the calling thread (and what it forks or creates afterwards) to `cpu`; -1 leaves it be.
// Where the peers of a round trip run decides its cost: two processes on one CPU hand over by a
// context switch, on two CPUs by a cross-CPU wakeup, which on a VM costs an IPI and a halt exit.
// Left to the scheduler, a run lands on either at random, so the bench pins both sides.
void PinTo(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) {
    std::fprintf(stderr, "server_bench: pinning to CPU %d: %s\n", cpu, std::strerror(errno));
  }
}

// MiB of this process's private memory on transparent huge pages (AnonHugePages of
// /proc/self/smaps_rollup): shows whether --private_huge_pages took effect. -1: unknown.
double AnonHugeMib() {
  FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
  if (f == nullptr) return -1;
  char line[256];
  double mib = -1;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    long long kb = 0;
    if (std::sscanf(line, "AnonHugePages: %lld kB", &kb) == 1) mib = static_cast<double>(kb) / 1024.0;
  }
  std::fclose(f);
  return mib;
}

// ---- the server child process ------------------------------------------------------------------

class ServerProcess {
 public:
  ~ServerProcess() { Stop(); }

  // Starts `bin` and waits (up to 120 s: the pool is prefaulted) for its ready line.
  Status Start(const std::string& bin) {
    char tmpl[] = "/tmp/shmkv-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return Status::FromErrno("mkdtemp", errno);
    dir_ = tmpl;
    socket_ = dir_ + "/shmkv.sock";
    const std::string shm_name = fmt::format("shmkv_bench_{}", ::getpid());
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return Status::FromErrno("pipe2", errno);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) return Status::FromErrno("fork", errno);
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive the bench
      if (::getppid() != parent) ::_exit(1);
      PinTo(g_config.server_cpu);
      ::dup2(out[1], STDOUT_FILENO);
      std::vector<std::string> args = {bin,          "--pool-size", g_config.pool_size, "--socket", socket_,
                                       "--shm-name", shm_name,      "--log-level",      "warn"};
      args.insert(args.end(), g_config.server_args.begin(), g_config.server_args.end());
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      std::fprintf(stderr, "server_bench: exec %s: %s\n", bin.c_str(), std::strerror(errno));
      ::_exit(127);
    }
    ::close(out[1]);
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (line.find('\n') == std::string::npos) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd p{out[0], POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) == 0) {
        ::close(out[0]);
        return Status::Timeout(fmt::format("{} printed no ready line within 120 s", bin));
      }
      char buf[512];
      const ssize_t n = ::read(out[0], buf, sizeof buf);
      if (n <= 0) {
        ::close(out[0]);
        return Status::IoError(fmt::format("{} exited before it was ready (output: '{}')", bin, line));
      }
      line.append(buf, static_cast<size_t>(n));
    }
    auto ready = ParseReadyLine(line);
    if (!ready.ok()) {
      ::close(out[0]);
      return Status::Protocol(fmt::format("{}: {}", bin, ready.status().message()));
    }
    g_config.huge_pages = !ready->huge_page_size        ? "unknown"
                          : *ready->huge_page_size == 0 ? "no"
                                                        : HugePagesField(*ready->huge_page_size);
    // Pass anything the server prints later on to stderr, so a full pipe never blocks it.
    drain_ = std::thread([fd = out[0]] {
      char buf[4096];
      for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        if (n <= 0) break;
        if (::write(STDERR_FILENO, buf, static_cast<size_t>(n)) < 0) break;
      }
      ::close(fd);
    });
    return Status::Ok();
  }

  // SIGTERM, then SIGKILL after 20 s; removes the temp dir.
  void Stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (::waitpid(pid_, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, &status, 0);
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      pid_ = -1;
    }
    if (drain_.joinable()) drain_.join();
    if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
      dir_.clear();
    }
  }

  const std::string& socket() const { return socket_; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::string dir_, socket_;
  std::thread drain_;
};

// ---- helpers -----------------------------------------------------------------------------------

ClientOptions Options(std::string_view model) {
  ClientOptions o;
  o.socket_path = g_config.socket;
  o.instance_id = fmt::format("bench-{}", model);
  o.ns.model = std::string(model);
  o.ns.dtype = "bfloat16";
  o.ns.layout = "NHD";
  o.timeout = std::chrono::seconds(30);
  o.pin_with_cuda = false;
  return o;
}

std::optional<Client> ConnectOrSkip(benchmark::State& state, std::string_view model) {
  auto c = Client::Connect(Options(model));
  if (!c.ok()) {
    state.SkipWithError(c.status().ToString().c_str());
    return std::nullopt;
  }
  return std::move(c).value();
}

// Keys are 32 bytes (an LMCache chunk hash is 32 hex digits' worth): a 16-byte tag and 16 hex
// digits of an index, rewritten in place so the timed loops never allocate for them.
std::string MakeKey(std::string_view tag) {
  std::string k = fmt::format("{:-<16.16}", tag);
  k.append(16, '0');
  return k;
}
void SetKeyIndex(std::string& key, uint64_t i) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (size_t d = 0; d < 16; ++d) key[key.size() - 1 - d] = kHex[(i >> (4 * d)) & 0xF];
}
const std::string& ReadKey() {
  static const std::string key = MakeKey("read");
  return key;
}
constexpr std::string_view kReadModel = "bench-read";

bool FailIf(benchmark::State& state, const Status& s, std::string_view what) {
  if (s.ok()) return false;
  state.SkipWithError(fmt::format("{}: {}", what, s.ToString()).c_str());
  return true;
}

void SetRoundTrips(benchmark::State& state, double per_iteration, double ops_per_iteration) {
  const auto it = static_cast<double>(state.iterations());
  state.counters["round_trips_per_s"] = benchmark::Counter(it * per_iteration, benchmark::Counter::kIsRate);
  state.counters["ops_per_s"] = benchmark::Counter(it * ops_per_iteration, benchmark::Counter::kIsRate);
}

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<std::byte[], FreeDeleter>;

// Page-aligned, faulted in, and filled with a pattern.
Buffer MakeBuffer(size_t bytes, uint8_t seed) {
  // --private_huge_pages: the private buffers on transparent huge pages, as every large buffer is
  // where /sys/kernel/mm/transparent_hugepage/enabled is `always` (with `madvise`, only memory
  // that asks for it, which glibc's malloc does not).
  const size_t align = g_config.private_huge_pages ? size_t{2} << 20 : 4096;
  Buffer b(static_cast<std::byte*>(std::aligned_alloc(align, (bytes + align - 1) / align * align)));
  if (g_config.private_huge_pages) (void)::madvise(b.get(), bytes, MADV_HUGEPAGE);
  for (size_t i = 0; i < bytes; ++i) b[i] = static_cast<std::byte>((i * 131 + seed) & 0xFF);
  return b;
}

constexpr size_t kMaxDataBytes = size_t{32} << 20;
struct DataBuffers {
  Buffer src = MakeBuffer(kMaxDataBytes, 1);
  Buffer mid = MakeBuffer(kMaxDataBytes, 2);
  Buffer dst = MakeBuffer(kMaxDataBytes, 3);
};
DataBuffers& Data() {
  static DataBuffers d;
  return d;
}

// ---- control path ------------------------------------------------------------------------------

bool ReadExact(int fd, char* p, size_t n) {
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}
bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t r = ::write(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// The baseline of one round trip: a forked echo process answers each request of req bytes with
// rep bytes over a blocking Unix socketpair; nothing is parsed on either side.
void RawPingPong(benchmark::State& state) {
  const auto req = static_cast<size_t>(state.range(0));
  const auto rep = static_cast<size_t>(state.range(1));
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    state.SkipWithError("socketpair failed");
    return;
  }
  std::vector<char> request(req, 'q'), reply(rep, 'r');  // allocated before fork: the child only reads and writes
  const pid_t child = ::fork();
  if (child == 0) {
    PinTo(g_config.server_cpu);
    ::close(sv[0]);
    while (ReadExact(sv[1], request.data(), req) && WriteAll(sv[1], reply.data(), rep)) {
    }
    ::_exit(0);
  }
  ::close(sv[1]);
  for (auto _ : state) {
    if (!WriteAll(sv[0], request.data(), req) || !ReadExact(sv[0], reply.data(), rep)) {
      state.SkipWithError("the echo process went away");
      break;
    }
  }
  ::close(sv[0]);  // the child sees EOF and exits
  ::waitpid(child, nullptr, 0);
  SetRoundTrips(state, 1, 1);
}
// Frame sizes of the one-key calls, 4-byte header included (strace of StoreCommit/batch:1):
// prepare_store 76 B request / 26-34 B reply, commit_store 65 B / 13 B; one size each way.
BENCHMARK(RawPingPong)->ArgNames({"req", "rep"})->Args({72, 24})->UseRealTime();

// Diagnostic: the same ping-pong, but waiting the way shmkv does. The client side sends, tries a
// non-blocking recv, then poll()s with a timeout (as Client's Channel does); the echo side sleeps
// in epoll_wait with a timeout on an edge-triggered descriptor and reads until EAGAIN (as asio's
// reactor does). Nothing is parsed: the gap to RawPingPong is the cost of the waits alone.
void RawPingPongPolled(benchmark::State& state) {
  const auto req = static_cast<size_t>(state.range(0));
  const auto rep = static_cast<size_t>(state.range(1));
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) {
    state.SkipWithError("socketpair failed");
    return;
  }
  std::vector<char> request(req, 'q'), reply(rep, 'r');
  const pid_t child = ::fork();
  if (child == 0) {
    PinTo(g_config.server_cpu);
    ::close(sv[0]);
    const int ep = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLET;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, sv[1], &ev);
    size_t have = 0;
    for (;;) {
      const ssize_t n = ::recv(sv[1], request.data() + have, req - have, 0);
      if (n == 0) break;
      if (n < 0) {
        if (errno != EAGAIN) break;
        epoll_event got{};
        ::epoll_wait(ep, &got, 1, 1000);
        continue;
      }
      have += static_cast<size_t>(n);
      if (have < req) continue;
      have = 0;
      if (::send(sv[1], reply.data(), rep, MSG_NOSIGNAL) != static_cast<ssize_t>(rep)) break;
    }
    ::_exit(0);
  }
  ::close(sv[1]);
  for (auto _ : state) {
    bool ok = ::send(sv[0], request.data(), req, MSG_NOSIGNAL) == static_cast<ssize_t>(req);
    for (size_t have = 0; ok && have < rep;) {
      const ssize_t n = ::recv(sv[0], reply.data() + have, rep - have, 0);
      if (n > 0) {
        have += static_cast<size_t>(n);
      } else if (n < 0 && errno == EAGAIN) {
        pollfd p{sv[0], POLLIN, 0};
        ok = ::poll(&p, 1, 5000) > 0;
      } else {
        ok = false;
      }
    }
    if (!ok) {
      state.SkipWithError("the echo process went away");
      break;
    }
  }
  ::close(sv[0]);
  ::waitpid(child, nullptr, 0);
  SetRoundTrips(state, 1, 1);
}
BENCHMARK(RawPingPongPolled)->ArgNames({"req", "rep"})->Args({72, 24})->UseRealTime();

void StoreCommit(benchmark::State& state) {
  const auto batch = static_cast<size_t>(state.range(0));
  const bool post = state.range(1) != 0;
  auto client = ConnectOrSkip(state, "bench-store");
  if (!client) return;
  std::vector<std::string> names(batch, MakeKey("store"));
  const std::vector<std::string_view> keys(names.begin(), names.end());  // names never reallocate
  const std::vector<uint64_t> sizes(batch, kControlObjectBytes);
  uint64_t held = 0;
  const ServerCpu server_cpu;
  for (auto _ : state) {
    for (std::string& n : names) SetKeyIndex(n, g_next_key++);
    // With post, this call also reads the previous iteration's commit reply (and fails if it failed).
    auto slots = client->PrepareStore(keys, sizes);
    if (FailIf(state, slots.status(), "prepare_store")) break;
    bool all_ok = true;
    for (const Slot& s : slots->slots) all_ok &= s.status == SlotStatus::kOk;
    if (!all_ok) {
      state.SkipWithError("prepare_store handed out no slot for a fresh key");
      break;
    }
    if (FailIf(state, post ? client->PostCommitStore(keys) : client->CommitStore(keys), "commit_store")) break;
    held += batch;
    if (held >= kClearEvery) {  // keep the index small and the pool from evicting
      state.PauseTiming();
      (void)client->Clear();
      held = 0;
      state.ResumeTiming();
    }
  }
  // Inside the timing: the last posted commit's reply is part of the work (one wait per run).
  if (post && FailIf(state, client->Sync(), "sync")) return;
  server_cpu.Report(state);  // includes the untimed clears, 1 per 64 Ki keys
  (void)client->Clear();
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));  // keys stored
  // Requests per second: 2 per pair. With post the client waits once per pair, not twice.
  SetRoundTrips(state, 2, 1);
}
BENCHMARK(StoreCommit)->ArgNames({"batch", "post"})->ArgsProduct({{1, 256}, {0, 1}})->UseRealTime();

void Lookup(benchmark::State& state) {
  auto client = ConnectOrSkip(state, kReadModel);
  if (!client) return;
  const std::string_view key = ReadKey();
  const ServerCpu server_cpu;
  for (auto _ : state) {
    auto n = client->Lookup({&key, 1});
    if (FailIf(state, n.status(), "lookup")) break;
    if (*n != 1) {
      state.SkipWithError("lookup did not find the stored key");
      break;
    }
  }
  if (state.threads() == 1) server_cpu.Report(state);
  SetRoundTrips(state, 1, 1);
}
BENCHMARK(Lookup)->Threads(1)->Threads(8)->UseRealTime();

void RetrievePair(benchmark::State& state) {
  const bool post = state.range(0) != 0;
  auto client = ConnectOrSkip(state, kReadModel);
  if (!client) return;
  const std::string_view key = ReadKey();
  char out[kReadValueBytes];
  const ServerCpu server_cpu;
  for (auto _ : state) {
    auto got = client->PrepareRetrieve({&key, 1});
    if (FailIf(state, got.status(), "prepare_retrieve")) break;
    const Slot& s = got->slots[0];
    if (s.status != SlotStatus::kOk || s.bytes.size() != sizeof out) {
      state.SkipWithError("prepare_retrieve did not hand out the stored object");
      break;
    }
    std::memcpy(out, s.bytes.data(), sizeof out);
    benchmark::DoNotOptimize(out);
    const Status done = post ? client->PostCommitRetrieve({&key, 1}) : client->CommitRetrieve({&key, 1});
    if (FailIf(state, done, "commit_retrieve")) break;
  }
  if (post) (void)FailIf(state, client->Sync(), "sync");
  if (state.threads() == 1) server_cpu.Report(state);
  SetRoundTrips(state, 2, 1);
}
BENCHMARK(RetrievePair)->ArgName("post")->Arg(0)->Arg(1)->Threads(1)->Threads(8)->UseRealTime();

struct RedisDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using RedisConn = std::unique_ptr<redisContext, RedisDeleter>;
using RedisReplyPtr = std::unique_ptr<redisReply, RedisDeleter>;

RedisConn RedisOrSkip(benchmark::State& state) {
  if (g_config.redis_socket.empty()) {
    state.SkipWithError("no Redis: pass --redis_socket=PATH (bench/run_server_bench.sh starts one)");
    return nullptr;
  }
  const timeval tv{30, 0};
  RedisConn c(redisConnectUnixWithTimeout(g_config.redis_socket.c_str(), tv));
  if (!c || c->err != 0) {
    state.SkipWithError(
        fmt::format("connecting to Redis at {}: {}", g_config.redis_socket, c ? c->errstr : "out of memory").c_str());
    return nullptr;
  }
  return c;
}

RedisReplyPtr Command(redisContext* c, const char* format, const void* a, size_t a_len, const void* b = nullptr,
                      size_t b_len = 0) {
  return RedisReplyPtr(static_cast<redisReply*>(redisCommand(c, format, a, a_len, b, b_len)));
}

// The same blocking one-request-at-a-time model as the shmkv client (redis-benchmark instead
// multiplexes its clients on one event loop).
void RedisGet(benchmark::State& state) {
  RedisConn c = RedisOrSkip(state);
  if (!c) return;
  char out[kReadValueBytes];
  for (auto _ : state) {
    RedisReplyPtr r = Command(c.get(), "GET %b", kRedisReadKey.data(), kRedisReadKey.size());
    if (!r || r->type != REDIS_REPLY_STRING || r->len != sizeof out) {
      state.SkipWithError("GET did not return the 16-byte value (run_server_bench.sh sets it)");
      break;
    }
    std::memcpy(out, r->str, sizeof out);
    benchmark::DoNotOptimize(out);
  }
  SetRoundTrips(state, 1, 1);
}
BENCHMARK(RedisGet)->Threads(1)->Threads(8)->UseRealTime();

// ---- data path ---------------------------------------------------------------------------------
//
// A case moves `batch` objects of `mib` MiB per iteration (batch * mib <= 32): object i is bytes
// [i * size, (i + 1) * size) of the 32 MiB source and destination buffers, so every case copies
// distinct bytes, and the memcpy baseline of the same (mib, batch) copies exactly the same bytes
// through a middle buffer of the same total size.

struct DataShape {
  size_t object_bytes;
  size_t batch;
  size_t total() const { return object_bytes * batch; }
};
DataShape Shape(const benchmark::State& state) {
  return {static_cast<size_t>(state.range(0)) << 20, static_cast<size_t>(state.range(1))};
}
// The (mib, batch) cases: single objects of 1, 8 and 32 MiB, and 32 MiB moved as 32 x 1 MiB and 4 x 8 MiB.
void DataShapes(benchmark::internal::Benchmark* b, const std::vector<int64_t>& extra = {}) {
  for (auto [mib, batch] : {std::pair{1, 1}, {8, 1}, {32, 1}, {1, 32}, {8, 4}}) {
    std::vector<int64_t> args = {mib, batch};
    args.insert(args.end(), extra.begin(), extra.end());
    b->Args(args);
  }
}

std::vector<std::string> DataKeys(std::string_view tag, size_t n) {
  std::vector<std::string> names(n, MakeKey(tag));
  for (size_t i = 0; i < n; ++i) SetKeyIndex(names[i], i);
  return names;
}

// prepare_store, memcpy into each slot, commit_store, prepare_retrieve, memcpy out of each slot,
// commit_retrieve, all for `batch` keys per call; then remove the keys (timed when remove is 1)
// so the next iteration gets the same slots back. With post the commits are posted: their replies
// are read by the next call, so an iteration waits for 2 replies (3 with the remove), not 4 (5).
// With post and an untimed remove, the wait for commit_retrieve's reply falls into the untimed
// remove: remove:1 is the figure that hides nothing.
void DataShmkv(benchmark::State& state) {
  const DataShape shape = Shape(state);
  const bool post = state.range(2) != 0;
  const bool remove_timed = state.range(3) != 0;
  // One client for every run: each slot's pages fault into its mapping once, not once a run.
  static std::optional<Client> client;
  if (!client) client = ConnectOrSkip(state, "bench-data");
  if (!client) return;
  DataBuffers& d = Data();
  const std::vector<std::string> names = DataKeys("data", shape.batch);
  const std::vector<std::string_view> keys(names.begin(), names.end());
  const std::vector<uint64_t> sizes(shape.batch, shape.object_bytes);
  std::vector<uint64_t> last_offsets(shape.batch, UINT64_MAX);
  uint64_t slot_moves = 0;
  auto cycle = [&]() -> bool {
    auto put = client->PrepareStore(keys, sizes);
    if (FailIf(state, put.status(), "prepare_store")) return false;
    bool moved = false;
    for (size_t i = 0; i < shape.batch; ++i) {
      const Slot& s = put->slots[i];
      if (s.status != SlotStatus::kOk) {
        state.SkipWithError(fmt::format("prepare_store: {}", SlotStatusName(s.status)).c_str());
        return false;
      }
      moved |= s.offset != last_offsets[i];
      last_offsets[i] = s.offset;
      std::memcpy(s.bytes.data(), d.src.get() + i * shape.object_bytes, shape.object_bytes);
    }
    slot_moves += moved ? 1 : 0;
    if (FailIf(state, post ? client->PostCommitStore(keys) : client->CommitStore(keys), "commit_store")) return false;
    auto got = client->PrepareRetrieve(keys);
    if (FailIf(state, got.status(), "prepare_retrieve")) return false;
    for (size_t i = 0; i < shape.batch; ++i) {
      const Slot& s = got->slots[i];
      if (s.status != SlotStatus::kOk) {
        state.SkipWithError("prepare_retrieve: an object just stored is missing");
        return false;
      }
      std::memcpy(d.dst.get() + i * shape.object_bytes, s.bytes.data(), shape.object_bytes);
    }
    benchmark::ClobberMemory();
    return !FailIf(state, post ? client->PostCommitRetrieve(keys) : client->CommitRetrieve(keys), "commit_retrieve");
  };
  auto remove = [&]() -> bool {
    auto r = client->Remove(keys);
    if (FailIf(state, r.status(), "remove")) return false;
    for (shmkv::RemoveOutcome result : *r) {
      if (result != shmkv::RemoveOutcome::kRemoved) {
        state.SkipWithError(fmt::format("remove: {}", shmkv::RemoveOutcomeName(result)).c_str());
        return false;
      }
    }
    return true;
  };
  (void)client->Sync();
  (void)client->Remove(keys);
  if (!cycle() || !remove()) return;  // warm-up: the slots' pages fault in here
  slot_moves = 0;
  for (auto _ : state) {
    if (!cycle()) break;
    if (!remove_timed) state.PauseTiming();
    const bool removed = remove();
    if (!remove_timed) state.ResumeTiming();
    if (!removed) break;
  }
  if (std::memcmp(d.src.get(), d.dst.get(), shape.total()) != 0) state.SkipWithError("the bytes read back differ");
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * shape.total()));
  // Iterations where some slot was not where it was the iteration before (0: the allocator
  // reuses the slots, so the copies hit the same, already mapped and cached, pool pages as
  // memcpy's buffers do).
  state.counters["slot_moves"] = static_cast<double>(slot_moves);
}
BENCHMARK(DataShmkv)
    ->ArgNames({"mib", "batch", "post", "remove"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (int64_t post : {0, 1}) {
        for (int64_t remove : {0, 1}) DataShapes(b, {post, remove});
      }
    })
    ->UseRealTime();

// Diagnostic: DataShmkv's copies alone, into and out of slots reserved once, with no round trip
// in the loop. DataShmkv minus this is what the calls cost; this against DataMemcpy is what
// copying to and from the pool's shared 4 KiB pages costs over private memory.
void DataSlotMemcpy(benchmark::State& state) {
  const DataShape shape = Shape(state);
  auto client = ConnectOrSkip(state, "bench-slot");
  if (!client) return;
  DataBuffers& d = Data();
  const std::vector<std::string> names = DataKeys("slot", shape.batch);
  const std::vector<std::string_view> keys(names.begin(), names.end());
  const std::vector<uint64_t> sizes(shape.batch, shape.object_bytes);
  auto put = client->PrepareStore(keys, sizes);
  if (FailIf(state, put.status(), "prepare_store")) return;
  for (const Slot& s : put->slots) {
    if (s.status != SlotStatus::kOk) {
      state.SkipWithError("prepare_store handed out no slot");
      return;
    }
    std::memset(s.bytes.data(), 0, s.bytes.size());  // fault the slot's pages into this mapping
  }
  for (auto _ : state) {
    for (size_t i = 0; i < shape.batch; ++i) {
      std::memcpy(put->slots[i].bytes.data(), d.src.get() + i * shape.object_bytes, shape.object_bytes);
    }
    benchmark::ClobberMemory();
    for (size_t i = 0; i < shape.batch; ++i) {
      std::memcpy(d.dst.get() + i * shape.object_bytes, put->slots[i].bytes.data(), shape.object_bytes);
    }
    benchmark::ClobberMemory();
  }
  (void)client->AbortStore(keys);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * shape.total()));
}
BENCHMARK(DataSlotMemcpy)->ArgNames({"mib", "batch"})->Apply([](auto* b) { DataShapes(b); }) -> UseRealTime();

// The baseline: the same bytes copied in and out through a private middle buffer of the same
// size (warm: it is written every iteration, like the slots), in the same process. The paired
// cases run exactly this cycle too.
void MemcpyCycle(const DataShape& shape, DataBuffers& d) {
  for (size_t i = 0; i < shape.batch; ++i) {
    const size_t at = i * shape.object_bytes;
    std::memcpy(d.mid.get() + at, d.src.get() + at, shape.object_bytes);
  }
  benchmark::ClobberMemory();
  for (size_t i = 0; i < shape.batch; ++i) {
    const size_t at = i * shape.object_bytes;
    std::memcpy(d.dst.get() + at, d.mid.get() + at, shape.object_bytes);
  }
  benchmark::ClobberMemory();
}

void DataMemcpy(benchmark::State& state) {
  const DataShape shape = Shape(state);
  DataBuffers& d = Data();
  for (auto _ : state) MemcpyCycle(shape, d);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * shape.total()));
}
BENCHMARK(DataMemcpy)->ArgNames({"mib", "batch"})->Apply([](auto* b) { DataShapes(b); }) -> UseRealTime();

// hiredis SET of each object, then GET of each, copied out of the reply; a batch is pipelined
// (all SETs sent, then their replies read; the same for the GETs), Redis's own batching.
void DataRedis(benchmark::State& state) {
  const DataShape shape = Shape(state);
  RedisConn c = RedisOrSkip(state);
  if (!c) return;
  DataBuffers& d = Data();
  const std::vector<std::string> keys = DataKeys("data", shape.batch);
  auto reply = [&]() {
    void* r = nullptr;
    if (redisGetReply(c.get(), &r) != REDIS_OK) r = nullptr;
    return RedisReplyPtr(static_cast<redisReply*>(r));
  };
  for (auto _ : state) {
    bool ok = true;
    for (size_t i = 0; i < shape.batch; ++i) {
      redisAppendCommand(c.get(), "SET %b %b", keys[i].data(), keys[i].size(), d.src.get() + i * shape.object_bytes,
                         shape.object_bytes);
    }
    for (size_t i = 0; ok && i < shape.batch; ++i) {
      RedisReplyPtr set = reply();
      ok = set && set->type == REDIS_REPLY_STATUS;
    }
    for (size_t i = 0; ok && i < shape.batch; ++i)
      redisAppendCommand(c.get(), "GET %b", keys[i].data(), keys[i].size());
    for (size_t i = 0; ok && i < shape.batch; ++i) {
      RedisReplyPtr get = reply();
      ok = get && get->type == REDIS_REPLY_STRING && get->len == static_cast<decltype(get->len)>(shape.object_bytes);
      if (ok) std::memcpy(d.dst.get() + i * shape.object_bytes, get->str, shape.object_bytes);
    }
    if (!ok) {
      state.SkipWithError(fmt::format("SET or GET failed: {}", c->errstr).c_str());
      break;
    }
    benchmark::ClobberMemory();
  }
  for (const std::string& k : keys) (void)Command(c.get(), "DEL %b", k.data(), k.size());
  if (std::memcmp(d.src.get(), d.dst.get(), shape.total()) != 0) state.SkipWithError("the bytes read back differ");
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * 2 * shape.total()));
}
BENCHMARK(DataRedis)->ArgNames({"mib", "batch"})->Apply([](auto* b) { DataShapes(b); }) -> UseRealTime();

// ---- paired runs: shmkv and its baseline alternating in one loop --------------------------------
//
// On a machine that others load, separate runs of shmkv and of its baseline meet different load,
// and their ratio swings with it. Here one iteration runs a block of the baseline and a block of
// shmkv back to back (which goes first alternates), timing each: both see the same load within a
// few milliseconds, and the counter `ratio` is shmkv's rate over the baseline's over the run.

using SteadyClock = std::chrono::steady_clock;
double Seconds(SteadyClock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// The echo process of RawPingPong, for the paired runs: blocking, 72 B requests, 24 B replies.
class Echo {
 public:
  static constexpr size_t kReq = 72, kRep = 24;
  Echo() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      PinTo(g_config.server_cpu);
      ::close(sv[0]);
      char req[kReq], rep[kRep] = {};
      while (ReadExact(sv[1], req, kReq) && WriteAll(sv[1], rep, kRep)) {
      }
      ::_exit(0);
    }
    ::close(sv[1]);
    fd_ = sv[0];
  }
  ~Echo() {
    if (fd_ >= 0) ::close(fd_);  // the child sees EOF and exits
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }
  bool ok() const { return fd_ >= 0 && pid_ > 0; }
  bool RoundTrip() {
    char req[kReq] = {}, rep[kRep];
    return WriteAll(fd_, req, kReq) && ReadExact(fd_, rep, kRep);
  }

 private:
  int fd_ = -1;
  pid_t pid_ = -1;
};

// kind 0: 1-key prepare_store + commit_store, both waited for (2 round trips per pair);
// kind 1: the same with the commit posted (2 requests, 1 wait per pair); kind 2: 1-key lookup.
// Counters: raw_rt_per_s, shmkv_rt_per_s (requests/s: 2 per store pair), ratio (of the two).
void PairedControl(benchmark::State& state) {
  const int kind = static_cast<int>(state.range(0));
  constexpr int kBlock = 32;
  Echo echo;
  if (!echo.ok()) {
    state.SkipWithError("starting the echo process failed");
    return;
  }
  auto client = ConnectOrSkip(state, kind == 2 ? kReadModel : "bench-paired");
  if (!client) return;
  std::string name = MakeKey("paired");
  const std::string_view key_store = name;
  const std::string_view key_read = ReadKey();
  const uint64_t size = kControlObjectBytes;
  const double requests_per_op = kind == 2 ? 1 : 2;
  double raw_s = 0, shm_s = 0;
  uint64_t ops = 0, held = 0;
  bool raw_first = true;
  auto raw_block = [&] {
    const auto t0 = SteadyClock::now();
    for (int i = 0; i < kBlock; ++i) {
      if (!echo.RoundTrip()) return false;
    }
    raw_s += Seconds(SteadyClock::now() - t0);
    return true;
  };
  auto shm_block = [&] {
    const auto t0 = SteadyClock::now();
    for (int i = 0; i < kBlock; ++i) {
      if (kind == 2) {
        auto n = client->Lookup({&key_read, 1});
        if (FailIf(state, n.status(), "lookup")) return false;
        continue;
      }
      SetKeyIndex(name, g_next_key++);
      auto slots = client->PrepareStore({&key_store, 1}, {&size, 1});
      if (FailIf(state, slots.status(), "prepare_store")) return false;
      if (slots->slots[0].status != SlotStatus::kOk) {
        state.SkipWithError("prepare_store handed out no slot for a fresh key");
        return false;
      }
      const Status c = kind == 1 ? client->PostCommitStore({&key_store, 1}) : client->CommitStore({&key_store, 1});
      if (FailIf(state, c, "commit_store")) return false;
    }
    shm_s += Seconds(SteadyClock::now() - t0);
    return true;
  };
  for (auto _ : state) {
    const bool ok = raw_first ? raw_block() && shm_block() : shm_block() && raw_block();
    if (!ok) {
      if (!state.error_occurred()) state.SkipWithError("the echo process went away");
      break;
    }
    raw_first = !raw_first;
    ops += kBlock;
    held += kind == 2 ? 0 : kBlock;
    if (held >= kClearEvery) {  // outside both timed blocks
      if (FailIf(state, client->Sync(), "sync")) break;
      (void)client->Clear();
      held = 0;
    }
  }
  const auto t0 = SteadyClock::now();
  if (FailIf(state, client->Sync(), "sync")) return;  // the last posted reply belongs to shmkv's time
  shm_s += Seconds(SteadyClock::now() - t0);
  if (kind != 2) (void)client->Clear();  // never in the read namespace: Lookup's object lives there
  if (raw_s <= 0 || shm_s <= 0) return;
  const double raw_rate = static_cast<double>(ops) / raw_s;
  const double shm_rate = static_cast<double>(ops) * requests_per_op / shm_s;
  state.counters["raw_rt_per_s"] = raw_rate;
  state.counters["shmkv_rt_per_s"] = shm_rate;
  state.counters["ratio"] = shm_rate / raw_rate;
}
BENCHMARK(PairedControl)->ArgName("kind")->Arg(0)->Arg(1)->Arg(2)->UseRealTime();

// One shmkv store+retrieve cycle of `batch` objects (commits posted when `post`), remove timed,
// alternating with the memcpy baseline of the same bytes (DataMemcpy). Counters: shmkv_gbps,
// memcpy_gbps, ratio.
void PairedData(benchmark::State& state) {
  const DataShape shape = Shape(state);
  const bool post = state.range(2) != 0;
  static std::optional<Client> client;
  if (!client) client = ConnectOrSkip(state, "bench-paired-data");
  if (!client) return;
  DataBuffers& d = Data();
  const std::vector<std::string> names = DataKeys("pdata", shape.batch);
  const std::vector<std::string_view> keys(names.begin(), names.end());
  const std::vector<uint64_t> sizes(shape.batch, shape.object_bytes);
  auto shm_cycle = [&]() -> bool {
    auto put = client->PrepareStore(keys, sizes);
    if (FailIf(state, put.status(), "prepare_store")) return false;
    for (size_t i = 0; i < shape.batch; ++i) {
      if (put->slots[i].status != SlotStatus::kOk) {
        state.SkipWithError("prepare_store handed out no slot");
        return false;
      }
      std::memcpy(put->slots[i].bytes.data(), d.src.get() + i * shape.object_bytes, shape.object_bytes);
    }
    if (FailIf(state, post ? client->PostCommitStore(keys) : client->CommitStore(keys), "commit_store")) return false;
    auto got = client->PrepareRetrieve(keys);
    if (FailIf(state, got.status(), "prepare_retrieve")) return false;
    for (size_t i = 0; i < shape.batch; ++i) {
      if (got->slots[i].status != SlotStatus::kOk) {
        state.SkipWithError("prepare_retrieve: an object just stored is missing");
        return false;
      }
      std::memcpy(d.dst.get() + i * shape.object_bytes, got->slots[i].bytes.data(), shape.object_bytes);
    }
    benchmark::ClobberMemory();
    if (FailIf(state, post ? client->PostCommitRetrieve(keys) : client->CommitRetrieve(keys), "commit_retrieve")) {
      return false;
    }
    auto r = client->Remove(keys);  // timed: it also reads the posted commit_retrieve's reply
    return !FailIf(state, r.status(), "remove");
  };
  auto memcpy_cycle = [&] { MemcpyCycle(shape, d); };
  (void)client->Sync();
  (void)client->Remove(keys);
  if (!shm_cycle()) return;  // warm-up: the slots' pages fault in here
  memcpy_cycle();
  double shm_s = 0, cpy_s = 0;
  bool shm_first = true;
  for (auto _ : state) {
    for (int turn = 0; turn < 2; ++turn) {
      const auto t0 = SteadyClock::now();
      if ((turn == 0) == shm_first) {
        if (!shm_cycle()) return;
        shm_s += Seconds(SteadyClock::now() - t0);
      } else {
        memcpy_cycle();
        cpy_s += Seconds(SteadyClock::now() - t0);
      }
    }
    shm_first = !shm_first;
  }
  if (std::memcmp(d.src.get(), d.dst.get(), shape.total()) != 0) state.SkipWithError("the bytes read back differ");
  const double bytes = static_cast<double>(state.iterations()) * 2.0 * static_cast<double>(shape.total());
  if (shm_s <= 0 || cpy_s <= 0) return;
  state.counters["shmkv_gbps"] = bytes / shm_s / 1e9;
  state.counters["memcpy_gbps"] = bytes / cpy_s / 1e9;
  state.counters["ratio"] = cpy_s / shm_s;
  state.counters["anon_huge_mib"] = AnonHugeMib();
}
BENCHMARK(PairedData)
    ->ArgNames({"mib", "batch", "post"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (int64_t post : {0, 1}) DataShapes(b, {post});
    })
    ->UseRealTime();

// ---- main --------------------------------------------------------------------------------------

std::string DefaultServerBin() {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "shmkv-server";
  return (self.parent_path() / ".." / ".." / "src" / "shmkv-server").lexically_normal().string();
}

// Stores the 16-byte object that Lookup and RetrievePair read.
Status StoreReadObject() {
  auto c = Client::Connect(Options(kReadModel));
  if (!c.ok()) return c.status();
  const std::string_view key = ReadKey();
  const uint64_t size = kReadValueBytes;
  auto put = c->PrepareStore({&key, 1}, {&size, 1});
  if (!put.ok()) return put.status();
  if (put->slots[0].status != SlotStatus::kOk) return Status::Internal("no slot for the read object");
  std::memset(put->slots[0].bytes.data(), 'v', kReadValueBytes);
  return c->CommitStore({&key, 1});
}

int Main(int argc, char** argv) {
  if (const char* e = std::getenv("SHMKV_SERVER_BIN"); e != nullptr && *e != '\0') g_config.server_bin = e;
  if (const char* e = std::getenv("SHMKV_BENCH_REDIS_SOCKET"); e != nullptr) g_config.redis_socket = e;
  // Take our own flags out before Google Benchmark sees argv.
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.starts_with("--shmkv_server_bin=")) {
      g_config.server_bin = a.substr(a.find('=') + 1);
    } else if (a.starts_with("--redis_socket=")) {
      g_config.redis_socket = a.substr(a.find('=') + 1);
    } else if (a.starts_with("--client_cpu=")) {
      g_config.client_cpu = std::atoi(argv[i] + a.find('=') + 1);
    } else if (a.starts_with("--server_cpu=")) {
      g_config.server_cpu = std::atoi(argv[i] + a.find('=') + 1);
    } else if (a.starts_with("--private_huge_pages=")) {
      g_config.private_huge_pages = a.substr(a.find('=') + 1) == "1";
    } else if (a.starts_with("--pool_size=")) {
      g_config.pool_size = a.substr(a.find('=') + 1);
    } else if (a.starts_with("--server_arg=")) {
      g_config.server_args.emplace_back(a.substr(a.find('=') + 1));
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (g_config.server_bin.empty()) g_config.server_bin = DefaultServerBin();
  PinTo(g_config.client_cpu);

  ServerProcess server;
  if (Status s = server.Start(g_config.server_bin); !s.ok()) {
    std::fprintf(stderr, "server_bench: starting shmkv-server: %s\n", s.ToString().c_str());
    return 1;
  }
  g_config.socket = server.socket();
  g_server_pid = server.pid();
  if (Status s = StoreReadObject(); !s.ok()) {
    std::fprintf(stderr, "server_bench: storing the read object: %s\n", s.ToString().c_str());
    return 1;
  }
  benchmark::AddCustomContext("shmkv_server_bin", g_config.server_bin);
  benchmark::AddCustomContext("client_cpu", std::to_string(g_config.client_cpu));
  benchmark::AddCustomContext("server_cpu", std::to_string(g_config.server_cpu));
  std::string server_args;
  for (const std::string& a : g_config.server_args) server_args += (server_args.empty() ? "" : " ") + a;
  benchmark::AddCustomContext("server_args", server_args.empty() ? "(none)" : server_args);
  benchmark::AddCustomContext("pool_huge_pages", g_config.huge_pages);
  benchmark::AddCustomContext("private_huge_pages", g_config.private_huge_pages ? "1" : "0");
  benchmark::AddCustomContext("redis_socket", g_config.redis_socket.empty() ? "(none)" : g_config.redis_socket);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  server.Stop();
  return 0;
}

}  // namespace
}  // namespace shmkv

int main(int argc, char** argv) {
  return shmkv::Main(argc, argv);
}
