// The `shmkv` command-line tool.
#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "common/log.h"
#include "shmkv/version.h"

int main(int argc, char** argv) {
  CLI::App app{"shmkv: node-local KV-cache server tools"};
  app.set_version_flag("--version", std::string("shmkv ") + shmkv::kVersionString);
  app.require_subcommand(1);
  std::string log_level = "warn";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();
  int exit_code = 0;
  shmkv::cli::AddGcCommand(app, &exit_code);
  shmkv::cli::AddStatsCommand(app, &exit_code);
  shmkv::cli::AddTopCommand(app, &exit_code);
  app.parse_complete_callback([&] {
    if (auto s = shmkv::SetLogLevel(log_level); !s.ok()) throw CLI::ValidationError("--log-level", s.message());
  });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error exits 2, as the documentation says.
    return app.exit(e) == 0 ? 0 : 2;
  }
  return exit_code;
}
