// Subcommands of the `shmkv` tool. Each Add*Command registers its options and a callback that
// sets `*exit_code`.
#pragma once

#include <CLI/CLI.hpp>

namespace shmkv::cli {

void AddGcCommand(CLI::App& app, int* exit_code);
void AddStatsCommand(CLI::App& app, int* exit_code);
void AddTopCommand(CLI::App& app, int* exit_code);

}  // namespace shmkv::cli
