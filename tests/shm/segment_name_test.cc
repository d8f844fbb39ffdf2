#include <gtest/gtest.h>

#include "shmkv/segment.h"

namespace shmkv {
namespace {

std::string Norm(std::optional<std::string_view> in, SegmentNameRules rules = SegmentNameRules::Linux()) {
  auto r = NormalizeSegmentName(in, 4242, rules);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : "";
}

Status NormError(std::string_view in, SegmentNameRules rules = SegmentNameRules::Linux()) {
  auto r = NormalizeSegmentName(in, 4242, rules);
  EXPECT_FALSE(r.ok()) << "accepted '" << in << "' as " << (r.ok() ? *r : "");
  return r.status();
}

TEST(SegmentName, NoNameDerivesFromThePid) {
  EXPECT_EQ(Norm(std::nullopt), "lmcache_l1_pool_4242");
  EXPECT_EQ(Norm(""), "lmcache_l1_pool_4242");
}

TEST(SegmentName, BareAndSlashedNamesGetThePrefix) {
  EXPECT_EQ(Norm("foo"), "lmcache_l1_pool_foo");
  EXPECT_EQ(Norm("/foo"), "lmcache_l1_pool_foo");
}

TEST(SegmentName, PrefixedNamesAreNotPrefixedTwice) {
  EXPECT_EQ(Norm("lmcache_l1_pool_foo"), "lmcache_l1_pool_foo");
  EXPECT_EQ(Norm("/lmcache_l1_pool_foo"), "lmcache_l1_pool_foo");
}

TEST(SegmentName, NothingAfterThePrefixIsRejected) {
  for (const char* in : {"/", "lmcache_l1_pool_", "/lmcache_l1_pool_"}) {
    Status s = NormError(in);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("nothing is left after the prefix"), std::string::npos) << s.message();
  }
}

TEST(SegmentName, SlashesAndBackslashesAreRejected) {
  for (const char* in : {"a/b", "//foo", "/foo/", "../x/y"}) {
    EXPECT_NE(NormError(in).message().find("contains '/'"), std::string::npos) << in;
  }
  EXPECT_NE(NormError("a\\b").message().find("contains '\\'"), std::string::npos);
  EXPECT_NE(NormError(std::string_view("a\0b", 3)).message().find("NUL"), std::string::npos);
}

TEST(SegmentName, LinuxAllowsNameMaxBytes) {
  const std::string ok(255 - 16, 'x');  // 16-byte prefix + 239 = 255
  EXPECT_EQ(Norm(ok).size(), 255u);
  Status s = NormError(ok + "y");
  EXPECT_NE(s.message().find("longer than the 256 bytes"), std::string::npos) << s.message();
}

TEST(SegmentName, MacOSLimitIs31BytesWithTheSlash) {
  const auto mac = SegmentNameRules::MacOS();
  // "/lmcache_l1_pool_" is 17 bytes, leaving 14.
  EXPECT_EQ(Norm("abcdefghijklmn", mac), "lmcache_l1_pool_abcdefghijklmn");
  Status s = NormError("abcdefghijklmno", mac);
  EXPECT_NE(s.message().find("31 bytes"), std::string::npos) << s.message();
  // The pid-derived default fits on macOS too.
  EXPECT_TRUE(NormalizeSegmentName(std::nullopt, 99999999, mac).ok());
}

#if defined(__APPLE__)
TEST(SegmentName, ThisPlatformIsMacOS) {
  EXPECT_EQ(SegmentNameRules::ForThisPlatform().max_bytes_with_slash, 31u);
}
#else
TEST(SegmentName, ThisPlatformIsLinux) {
  EXPECT_EQ(SegmentNameRules::ForThisPlatform().max_bytes_with_slash, 256u);
}
#endif

}  // namespace
}  // namespace shmkv
