// shmkv-server: the node-local KV-cache server (see README and docs/protocol.md).
#include <cstdio>
#include <optional>

#include <fmt/format.h>

#include "common/log.h"
#include "server/command_line.h"
#include "server/ready_line.h"
#include "server/server.h"

int main(int argc, char** argv) {
  int exit_code = 0;
  auto command_line = shmkv::ParseServerCommandLine(argc, argv, &exit_code);
  if (!command_line) return exit_code;
  const shmkv::ServerOptions& o = command_line->options;
  auto server = shmkv::Server::Start(o);
  if (!server.ok()) {
    fmt::print(stderr, "shmkv-server: {}\n", server.status().ToString());
    return 1;
  }
  const uint64_t page = (*server)->page_size();
  std::optional<uint64_t> huge;  // unknown when the start-up check could not read the page sizes
  if (page != 0) huge = page > 4096 ? page : 0;
  fmt::print("{}\n", shmkv::FormatReadyLine({(*server)->segment_name(), (*server)->pool_size(), o.socket_path,
                                             (*server)->generation(), huge}));
  std::fflush(stdout);
  (*server)->Run();
  shmkv::Log().info("stopped; segment {} and socket {} removed", (*server)->segment_name(), o.socket_path);
  return 0;
}
