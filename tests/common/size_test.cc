#include "shmkv/size.h"

#include <gtest/gtest.h>

namespace shmkv {
namespace {

TEST(ParseSize, AcceptsBinaryUnitsAndPlainBytes) {
  EXPECT_EQ(*ParseSize("1048576"), 1048576u);
  EXPECT_EQ(*ParseSize("512MiB"), 512ull << 20);
  EXPECT_EQ(*ParseSize("4GiB"), 4ull << 30);
  EXPECT_EQ(*ParseSize("4gib"), 4ull << 30);
  EXPECT_EQ(*ParseSize("4G"), 4ull << 30);
  EXPECT_EQ(*ParseSize("4Gi"), 4ull << 30);
  EXPECT_EQ(*ParseSize("64k"), 64ull << 10);
  EXPECT_EQ(*ParseSize("1.5GiB"), 3ull << 29);
  EXPECT_EQ(*ParseSize("2T"), 2ull << 40);
  EXPECT_EQ(*ParseSize("7B"), 7u);
}

TEST(ParseSize, RefusesDecimalLookingUnitsInsteadOfGuessing) {
  for (const char* text : {"1GB", "4gb", "512MB", "64KB", "2TB", "1.5GB"}) {
    auto r = ParseSize(text);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_NE(r.status().message().find("ambiguous"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("iB"), std::string::npos) << r.status().message();
  }
  EXPECT_NE(ParseSize("1GB").status().message().find("write 1GiB"), std::string::npos);
}

TEST(ParseSize, RejectsJunkWithTheTextInTheMessage) {
  for (const char* bad : {"", "GiB", "-4GiB", "4XB", "4 GiB", "1.GiB", "0.3B", "99999999999999999999", "17179869184TiB",
                          "1.1234567891GiB"}) {
    auto r = ParseSize(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(std::string("'") + bad + "'"), std::string::npos) << r.status().message();
  }
}

TEST(FormatSize, ShowsHumanAndExactFigures) {
  EXPECT_EQ(FormatSize(512), "512 bytes");
  EXPECT_EQ(FormatSize(4ull << 30), "4.0 GiB (4294967296 bytes)");
}

}  // namespace
}  // namespace shmkv
