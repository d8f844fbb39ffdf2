// shmkv-server's --config reader (CLI11's TOML/INI parser and shmkv's own checks of the values):
// the input is the file's text, read through a memfd exactly as the binary reads a file. Any
// input must end in options or in a clean refusal (exit code 1 or 2), never in a crash, a hang
// or a sanitizer report; accepted options must satisfy what the server relies on.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "server/command_line.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "server_config_fuzzer: %s\n", what);
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("shmkv-config", MFD_CLOEXEC);
  Check(fd >= 0, "memfd_create");
  Check(ftruncate(fd, 0) == 0 && pwrite(fd, data, size, 0) == static_cast<ssize_t>(size), "writing the config");
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  const char* argv[] = {"shmkv-server", "--config", path.c_str()};
  int exit_code = -1;
  auto parsed = shmkv::ParseServerCommandLine(3, argv, &exit_code);
  if (!parsed) {
    Check(exit_code == 0 || exit_code == 1 || exit_code == 2, "a refusal without a documented exit code");
    return 0;
  }
  const shmkv::ServerOptions& o = parsed->options;
  Check(o.pool_size > 0, "a pool of 0 bytes was accepted");
  Check(o.socket_mode == 0600 || o.socket_mode == 0660, "a socket mode other than 600/660 was accepted");
  Check(o.reserve_ttl.count() > 0 && o.pin_ttl.count() > 0, "a TTL that is not positive was accepted");
  Check(o.max_buffered_bytes >= o.max_frame_bytes, "a buffer budget below one frame was accepted");
  Check(!o.disk || !o.disk->dir.empty(), "disk options without a directory were accepted");
  return 0;
}
