#include "server/command_line.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include <fmt/format.h>

#include "common/log.h"
#include "protocol/wire.h"
#include "shmkv/size.h"
#include "shmkv/version.h"

namespace shmkv {

namespace {

// The first line of `path`, without its line end.
Result<std::string> ReadPasswordFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::NotFound(fmt::format("cannot read '{}'", path));
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
  if (line.empty()) return Status::InvalidArgument(fmt::format("'{}' holds no password on its first line", path));
  return line;
}

}  // namespace

std::optional<ServerCommandLine> ParseServerCommandLine(int argc, const char* const* argv, int* exit_code) {
  CLI::App app{"shmkv-server: owns the L1 shared-memory pool and serves KV-cache workers"};
  app.set_version_flag("--version", fmt::format("shmkv-server {} (protocol {}..{})", kVersionString,
                                                wire::kMinProtocolVersion, wire::kProtocolVersion));
  app.set_config("--config", "", "Read options from a TOML/INI file (keys are the long option names)");
  app.allow_config_extras(CLI::config_extras_mode::error);  // a misspelt key is an error, not ignored
  ServerCommandLine result;
  ServerOptions& o = result.options;  // holds every default (server.h, disk_tier_options.h)
  const DiskTierOptions disk_defaults;
  auto seconds = [](std::chrono::milliseconds ms) { return static_cast<double>(ms.count()) / 1000.0; };
  std::string pool_size_text, shm_name;
  std::string huge_pages_text(HugePagesName(o.huge_pages));
  std::string& log_level = result.log_level;
  o.socket_path = DefaultSocketPath();
  double reserve_ttl_s = seconds(o.reserve_ttl), pin_ttl_s = seconds(o.pin_ttl);
  std::string mode_text = fmt::format("{:o}", o.socket_mode);
  // Shown as --help's default and parsed back by ParseSize: the largest exact unit.
  auto size_text = [](uint64_t b) {
    if (b != 0 && b % (1ull << 30) == 0) return fmt::format("{}GiB", b >> 30);
    if (b != 0 && b % (1ull << 20) == 0) return fmt::format("{}MiB", b >> 20);
    return std::to_string(b);
  };
  std::string buffered_text = size_text(o.max_buffered_bytes);
  bool no_prefault = false;
  std::string disk_dir, disk_size_text, file_worker, disk_direct_text = "auto";
  bool disk_write_through = false;
  double disk_io_timeout_s = seconds(disk_defaults.io_timeout);
  std::string eviction_text(EvictionModeName(o.eviction.mode));
  const RedisTierOptions redis_defaults;
  std::string redis_url, redis_password_file, redis_inflight_text = size_text(redis_defaults.max_inflight_bytes);
  std::string redis_write_text(RedisWriteModeName(redis_defaults.write));
  int64_t redis_ttl_s = redis_defaults.ttl.count();
  int64_t redis_timeout_ms = redis_defaults.cluster.timeout.count();
  // Checked after parsing, not with ->required(): CLI11 checks required options before unknown
  // ones, so a misspelt --pool-sise would be reported as "--pool-size is required".
  app.add_option("--pool-size", pool_size_text, "Pool size: 512MiB, 4GiB or a byte count (required)");
  app.add_option("--shm-name", shm_name, "Segment name (prefixed with lmcache_l1_pool_; default: the pid)");
  app.add_option("--shm-dir", o.shm_dir,
                 "Create the segment in DIR instead of /dev/shm: a hugetlbfs mount or a tmpfs mounted "
                 "huge=always|within_size gives the pool huge pages (docs/huge-pages.md)");
  app.add_option("--huge-pages", huge_pages_text,
                 "Huge pages for the pool: off, auto (ask; else 4 KiB pages and a log line) or on (fail without them)")
      ->capture_default_str();
  app.add_option("--socket", o.socket_path, "Control socket path")->capture_default_str();
  app.add_option("--socket-mode", mode_text, "Socket and segment permissions: 600 or 660")->capture_default_str();
  app.add_option("--reserve-ttl", reserve_ttl_s, "Seconds before an uncommitted reservation is freed")
      ->capture_default_str();
  app.add_option("--pin-ttl", pin_ttl_s, "Seconds before an unreleased read pin is dropped")->capture_default_str();
  app.add_option("--max-frame", o.max_frame_bytes, "Largest request frame in bytes")->capture_default_str();
  app.add_option("--max-buffered", buffered_text,
                 "Request bytes all connections may buffer together: 1GiB or a byte count")
      ->capture_default_str();
  app.add_flag("--no-prefault", no_prefault, "Do not fault the pool in at start");
  app.add_option("--disk-dir", disk_dir, "Enable the L2 disk tier with its files under DIR (docs/l2-tier.md)");
  app.add_option("--disk-size", disk_size_text,
                 "L2 size bound: 64GiB or a byte count (default: files found + 90% of the free space)");
  app.add_flag("--disk-write-through", disk_write_through,
               "Write every committed object to L2 (default: write-behind once L1 is half full)");
  app.add_option("--file-worker", file_worker,
                 "shmkv-file-worker binary for L2 (default: next to this executable, else on PATH)");
  app.add_option("--disk-direct", disk_direct_text,
                 "O_DIRECT for L2 files: auto (when the file system takes it, else buffered with a warning), on "
                 "(refuse to start without it) or off (page cache)")
      ->capture_default_str();
  app.add_option("--disk-io-timeout", disk_io_timeout_s,
                 "Seconds without a reply after which the file worker counts as hung and is restarted")
      ->capture_default_str();
  app.add_option("--eviction-policy", eviction_text,
                 "L1 eviction: adaptive (window TinyLFU tuned online) or lru (docs/eviction.md)")
      ->capture_default_str();
  app.add_option("--redis", redis_url,
                 "Enable the L3 Redis tier: redis://[user[:password]@]host:port[,host:port...] (seed nodes of a "
                 "Redis Cluster, or one non-cluster Redis; docs/l3-redis.md)");
  app.add_option("--redis-password-file", redis_password_file,
                 "File holding the Redis password (first line), instead of the URL where ps shows it; the "
                 "environment variable SHMKV_REDIS_PASSWORD also works");
  app.add_option("--redis-write", redis_write_text,
                 "When committed chunks go to Redis: behind (batched in the background), through (at every "
                 "commit; shutdown waits for them) or off (read only)")
      ->capture_default_str();
  app.add_option("--redis-ttl", redis_ttl_s, "Seconds before a chunk stored in Redis expires; 0: never")
      ->capture_default_str();
  app.add_option("--redis-timeout", redis_timeout_ms, "Milliseconds bounding every Redis connect, read and write")
      ->capture_default_str();
  app.add_option("--redis-max-inflight-bytes", redis_inflight_text,
                 "Bytes of chunks queued for Redis at once (at most a quarter of the pool); commits past it are "
                 "not written to Redis (l3_write_dropped)")
      ->capture_default_str();
  std::string metrics_address;
  app.add_option("--metrics-address", metrics_address,
                 "Serve Prometheus metrics on http://HOST:PORT/metrics and health on /healthz, e.g. "
                 "127.0.0.1:9464 (default: off; docs/operations.md)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error exits 2, as the documentation says.
    *exit_code = app.exit(e) == 0 ? 0 : 2;
    return std::nullopt;
  }

  // A wrong value is a usage error too: exit 2, as for an unknown option (1 is for a server that
  // started and failed).
  auto fail = [exit_code](const std::string& what) -> std::optional<ServerCommandLine> {
    fmt::print(stderr, "shmkv-server: {}\nRun with --help for more information.\n", what);
    *exit_code = 2;
    return std::nullopt;
  };
  if (pool_size_text.empty()) return fail("--pool-size is required (e.g. --pool-size 4GiB)");
  if (auto s = SetLogLevel(log_level); !s.ok()) return fail(s.message());
  auto size = ParseSize(pool_size_text);
  if (!size.ok()) return fail("--pool-size: " + size.status().message());
  if (*size == 0) return fail("--pool-size must be positive");
  o.pool_size = *size;
  auto buffered = ParseSize(buffered_text);
  if (!buffered.ok()) return fail("--max-buffered: " + buffered.status().message());
  if (*buffered < o.max_frame_bytes) return fail("--max-buffered must be at least --max-frame");
  o.max_buffered_bytes = *buffered;
  if (!shm_name.empty()) o.shm_name = shm_name;
  auto huge_pages = ParseHugePages(huge_pages_text);
  if (!huge_pages.ok()) return fail("--huge-pages: " + huge_pages.status().message());
  o.huge_pages = *huge_pages;
  while (o.shm_dir.size() > 1 && o.shm_dir.back() == '/') o.shm_dir.pop_back();
  if (!o.shm_dir.empty() && !o.shm_dir.starts_with('/')) return fail("--shm-dir must be an absolute path");
  if (mode_text == "600" || mode_text == "0600") {
    o.socket_mode = 0600;
  } else if (mode_text == "660" || mode_text == "0660") {
    o.socket_mode = 0660;
  } else {
    return fail("--socket-mode must be 600 or 660, not " + mode_text);
  }
  if (reserve_ttl_s <= 0 || pin_ttl_s <= 0) return fail("--reserve-ttl and --pin-ttl must be positive");
  o.reserve_ttl = std::chrono::milliseconds(static_cast<int64_t>(reserve_ttl_s * 1000));
  o.pin_ttl = std::chrono::milliseconds(static_cast<int64_t>(pin_ttl_s * 1000));
  o.prefault = !no_prefault;
  auto eviction = ParseEvictionMode(eviction_text);
  if (!eviction.ok()) return fail("--eviction-policy: " + eviction.status().message());
  o.eviction.mode = *eviction;
  if (disk_dir.empty() &&
      (!disk_size_text.empty() || disk_write_through || !file_worker.empty() || disk_direct_text != "auto")) {
    return fail("--disk-size, --disk-write-through, --disk-direct and --file-worker need --disk-dir");
  }
  if (!disk_dir.empty()) {
    DiskTierOptions d;
    d.dir = disk_dir;
    d.write_through = disk_write_through;
    d.worker_binary = file_worker;
    if (disk_direct_text == "auto") {
      d.direct = DiskDirectIo::kAuto;
    } else if (disk_direct_text == "on") {
      d.direct = DiskDirectIo::kOn;
    } else if (disk_direct_text == "off") {
      d.direct = DiskDirectIo::kOff;
    } else {
      return fail("--disk-direct: '" + disk_direct_text + "' is not auto, on or off");
    }
    if (disk_io_timeout_s <= 0) return fail("--disk-io-timeout must be positive");
    d.io_timeout = std::chrono::milliseconds(static_cast<int64_t>(disk_io_timeout_s * 1000));
    if (!disk_size_text.empty()) {
      auto ds = ParseSize(disk_size_text);
      if (!ds.ok()) return fail("--disk-size: " + ds.status().message());
      if (*ds == 0) return fail("--disk-size must be positive");
      d.capacity = *ds;
    }
    o.disk = d;
  }
  const bool redis_tuned =
      !redis_password_file.empty() || redis_write_text != RedisWriteModeName(redis_defaults.write) ||
      redis_ttl_s != redis_defaults.ttl.count() || redis_timeout_ms != redis_defaults.cluster.timeout.count() ||
      redis_inflight_text != size_text(redis_defaults.max_inflight_bytes);
  if (redis_url.empty() && redis_tuned) return fail("the --redis-* options need --redis");
  if (!redis_url.empty()) {
    RedisTierOptions r;
    auto cluster = redis::ParseUrl(redis_url);
    if (!cluster.ok()) return fail("--redis: " + cluster.status().message());
    r.cluster = *std::move(cluster);
    if (!redis_password_file.empty()) {
      auto password = ReadPasswordFile(redis_password_file);
      if (!password.ok()) return fail("--redis-password-file: " + password.status().message());
      r.cluster.password = *std::move(password);
    } else if (const char* env = std::getenv("SHMKV_REDIS_PASSWORD"); env != nullptr && *env != '\0') {
      r.cluster.password = env;
    }
    if (redis_write_text == "behind") {
      r.write = RedisWriteMode::kBehind;
    } else if (redis_write_text == "through") {
      r.write = RedisWriteMode::kThrough;
    } else if (redis_write_text == "off") {
      r.write = RedisWriteMode::kOff;
    } else {
      return fail("--redis-write must be behind, through or off, not '" + redis_write_text + "'");
    }
    if (redis_ttl_s < 0) return fail("--redis-ttl must be 0 (never) or a positive number of seconds");
    r.ttl = std::chrono::seconds(redis_ttl_s);
    if (redis_timeout_ms <= 0) return fail("--redis-timeout must be a positive number of milliseconds");
    r.cluster.timeout = std::chrono::milliseconds(redis_timeout_ms);
    auto inflight = ParseSize(redis_inflight_text);
    if (!inflight.ok()) return fail("--redis-max-inflight-bytes: " + inflight.status().message());
    if (*inflight == 0) return fail("--redis-max-inflight-bytes must be positive");
    r.max_inflight_bytes = *inflight;
    o.redis = std::move(r);
  }
  if (!metrics_address.empty()) {
    auto m = metrics::ParseMetricsAddress(metrics_address);
    if (!m.ok()) return fail("--metrics-address: " + m.status().message());
    if (!metrics::IsLoopbackHost(m->host)) {
      Log().warn(
          "--metrics-address {}: not a loopback address; the metrics (key counts, sizes) are served to "
          "the network",
          metrics_address);
    }
    o.metrics = *std::move(m);
  }

  return result;
}

}  // namespace shmkv
