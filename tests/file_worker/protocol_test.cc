// Parsing, bounds and ordering rules of the file worker protocol: pure functions, no I/O.
#include "file_worker/protocol.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "file_worker/session.h"

namespace shmkv::file_worker {
namespace {

TEST(ParseUnsigned, AcceptsDecimalUpToMax) {
  EXPECT_EQ(*ParseUnsigned("0", false, "n"), 0u);
  EXPECT_EQ(*ParseUnsigned("4096", false, "n"), 4096u);
  EXPECT_EQ(*ParseUnsigned("007", false, "n"), 7u);
  EXPECT_EQ(*ParseUnsigned("18446744073709551615", false, "n"), UINT64_MAX);
  // LMCache sends pointers as decimal ints (tensor.data_ptr()).
  EXPECT_EQ(*ParseUnsigned("139872403062784", true, "data_ptr"), 139872403062784u);
}

TEST(ParseUnsigned, AcceptsHexOnlyWhereAllowed) {
  EXPECT_EQ(*ParseUnsigned("0x7f2a00001000", true, "data_ptr"), 0x7f2a00001000u);
  EXPECT_EQ(*ParseUnsigned("0XFFFFFFFFFFFFFFFF", true, "data_ptr"), UINT64_MAX);
  EXPECT_EQ(*ParseUnsigned("0xAbC", true, "data_ptr"), 0xabcu);
  auto r = ParseUnsigned("0x10", false, "len");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("hex is accepted for addresses only"), std::string::npos);
}

TEST(ParseUnsigned, RefusesSignsJunkOverflowAndOverlongTokens) {
  for (const char* bad :
       {"", "-1", "+1", "-0", " 1", "1 ", "1x", "x1", "0x", "0x-1", "0xg", "1.5", "1e3", "18446744073709551616",
        "99999999999999999999", "0x10000000000000000", "0000000000000000000000001", "0x00000000000000000000001"}) {
    auto r = ParseUnsigned(bad, true, "len");
    EXPECT_FALSE(r.ok()) << "accepted '" << bad << "'";
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(r.status().message().find("bad len"), std::string::npos) << r.status().message();
    }
  }
}

TEST(ParseCommand, ParsesEveryVerb) {
  auto a = ParseCommand("ATTACH lmcache_l1_pool_x 1048576 139872403062784");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->verb, Verb::kAttach);
  EXPECT_EQ(a->text, "lmcache_l1_pool_x");
  EXPECT_EQ(a->size, 1048576u);
  EXPECT_EQ(a->base_addr, 139872403062784u);

  auto w = ParseCommand("WRITE dir/f.data 0x1000 8192");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->verb, Verb::kWrite);
  EXPECT_EQ(w->text, "dir/f.data");
  EXPECT_EQ(w->data_ptr, 0x1000u);
  EXPECT_EQ(w->len, 8192u);

  auto r = ParseCommand("READ f 4096 10");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->verb, Verb::kRead);

  EXPECT_EQ(ParseCommand("EXISTS f")->verb, Verb::kExists);
  EXPECT_EQ(ParseCommand("DELETE f")->verb, Verb::kDelete);
  EXPECT_EQ(ParseCommand("STAT f")->verb, Verb::kStat);
  EXPECT_EQ(ParseCommand("LIST")->verb, Verb::kList);
  EXPECT_EQ(ParseCommand("LIST")->text, "");
  EXPECT_EQ(ParseCommand("LIST sub")->text, "sub");
  EXPECT_EQ(ParseCommand("QUIT")->verb, Verb::kQuit);
  EXPECT_EQ(ParseCommand("AUTH s3cret")->text, "s3cret");
}

TEST(ParseCommand, ToleratesExtraSpacesAndCrlf) {
  auto w = ParseCommand("  WRITE   f  4096   10  \r");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->text, "f");
  EXPECT_EQ(w->len, 10u);
}

TEST(ParseCommand, RefusesUnknownEmptyAndMiscountedCommands) {
  auto u = ParseCommand("FROB x");
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(u.status().message(), "unknown command: 'FROB'");
  EXPECT_FALSE(ParseCommand("write f 1 2").ok());  // verbs are case-sensitive, as in LMCache
  EXPECT_FALSE(ParseCommand("").ok());
  EXPECT_FALSE(ParseCommand("   ").ok());
  EXPECT_FALSE(ParseCommand("QUIT now").ok());
  EXPECT_FALSE(ParseCommand("LIST a b").ok());
  EXPECT_FALSE(ParseCommand("ATTACH seg 4096").ok());
  // A path with a space splits into one token too many.
  auto sp = ParseCommand("WRITE my file 4096 10");
  ASSERT_FALSE(sp.ok());
  EXPECT_NE(sp.status().message().find("WRITE takes 3 arguments, got 4"), std::string::npos) << sp.status().message();
  EXPECT_FALSE(ParseCommand("ATTACH seg 0 4096").ok());  // size 0
  EXPECT_FALSE(ParseCommand("ATTACH seg -5 4096").ok());
  EXPECT_FALSE(ParseCommand("ATTACH seg 0x1000 4096").ok());  // sizes are decimal
}

TEST(ParseCommand, RefusesControlBytes) {
  for (std::string line :
       {std::string("WRITE a\tb 1 2"), std::string("EXISTS a\x01"), std::string("EXISTS a\x7f"),
        std::string("EXISTS a\rb"), std::string("EXISTS a", 8) + '\0' + "b", std::string("EXISTS \x1b[31m")}) {
    auto r = ParseCommand(line);
    ASSERT_FALSE(r.ok()) << line;
    EXPECT_NE(r.status().message().find("control byte"), std::string::npos) << r.status().message();
  }
}

TEST(ParseCommand, RefusesOverlongLines) {
  std::string line = "EXISTS " + std::string(kMaxLineBytes, 'a');
  auto r = ParseCommand(line);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("line too long"), std::string::npos);
}

TEST(CheckRegion, AcceptsEveryInBoundsRange) {
  const uint64_t base = 0x7f0000000000;
  auto whole = CheckRegion(base, 4096, base, 4096);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->offset, 0u);
  EXPECT_EQ(whole->len, 4096u);
  auto tail = CheckRegion(base, 4096, base + 4095, 1);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(tail->offset, 4095u);
  EXPECT_TRUE(CheckRegion(base, 4096, base + 4096, 0).ok());  // empty range at the very end
}

TEST(CheckRegion, RefusesEveryOutOfBoundsRangeWithoutWrapping) {
  const uint64_t base = 0x7f0000000000;
  const uint64_t size = 1 << 20;
  struct Case {
    uint64_t ptr, len;
    const char* why;
  };
  for (const Case& c :
       {Case{base - 1, 1, "below base_addr"}, Case{0, 1, "below base_addr"},
        Case{base, size + 1, "exceeds the segment size"}, Case{base, UINT64_MAX, "exceeds the segment size"},
        Case{base + size - 1, 2, "offset+length out of bounds"},
        Case{base + size + 1, 0, "offset+length out of bounds"},
        // offset + len would wrap to a small number in a naive check.
        Case{UINT64_MAX, 2, "offset+length out of bounds"},
        Case{base + 4096, UINT64_MAX - 4095, "exceeds the segment size"}}) {
    auto r = CheckRegion(base, size, c.ptr, c.len);
    ASSERT_FALSE(r.ok()) << c.ptr << " " << c.len;
    EXPECT_NE(r.status().message().find(c.why), std::string::npos) << r.status().message();
  }
  // A base near the top of the address space: only offsets count, so nothing wraps.
  auto top = CheckRegion(UINT64_MAX - 10, 100, UINT64_MAX, 90);
  ASSERT_TRUE(top.ok());
  EXPECT_EQ(top->offset, 10u);
  EXPECT_FALSE(CheckRegion(UINT64_MAX - 10, 100, UINT64_MAX, 91).ok());
}

TEST(CheckSegmentName, TakesTheNameAsGivenWithOneOptionalSlash) {
  EXPECT_EQ(*CheckSegmentName("lmcache_shm", ""), "lmcache_shm");
  EXPECT_EQ(*CheckSegmentName("/lmcache_shm", ""), "lmcache_shm");
  EXPECT_EQ(*CheckSegmentName("lmcache_l1_pool_x", ""), "lmcache_l1_pool_x");  // never prefixed or stripped
  EXPECT_EQ(*CheckSegmentName("/lmcache_l1_pool_x", "lmcache_l1_pool_"), "lmcache_l1_pool_x");
  EXPECT_EQ(*CheckSegmentName("lmcache_l1_pool_", "lmcache_l1_pool_"), "lmcache_l1_pool_");
  EXPECT_EQ(*CheckSegmentName(std::string(255, 'a'), ""), std::string(255, 'a'));
  EXPECT_EQ(*CheckSegmentName("..x", ""), "..x");
}

TEST(CheckSegmentName, RefusesWhatCouldLeaveDevShmOrIsNotAName) {
  struct Case {
    std::string name;
    std::string why;
  };
  for (const Case& c : std::vector<Case>{{"", "is empty"},
                                         {"/", "is empty"},
                                         {".", "is '.' or '..'"},
                                         {"..", "is '.' or '..'"},
                                         {"/..", "is '.' or '..'"},
                                         {"a/b", "has a '/'"},
                                         {"//a", "has a '/'"},
                                         {"../x", "has a '/'"},
                                         {"a b", "space or control byte"},
                                         {std::string("a\0b", 3), "space or control byte"},
                                         {"a\x7f", "space or control byte"},
                                         {std::string(256, 'a'), "longer than 255 bytes"}}) {
    auto r = CheckSegmentName(c.name, "");
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.why), std::string::npos) << r.status().message();
  }
  auto r = CheckSegmentName("/lmcache_shm", "lmcache_l1_pool_");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "segment name 'lmcache_shm' does not start with --attach-prefix 'lmcache_l1_pool_'");
}

TEST(CheckDirectAlignment, NeedsAlignedOffsetAndLength) {
  EXPECT_TRUE(CheckDirectAlignment({0, 0}).ok());
  EXPECT_TRUE(CheckDirectAlignment({8192, 32u << 20}).ok());
  auto off = CheckDirectAlignment({100, 4096});
  ASSERT_FALSE(off.ok());
  EXPECT_NE(off.message().find("offset 100 (remainder 100)"), std::string::npos) << off.message();
  auto len = CheckDirectAlignment({4096, 4097});
  ASSERT_FALSE(len.ok());
  EXPECT_NE(len.message().find("len 4097 (remainder 1)"), std::string::npos) << len.message();
}

TEST(Replies, AreOneLineAndPrintable) {
  EXPECT_EQ(OkReply(), "OK\n");
  EXPECT_EQ(OkReply(42), "OK 42\n");
  EXPECT_EQ(ErrorReply("bad\nthing\r\x01"), "ERROR bad?thing??\n");
  EXPECT_EQ(ErrorReply(""), "ERROR unknown error\n");
  const std::string big = ErrorReply(std::string(100000, 'x'));
  EXPECT_LT(big.size(), 2000u);
  EXPECT_EQ(big.find('\n'), big.size() - 1);
}

Footprint PathFp(std::string path, bool writes, bool tree = false) {
  Footprint f;
  f.path = std::move(path);
  f.writes_path = writes;
  f.tree = tree;
  return f;
}

Footprint RegionFp(std::string path, uint64_t off, uint64_t len, bool writes_pool, std::string seg = "s") {
  Footprint f = PathFp(std::move(path), !writes_pool);  // WRITE changes the file, READ the pool
  f.has_region = true;
  f.segment = std::move(seg);
  f.region = {off, len};
  f.writes_pool = writes_pool;
  return f;
}

TEST(Conflicts, OrdersOnlyWhatWouldRace) {
  // The same file: a change conflicts with anything; two reads do not.
  EXPECT_TRUE(Conflicts(PathFp("a", true), PathFp("a", false)));
  EXPECT_TRUE(Conflicts(PathFp("a", false), PathFp("a", true)));
  EXPECT_FALSE(Conflicts(PathFp("a", false), PathFp("a", false)));
  EXPECT_FALSE(Conflicts(PathFp("a", true), PathFp("b", true)));
  EXPECT_FALSE(Conflicts(PathFp("a", true), PathFp("ab", true)));
  // A directory and something beneath it; LIST of the root covers everything.
  EXPECT_TRUE(Conflicts(PathFp("d", false, true), PathFp("d/x", true)));
  EXPECT_TRUE(Conflicts(PathFp("", false, true), PathFp("q/r", true)));
  EXPECT_FALSE(Conflicts(PathFp("d", false, true), PathFp("e/x", true)));
  // Pool bytes: READ writes the pool, WRITE reads it.
  EXPECT_TRUE(Conflicts(RegionFp("x", 0, 4096, true), RegionFp("y", 4095, 10, false)));
  EXPECT_FALSE(Conflicts(RegionFp("x", 0, 4096, true), RegionFp("y", 4096, 10, false)));
  EXPECT_FALSE(Conflicts(RegionFp("x", 0, 4096, false), RegionFp("y", 0, 4096, false)));
  EXPECT_FALSE(Conflicts(RegionFp("x", 0, 4096, true), RegionFp("y", 0, 4096, true, "other")));
  EXPECT_FALSE(Conflicts(RegionFp("x", 0, 0, true), RegionFp("y", 0, 4096, true)));
}

}  // namespace
}  // namespace shmkv::file_worker
