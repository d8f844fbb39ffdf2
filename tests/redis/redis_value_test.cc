// The L3 tier's pure parts: seed URLs, cluster key slots, and the value format that guards every
// load (a value that does not match its key, length or checksum must never reach a slot).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "redis/cluster.h"
#include "redis/value.h"

namespace shmkv::redis {
namespace {

TEST(ParseUrl, SeedsUserAndPassword) {
  auto o = ParseUrl("redis://alice:s3cr:et@10.0.0.1:7000,10.0.0.2:7001");
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->user, "alice");
  EXPECT_EQ(o->password, "s3cr:et");  // everything after the first colon
  ASSERT_EQ(o->seeds.size(), 2u);
  EXPECT_EQ(o->seeds[0], (Endpoint{"10.0.0.1", 7000}));
  EXPECT_EQ(o->seeds[1], (Endpoint{"10.0.0.2", 7001}));

  auto bare = ParseUrl("redis://127.0.0.1:6379/");
  ASSERT_TRUE(bare.ok());
  EXPECT_TRUE(bare->user.empty());
  EXPECT_TRUE(bare->password.empty());
  auto password_only = ParseUrl("redis://:pw@h:1");
  ASSERT_TRUE(password_only.ok());
  EXPECT_EQ(password_only->user, "");
  EXPECT_EQ(password_only->password, "pw");
}

TEST(ParseUrl, BadUrlsNameTheProblem) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"http://h:1", "must start with redis://"}, {"redis://", "names no host:port"},
      {"redis://hostonly", "is not host:port"},   {"redis://h:0", "port '0'"},
      {"redis://h:65536", "port '65536'"},        {"redis://h:12x", "port '12x'"},
      {"redis://h:1,,h:2", "is not host:port"},
  };
  for (const auto& [url, part] : cases) {
    auto o = ParseUrl(url);
    ASSERT_FALSE(o.ok()) << url;
    EXPECT_EQ(o.status().code(), StatusCode::kInvalidArgument) << url;
    EXPECT_NE(o.status().message().find(part), std::string::npos) << url << ": " << o.status().message();
  }
}

TEST(KeySlot, MatchesRedisCluster) {
  // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
  EXPECT_EQ(KeySlot("123456789"), 0x31C3 % kSlots);
  EXPECT_EQ(KeySlot("foo"), 12182);
  EXPECT_EQ(KeySlot("bar"), 5061);
  EXPECT_EQ(KeySlot(""), 0);
  // Hash tags: only the first non-empty {...} counts.
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("user1000"));
  EXPECT_EQ(KeySlot("{user1000}.followers"), KeySlot("user1000"));
  EXPECT_EQ(KeySlot("foo{}{bar}"), KeySlot("foo{}{bar}"));
  EXPECT_NE(KeySlot("foo{}{bar}"), KeySlot("bar"));
  EXPECT_EQ(KeySlot("foo{{bar}}zap"), KeySlot("{bar"));
}

std::string StoreKey(std::string_view key) {
  std::string k(kNamespaceDigestBytes, '\0');
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<char>(0xa0 + i);
  return k + std::string(key);
}

TEST(Value, KeyNamesNamespaceAndKeyInHex) {
  EXPECT_EQ(RedisKey(StoreKey("\x01\xff")), "shmkv:a0a1a2a3a4a5a6a7a8a9aaabacadaeaf:01ff");
  EXPECT_EQ(RedisKeyPattern(StoreKey("").substr(0, 16)), "shmkv:a0a1a2a3a4a5a6a7a8a9aaabacadaeaf:*");
}

TEST(Value, RoundTripAndEveryCorruptionIsCaught) {
  const std::string key = StoreKey("chunk-7");
  std::vector<std::byte> payload(4096);
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::byte>(i * 31 + 7);
  const std::string header = EncodeValueHeader(key, payload);
  ASSERT_EQ(header.size(), ValueHeaderSize(key));
  auto h = std::as_bytes(std::span(header));
  EXPECT_TRUE(VerifyValue(key, h, payload).ok());

  // One flipped payload bit: the checksum.
  auto flipped = payload;
  flipped[1234] ^= std::byte{0x10};
  EXPECT_NE(VerifyValue(key, h, flipped).message().find("checksum"), std::string::npos);
  // Another key's valid value under this key's name.
  const std::string other_key = StoreKey("chunk-8");
  const std::string other = EncodeValueHeader(other_key, payload);
  EXPECT_NE(VerifyValue(key, std::as_bytes(std::span(other)), payload).message().find("another key"),
            std::string::npos);
  // Another namespace, same key.
  std::string other_ns = key;
  other_ns[0] = 'x';
  EXPECT_FALSE(VerifyValue(other_ns, h, payload).ok());
  // A truncated payload: its length no longer matches the header.
  EXPECT_NE(VerifyValue(key, h, std::span(payload).first(100)).message().find("payload length"), std::string::npos);
  // Every single header byte changed is refused.
  for (size_t i = 0; i < header.size(); ++i) {
    std::string bad = header;
    bad[i] = static_cast<char>(bad[i] ^ 0x5a);
    EXPECT_FALSE(VerifyValue(key, std::as_bytes(std::span(bad)), payload).ok()) << "header byte " << i;
  }
  // A header of the wrong size.
  EXPECT_FALSE(VerifyValue(key, h.first(h.size() - 1), payload).ok());
}

}  // namespace
}  // namespace shmkv::redis
