// `shmkv stats [--socket PATH] [--json]`: a running server's figures.
#include <fmt/format.h>

#include <algorithm>
#include <string>

#include "cli/commands.h"
#include "server/server.h"
#include "shmkv/client.h"
#include "shmkv/size.h"
#include "shmkv/version.h"

namespace shmkv::cli {

namespace {

std::string Duration(uint64_t s) {
  if (s >= 86400) return fmt::format("{}d {}h", s / 86400, s % 86400 / 3600);
  if (s >= 3600) return fmt::format("{}h {:02}m", s / 3600, s % 3600 / 60);
  if (s >= 60) return fmt::format("{}m {:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

std::string Percent(uint64_t part, uint64_t whole) {
  return whole == 0 ? std::string("-")
                    : fmt::format("{:.1f}%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
}

// A summary a person reads first, then every counter, aligned, sizes in binary units too.
void PrintStats(const std::string& socket, const StatsMap& st) {
  auto get = [&](const char* name) {
    auto it = st.find(name);
    return it == st.end() ? uint64_t{0} : it->second;
  };
  fmt::print("shmkv-server at {} (shmkv {} client)\n", socket, kVersionString);
  if (st.contains("uptime_seconds")) fmt::print("  up {}\n", Duration(get("uptime_seconds")));
  fmt::print("  pool      {} of {} used ({}), {} objects\n", FormatSize(get("used_bytes")),
             FormatSize(get("pool_size")), Percent(get("used_bytes"), get("pool_size")), get("objects"));
  if (st.contains("lookup_keys")) {
    fmt::print("  lookups   {} ({} keys); hit rate {} of keys (L1 {}{}{})\n", get("lookups"), get("lookup_keys"),
               Percent(get("lookup_hit_keys"), get("lookup_keys")), get("lookup_hits"),
               st.contains("l2_hits") ? fmt::format(", L2 {}", get("l2_hits")) : std::string(),
               st.contains("l3_hits") ? fmt::format(", L3 {}", get("l3_hits")) : std::string());
  }
  size_t width = 0;
  for (const auto& [k, v] : st) width = std::max(width, k.size());
  fmt::print("\n");
  for (const auto& [k, v] : st) {
    const bool bytes = k.ends_with("_bytes") || k == "pool_size";
    fmt::print("  {:<{}}  {}{}\n", k, width, v, bytes && v >= 1024 ? fmt::format("  ({})", FormatSize(v)) : "");
  }
}

}  // namespace

void AddStatsCommand(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("stats", "Print a running server's statistics");
  auto socket = std::make_shared<std::string>(DefaultSocketPath());
  auto json = std::make_shared<bool>(false);
  auto timeout_s = std::make_shared<double>(5.0);
  cmd->add_option("--socket", *socket, "Control socket of the server")->capture_default_str();
  cmd->add_flag("--json", *json, "Print one JSON object");
  cmd->add_option("--timeout", *timeout_s, "Seconds to wait for the server")->capture_default_str();
  cmd->callback([=] {
    auto stats = Client::QueryStats(*socket, std::chrono::milliseconds(static_cast<int64_t>(*timeout_s * 1000)));
    if (!stats.ok()) {
      fmt::print(stderr, "shmkv stats: {}\n", stats.status().ToString());
      *exit_code = 1;
      return;
    }
    if (*json) {
      std::string out = "{";
      for (const auto& [k, v] : *stats) out += fmt::format("{}\"{}\": {}", out.size() > 1 ? ", " : "", k, v);
      fmt::print("{}}}\n", out);
    } else {
      PrintStats(*socket, *stats);
    }
    *exit_code = 0;
  });
}

}  // namespace shmkv::cli
