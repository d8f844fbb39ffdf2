// shmkv-server's command line and --config file, parsed into ServerOptions. Separate from main()
// so that tests and the config-reader fuzz target drive exactly what the binary runs.
//
// Thread-safety: the function is re-entrant.
#pragma once

#include <optional>
#include <string>

#include "server/server.h"

namespace shmkv {

struct ServerCommandLine {
  ServerOptions options;
  std::string log_level = "info";
};

// Parses argv (argv[0] is the program). On success returns the options. Otherwise prints what
// a user needs (the help text, the version, or the error naming the option) to stdout/stderr
// and sets *exit_code: 0 for --help/--version, 2 for every usage error (unknown option or config
// key, missing option or value, unreadable config file, a value that is present but wrong).
std::optional<ServerCommandLine> ParseServerCommandLine(int argc, const char* const* argv, int* exit_code);

}  // namespace shmkv
