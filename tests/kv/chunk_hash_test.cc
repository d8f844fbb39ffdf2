// Chunk digests against the test vectors of docs/chunk-hashing.md (the Python suite checks the
// same literals), plus the properties callers rely on.
#include "shmkv/chunk_hash.h"

#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

namespace shmkv {
namespace {

Namespace Llama(std::string salt = "") {
  Namespace ns;
  ns.model = "llama-3-8b";
  ns.world_size = 1;
  ns.dtype = "bfloat16";
  ns.layout = "NHD";
  ns.salt = std::move(salt);
  return ns;
}

std::vector<std::string> Hex(const std::vector<ChunkDigest>& ds) {
  std::vector<std::string> out;
  for (const ChunkDigest& d : ds) out.push_back(DigestHex(d));
  return out;
}

std::vector<uint32_t> Iota(uint32_t n) {
  std::vector<uint32_t> v(n);
  std::iota(v.begin(), v.end(), 0u);
  return v;
}

TEST(ChunkHash, RootVectors) {
  EXPECT_EQ(DigestHex(ChainRoot(Llama())), "c391289f1a53131a60e788d0b0f9e0dc57c4e767c41b8dfed517166f976077e9");
  EXPECT_EQ(DigestHex(ChainRoot(Llama("tenant-a"))),
            "b11d0fe9db0d65528c8e618bcdef7a94fc206b1d47b99fba2c2c363074a97cd2");
  Namespace ds{
      .model = "deepseek-v3", .world_size = 8, .rank = 0, .dtype = "float8_e4m3fn", .layout = "MLA", .salt = ""};
  EXPECT_EQ(DigestHex(ChainRoot(ds)), "4e57abe205f786d0bfccbb339ad213e4b2d74d6e37e175994092ec2f456fffaf");
}

TEST(ChunkHash, ChainVectors) {
  ChunkDigest root = ChainRoot(Llama());
  auto full = ChunkDigests(root, Iota(10), 4);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  EXPECT_EQ(Hex(*full), (std::vector<std::string>{
                            "c8be60adbf909e8406a671b4c482f47270fadc2ba057c79a7b58e26aa38468ab",
                            "32d6f7b362930fc2d9af318e25d371ffb74d0383b89c3bf5fc26fb7e7914e991",
                        }));
  auto partial = ChunkDigests(root, Iota(10), 4, /*include_partial=*/true);
  ASSERT_TRUE(partial.ok());
  ASSERT_EQ(partial->size(), 3u);
  EXPECT_EQ(DigestHex((*partial)[2]), "c454177c80a1ec2fc9ed21e52d135398f07ef5626511a87fa449c34e0f79db84");

  auto big = ChunkDigests(root, Iota(512), 256);
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(Hex(*big), (std::vector<std::string>{
                           "8677991d52edf08ddf6f9281a872808092fa280c59504c4cf526cf4c0e25c133",
                           "2593a4bb0908ae8a7418ecda3529dad2724e452f37105ce30b1ff468ff5e15a0",
                       }));

  Namespace ds{
      .model = "deepseek-v3", .world_size = 8, .rank = 3, .dtype = "float8_e4m3fn", .layout = "MLA", .salt = ""};
  std::vector<uint32_t> extremes = {4294967295u, 0x01020304u, 7u, 0u};
  auto ext = ChunkDigests(ChainRoot(ds), extremes, 2);
  ASSERT_TRUE(ext.ok());
  EXPECT_EQ(Hex(*ext), (std::vector<std::string>{
                           "36b158c206d77a535d0e4eb9062a16b1d3ddd77f2246b89119843b2adb0d0628",
                           "8f81091d9167b235360aa5bf178354b9b9e6a942e3a5cd9b2d9441124bfacd6f",
                       }));
}

TEST(ChunkHash, RankDoesNotChangeTheRootButEveryOtherFieldDoes) {
  Namespace a = Llama();
  Namespace b = a;
  b.rank = 1;
  b.world_size = 1;
  EXPECT_EQ(ChainRoot(a), ChainRoot(b));
  for (auto mutate :
       std::vector<void (*)(Namespace&)>{[](Namespace& n) { n.model += "x"; }, [](Namespace& n) { n.world_size = 2; },
                                         [](Namespace& n) { n.dtype = "float16"; },
                                         [](Namespace& n) { n.layout = "HND"; }, [](Namespace& n) { n.salt = "t"; }}) {
    Namespace c = a;
    mutate(c);
    EXPECT_NE(ChainRoot(a), ChainRoot(c));
  }
  // Length prefixes keep field boundaries apart: "ab"+"c" is not "a"+"bc".
  Namespace d = a, e = a;
  d.dtype = "ab";
  d.layout = "c";
  e.dtype = "a";
  e.layout = "bc";
  EXPECT_NE(ChainRoot(d), ChainRoot(e));
}

TEST(ChunkHash, EqualPrefixesShareDigestsAndDivergenceChangesAllLaterOnes) {
  ChunkDigest root = ChainRoot(Llama());
  std::vector<uint32_t> a = Iota(1024);
  std::vector<uint32_t> b = a;
  b[300] = 99999;  // inside chunk 1
  auto da = ChunkDigests(root, a, 256).value();
  auto db = ChunkDigests(root, b, 256).value();
  ASSERT_EQ(da.size(), 4u);
  EXPECT_EQ(da[0], db[0]);
  for (size_t i = 1; i < 4; ++i) EXPECT_NE(da[i], db[i]) << i;
  // A prefix of the token list yields a prefix of the digests.
  auto prefix = ChunkDigests(root, std::span(a).first(600), 256).value();
  ASSERT_EQ(prefix.size(), 2u);
  EXPECT_EQ(prefix[1], da[1]);
}

TEST(ChunkHash, FullChunksOnlyByDefault) {
  ChunkDigest root = ChainRoot(Llama());
  EXPECT_TRUE(ChunkDigests(root, Iota(255), 256).value().empty());
  EXPECT_EQ(ChunkDigests(root, Iota(255), 256, true).value().size(), 1u);
  EXPECT_TRUE(ChunkDigests(root, {}, 256, true).value().empty());
}

TEST(ChunkHash, ZeroChunkTokensIsAnError) {
  auto r = ChunkDigests(ChainRoot(Llama()), Iota(10), 0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("chunk_tokens"), std::string::npos);
}

}  // namespace
}  // namespace shmkv
