// Test helper: creates a segment, prints its name on stdout, and waits for a signal. SIGTERM and
// SIGINT end it cleanly (the segment is unlinked); SIGKILL leaves the segment stale.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "shmkv/segment.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: segment_holder NAME SIZE_BYTES\n");
    return 2;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  shmkv::SegmentCreateOptions o;
  o.name = std::string(argv[1]);
  o.size = std::strtoull(argv[2], nullptr, 10);
  auto seg = shmkv::SharedSegment::Create(o);
  if (!seg.ok()) {
    std::fprintf(stderr, "%s\n", seg.status().ToString().c_str());
    return 1;
  }
  std::printf("%s\n", seg->name().c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  return 0;
}
