// `shmkv top [--socket PATH] [--interval S] [--iterations N]`: a running server's figures,
// refreshed (docs/operations.md "A live view"). On a terminal the screen is redrawn in place; when
// stdout is not a terminal each sample is one plain line (a header line every 20), for logs and
// scripts. Rates come from the difference of two successive `stats` replies, so the first sample
// shows "-" for them; `--iterations 1` prints one sample and exits. `shmkv stats --json` stays the
// machine-readable form.
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <ctime>
#include <optional>
#include <thread>

#include "cli/commands.h"
#include "server/server.h"
#include "shmkv/client.h"

namespace shmkv::cli {
namespace {

using SteadyClock = std::chrono::steady_clock;

struct Sample {
  StatsMap stats;
  SteadyClock::time_point at;
};

std::optional<uint64_t> Get(const StatsMap& m, const std::string& name) {
  auto it = m.find(name);
  if (it == m.end()) return std::nullopt;
  return it->second;
}

// Binary units for sizes (the pool is given in GiB), SI for rates (GB/s, as disks and links say).
std::string Bytes(uint64_t b) {
  constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.1f} {}", v, kUnits[u]);
}

std::string Rate(std::optional<double> per_s) {
  if (!per_s) return "-";
  if (*per_s >= 1e6) return fmt::format("{:.2f}M", *per_s / 1e6);
  if (*per_s >= 1e4) return fmt::format("{:.1f}k", *per_s / 1e3);
  return fmt::format("{:.1f}", *per_s);
}

std::string ByteRate(std::optional<double> per_s) {
  if (!per_s) return "-";
  if (*per_s >= 1e9) return fmt::format("{:.2f} GB/s", *per_s / 1e9);
  if (*per_s >= 1e6) return fmt::format("{:.1f} MB/s", *per_s / 1e6);
  return fmt::format("{:.1f} kB/s", *per_s / 1e3);
}

std::string Percent(std::optional<double> fraction) {
  return fraction ? fmt::format("{:.1f}%", *fraction * 100) : "-";
}

// What two samples say. Every figure is optional: an older server reports fewer counters, and
// the first sample has no rates.
class View {
 public:
  View(const Sample& now, const Sample* before) : now_(now), before_(before) {
    if (before_ != nullptr) dt_ = std::chrono::duration<double>(now_.at - before_->at).count();
  }

  std::optional<uint64_t> Value(const std::string& name) const { return Get(now_.stats, name); }

  std::optional<double> Delta(const std::string& name) const {
    if (before_ == nullptr) return std::nullopt;
    auto a = Get(before_->stats, name);
    auto b = Get(now_.stats, name);
    if (!a || !b || *b < *a) return std::nullopt;  // a restarted server counts from 0 again
    return static_cast<double>(*b - *a);
  }

  std::optional<double> PerSecond(const std::string& name) const {
    auto d = Delta(name);
    if (!d || dt_ <= 0) return std::nullopt;
    return *d / dt_;
  }

  // Hits over keys asked in the interval: each key counted once (docs/operations.md).
  std::optional<double> Ratio(const std::string& hits, const std::string& keys) const {
    auto h = Delta(hits);
    auto k = Delta(keys);
    if (!h || !k || *k == 0) return std::nullopt;
    return *h / *k;
  }

  std::optional<double> Occupancy(const std::string& used, const std::string& capacity) const {
    auto u = Value(used);
    auto c = Value(capacity);
    if (!u || !c || *c == 0) return std::nullopt;
    return static_cast<double>(*u) / static_cast<double>(*c);
  }

  bool restarted() const {
    if (before_ == nullptr) return false;
    auto a = Get(before_->stats, "generation");
    auto b = Get(now_.stats, "generation");
    return a && b && *a != *b;
  }

 private:
  const Sample& now_;
  const Sample* before_;
  double dt_ = 0;
};

std::string Num(std::optional<uint64_t> v) {
  return v ? fmt::format("{}", *v) : "-";
}

std::string TimeOfDay() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  return fmt::format("{:%H:%M:%S}", tm);
}

std::string UpDown(std::optional<uint64_t> v) {
  if (!v) return "state unknown";
  return *v != 0 ? "up" : "DOWN";
}

// The terminal screen: redrawn from the top left each time.
std::string Screen(const View& v, const std::string& socket, double interval, bool has_l2) {
  std::string s = "\x1b[H\x1b[2J";
  s += fmt::format("shmkv top  {}  every {:g} s  {}   (Ctrl-C quits)\n\n", socket, interval, TimeOfDay());
  if (v.restarted()) s += "the server restarted since the last sample: rates start again\n";
  s += fmt::format("sessions {:<6} reserved {:<6} pinned {:<6} quarantined {}\n", Num(v.Value("sessions")),
                   Num(v.Value("reserved_objects")), Num(v.Value("pinned_objects")), Num(v.Value("quarantined_slots")));
  s += "\nper second  lookups    objects stored  objects retrieved\n";
  s += fmt::format("            {:<10} {:<15} {}\n", Rate(v.PerSecond("lookups")), Rate(v.PerSecond("stores")),
                   Rate(v.PerSecond("retrieves")));
  s += fmt::format("\nhit rate  {} of the keys looked up (any tier)   L1 alone {}\n",
                   Percent(v.Ratio("lookup_hit_keys", "lookup_keys")), Percent(v.Ratio("lookup_hits", "lookup_keys")));
  s += "\ntier  objects     used / capacity                in           out          evictions/s\n";
  auto row = [&](std::string_view tier, const std::string& objects, const std::string& used, const std::string& cap,
                 const std::string& in, const std::string& out, const std::string& evictions) {
    std::string usage = "-";
    if (auto u = v.Value(used)) {
      usage = Bytes(*u);
      if (auto c = v.Value(cap)) usage += fmt::format(" / {} ({})", Bytes(*c), Percent(v.Occupancy(used, cap)));
    }
    s += fmt::format("{:<5} {:<11} {:<30} {:<12} {:<12} {}\n", tier, Num(v.Value(objects)), usage,
                     ByteRate(v.PerSecond(in)), ByteRate(v.PerSecond(out)), Rate(v.PerSecond(evictions)));
  };
  row("L1", "objects", "used_bytes", "pool_size", "stored_bytes", "retrieved_bytes", "evictions");
  if (has_l2) {
    row("L2", "l2_objects", "l2_bytes", "l2_capacity", "l2_write_bytes", "l2_load_bytes", "l2_evictions");
    s += fmt::format("L2 {}; not yet on disk: {} objects, {}; dropped before written: {}/s\n",
                     UpDown(v.Value("l2_available")), Num(v.Value("l2_dirty_objects")),
                     v.Value("l2_dirty_bytes") ? Bytes(*v.Value("l2_dirty_bytes")) : "-",
                     Rate(v.PerSecond("l2_evicted_dirty")));
  }
  return s;
}

// The plain line, and its header.
constexpr std::string_view kHeader =
    "time      lookup/s  store/s   retr/s    hit%    L1-used  L1-evict/s  L2-in        L2-out       sessions";

std::string Line(const View& v) {
  return fmt::format(
      "{:<9} {:<9} {:<9} {:<9} {:<7} {:<8} {:<11} {:<12} {:<12} {}", TimeOfDay(), Rate(v.PerSecond("lookups")),
      Rate(v.PerSecond("stores")), Rate(v.PerSecond("retrieves")), Percent(v.Ratio("lookup_hit_keys", "lookup_keys")),
      Percent(v.Occupancy("used_bytes", "pool_size")), Rate(v.PerSecond("evictions")),
      ByteRate(v.PerSecond("l2_write_bytes")), ByteRate(v.PerSecond("l2_load_bytes")), Num(v.Value("sessions")));
}

volatile std::sig_atomic_t g_stop = 0;
void OnSignal(int) {
  g_stop = 1;
}

}  // namespace

void AddTopCommand(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("top", "Show a running server's rates and occupancy, refreshed");
  auto socket = std::make_shared<std::string>(DefaultSocketPath());
  auto interval = std::make_shared<double>(1.0);
  auto iterations = std::make_shared<int64_t>(0);
  auto timeout_s = std::make_shared<double>(5.0);
  cmd->add_option("--socket", *socket, "Control socket of the server")->capture_default_str();
  cmd->add_option("--interval", *interval, "Seconds between samples")
      ->capture_default_str()
      ->check(CLI::Range(0.05, 3600.0));
  cmd->add_option("--iterations", *iterations, "Samples to show, then exit (0: until Ctrl-C; 1: once, for scripts)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--timeout", *timeout_s, "Seconds to wait for the server")->capture_default_str();
  cmd->callback([=] {
    const bool tty = ::isatty(STDOUT_FILENO) == 1;
    std::signal(SIGINT, OnSignal);
    std::signal(SIGTERM, OnSignal);
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(*timeout_s * 1000));
    const auto period = std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(*interval));
    std::optional<Sample> before;
    auto next = SteadyClock::now();
    for (int64_t i = 0; (*iterations == 0 || i < *iterations) && g_stop == 0; ++i) {
      if (i > 0) {
        next += period;
        // Sleep in short steps so Ctrl-C ends at once.
        while (g_stop == 0 && SteadyClock::now() < next) std::this_thread::sleep_for(std::chrono::milliseconds(20));
        if (g_stop != 0) break;
      }
      auto stats = Client::QueryStats(*socket, timeout);
      if (!stats.ok()) {
        fmt::print(stderr, "shmkv top: {}\n", stats.status().ToString());
        *exit_code = 1;
        return;
      }
      Sample now{std::move(stats).value(), SteadyClock::now()};
      const View v(now, before ? &*before : nullptr);
      if (tty) {
        fmt::print("{}", Screen(v, *socket, *interval, now.stats.contains("l2_objects")));
      } else {
        if (i % 20 == 0) fmt::print("{}\n", kHeader);
        fmt::print("{}\n", Line(v));
      }
      std::fflush(stdout);
      before = std::move(now);
    }
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    *exit_code = 0;
  });
}

}  // namespace shmkv::cli
