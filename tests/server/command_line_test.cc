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
  EXPECT_EQ(code, 2);
}

TEST(ServerCommandLine, ExitCodesFollowTheDocumentation) {
  int code = -1;
  EXPECT_FALSE(Parse({"--version"}, &code).has_value());
  EXPECT_EQ(code, 0);
  EXPECT_FALSE(Parse({"--pool-size", "1MiB", "--pool-sise", "2"}, &code).has_value());
  EXPECT_EQ(code, 2);  // a misspelt option is a usage error
  EXPECT_FALSE(Parse({"--pool-size", "1MiB", "--socket-mode", "777"}, &code).has_value());
  EXPECT_EQ(code, 2);  // a bad value is a usage error too, and names the option
  EXPECT_FALSE(Parse({"--pool-size", "1MiB", "--max-buffered", "1KiB"}, &code).has_value());
  EXPECT_EQ(code, 2);
  EXPECT_FALSE(Parse({"--pool-size", "1MiB", "--redis", "redis://h:1", "--redis-write", "sometimes"}, &code));
  EXPECT_EQ(code, 2);
}

TEST(ServerCommandLine, AMisspeltOptionIsNamedNotReportedAsAMissingPoolSize) {
  testing::internal::CaptureStderr();
  testing::internal::CaptureStdout();
  int code = -1;
  EXPECT_FALSE(Parse({"--pool-sise", "1GiB"}, &code).has_value());
  const std::string out = testing::internal::GetCapturedStdout() + testing::internal::GetCapturedStderr();
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("--pool-sise"), std::string::npos) << out;
  EXPECT_EQ(out.find("--pool-size is required"), std::string::npos) << out;
  EXPECT_FALSE(Parse({}, &code).has_value());
  EXPECT_EQ(code, 2);
}

TEST(ServerCommandLine, AMisspeltKeyInTheConfigFileIsAnError) {
  const std::string path = ::testing::TempDir() + "/shmkv-config-typo-" + std::to_string(::getpid()) + ".toml";
  std::ofstream(path) << "pool-size = \"64MiB\"\nreserve-tll = 5\n";
  testing::internal::CaptureStderr();
  testing::internal::CaptureStdout();
  int code = -1;
  EXPECT_FALSE(Parse({"--config", path}, &code).has_value());
  const std::string out = testing::internal::GetCapturedStdout() + testing::internal::GetCapturedStderr();
  std::remove(path.c_str());
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("reserve-tll"), std::string::npos) << out;
}

TEST(ServerCommandLine, DecimalLookingSizesAreRefusedWithTheBinarySpelling) {
  testing::internal::CaptureStderr();
  int code = -1;
  EXPECT_FALSE(Parse({"--pool-size", "1GB"}, &code).has_value());
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(code, 2);
  EXPECT_NE(err.find("1GiB"), std::string::npos) << err;
}

TEST(ServerCommandLine, RedisOptions) {
  int code = -1;
  auto parsed =
      Parse({"--pool-size", "64MiB", "--redis", "redis://u@127.0.0.1:7000,127.0.0.1:7001", "--redis-write", "through",
             "--redis-ttl", "3600", "--redis-timeout", "250", "--redis-max-inflight-bytes", "64MiB"},
            &code);
  ASSERT_TRUE(parsed.has_value());
  ASSERT_TRUE(parsed->options.redis.has_value());
  const RedisTierOptions& r = *parsed->options.redis;
  EXPECT_EQ(r.cluster.seeds.size(), 2u);
  EXPECT_EQ(r.cluster.user, "u");
  EXPECT_EQ(r.write, RedisWriteMode::kThrough);
  EXPECT_EQ(r.ttl.count(), 3600);
  EXPECT_EQ(r.cluster.timeout.count(), 250);
  EXPECT_EQ(r.max_inflight_bytes, 64u << 20);
  // The password from a file: its first line, without the line end.
  const std::string path = ::testing::TempDir() + "/shmkv-redis-pw-" + std::to_string(::getpid());
  std::ofstream(path) << "s3cret\n";
  parsed = Parse({"--pool-size", "64MiB", "--redis", "redis://h:1", "--redis-password-file", path}, &code);
  std::remove(path.c_str());
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->options.redis->cluster.password, "s3cret");
  // Without --redis, a --redis-* option is a mistake.
  testing::internal::CaptureStderr();
  EXPECT_FALSE(Parse({"--pool-size", "64MiB", "--redis-ttl", "5"}, &code).has_value());
  EXPECT_NE(testing::internal::GetCapturedStderr().find("need --redis"), std::string::npos);
  EXPECT_EQ(code, 2);
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
  EXPECT_EQ(code, 2);  // a usage error
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("--huge-pages: 'yes' is not off, auto or on"),
            std::string::npos);
  ::testing::internal::CaptureStderr();
  EXPECT_FALSE(Parse({"--pool-size", "1MiB", "--shm-dir", "relative/dir"}, &code).has_value());
  EXPECT_EQ(code, 2);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("--shm-dir must be an absolute path"), std::string::npos);
}

}  // namespace
}  // namespace shmkv
