#include "server/command_line.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace shmkv {
namespace {

std::optional<ServerCommandLine> Parse(std::vector<std::string> args, int* exit_code) {
  args.insert(args.begin(), "shmkv-server");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  return ParseServerCommandLine(static_cast<int>(argv.size()), argv.data(), exit_code);
}

TEST(ServerCommandLine, ReadsEveryOptionFromAConfigFile) {
  const std::string path = ::testing::TempDir() + "/shmkv-config-" + std::to_string(::getpid()) + ".toml";
  std::ofstream(path) << "pool-size = \"64MiB\"\nsocket-mode = \"660\"\nreserve-ttl = 2.5\nmax-buffered = \"32MiB\"\n"
                         "max-frame = 1048576\nno-prefault = true\n";
  int code = -1;
  auto parsed = Parse({"--config", path}, &code);
  std::remove(path.c_str());
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->options.pool_size, 64u << 20);
  EXPECT_EQ(parsed->options.socket_mode, 0660u);
  EXPECT_EQ(parsed->options.reserve_ttl.count(), 2500);
  EXPECT_EQ(parsed->options.max_buffered_bytes, 32u << 20);
  EXPECT_EQ(parsed->options.max_frame_bytes, 1u << 20);
  EXPECT_FALSE(parsed->options.prefault);
}

// Found by the server_config fuzz target: a pool of 0 bytes passed the command line and failed
// only later, after the server had touched the socket directory and stale segments.
TEST(ServerCommandLine, RefusesAPoolOfZeroBytes) {
  int code = -1;
  EXPECT_FALSE(Parse({"--pool-size", "0"}, &code).has_value());
  EXPECT_EQ(code, 1);
}

TEST(ServerCommandLine, ExitCodesFollowTheDocumentation) {
  int code = -1;
  EXPECT_FALSE(Parse({"--version"}, &code).has_value());
  EXPECT_EQ(code, 0);
  EXPECT_FALSE(Parse({"--pool-size", "1MiB", "--pool-sise", "2"}, &code).has_value());
  EXPECT_EQ(code, 2);  // a misspelt option is a usage error
  EXPECT_FALSE(Parse({"--pool-size", "1MiB", "--socket-mode", "777"}, &code).has_value());
  EXPECT_EQ(code, 1);  // a bad value names the option
  EXPECT_FALSE(Parse({"--pool-size", "1MiB", "--max-buffered", "1KiB"}, &code).has_value());
  EXPECT_EQ(code, 1);
}

TEST(ServerCommandLine, HugePagesAndShmDir) {
  int code = -1;
  auto defaults = Parse({"--pool-size", "1MiB"}, &code);
  ASSERT_TRUE(defaults.has_value());
  EXPECT_EQ(defaults->options.huge_pages, ServerOptions{}.huge_pages);  // the struct holds the default
  EXPECT_EQ(defaults->options.huge_pages, HugePages::kAuto);
  EXPECT_EQ(defaults->options.shm_dir, "");
  auto set = Parse({"--pool-size", "1MiB", "--huge-pages", "on", "--shm-dir", "/mnt/huge//"}, &code);
  ASSERT_TRUE(set.has_value());
  EXPECT_EQ(set->options.huge_pages, HugePages::kOn);
  EXPECT_EQ(set->options.shm_dir, "/mnt/huge");  // trailing slashes dropped
  EXPECT_EQ(Parse({"--pool-size", "1MiB", "--huge-pages", "off"}, &code)->options.huge_pages, HugePages::kOff);
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(Parse({"--pool-size", "1MiB", "--huge-pages", "yes"}, &code).has_value());
  EXPECT_EQ(code, 1);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("--huge-pages: 'yes' is not off, auto or on"),
            std::string::npos);
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(Parse({"--pool-size", "1MiB", "--shm-dir", "relative/dir"}, &code).has_value());
  EXPECT_EQ(code, 1);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("--shm-dir must be an absolute path"), std::string::npos);
}

}  // namespace
}  // namespace shmkv
