// `shmkv stats [--socket PATH] [--json]`: a running server's figures.
#include <fmt/format.h>

#include "cli/commands.h"
#include "server/server.h"
#include "shmkv/client.h"

namespace shmkv::cli {

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
      for (const auto& [k, v] : *stats) fmt::print("{:<18} {}\n", k, v);
    }
    *exit_code = 0;
  });
}

}  // namespace shmkv::cli
