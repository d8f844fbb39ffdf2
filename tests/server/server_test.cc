// The Server in process (InProcessServer) with real clients, and the ready line's format.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "server/in_process_server.h"
#include "server/ready_line.h"
#include "shmkv/client.h"

namespace shmkv {
namespace {

using testing::InProcessServer;

ClientOptions ClientFor(const InProcessServer& server, std::string model = "m") {
  ClientOptions o;
  o.socket_path = server.socket();
  o.instance_id = "server-test";
  o.ns.model = std::move(model);
  o.pin_with_cuda = false;
  return o;
}

std::vector<std::byte> Bytes(std::string_view text) {
  std::vector<std::byte> out(text.size());
  std::memcpy(out.data(), text.data(), text.size());
  return out;
}

TEST(InProcessServer, ServesClientsAndRemovesItsSocketAndSegmentWhenStopped) {
  InProcessServer server(InProcessServer::DefaultOptions("serves"));
  ASSERT_TRUE(server.Start().ok());
  const std::string segment = server.server().segment_name();
  EXPECT_TRUE(testing::SegmentExists(segment));
  {
    auto writer = Client::Connect(ClientFor(server));
    ASSERT_TRUE(writer.ok()) << writer.status().ToString();
    ASSERT_TRUE(writer->Put("k", Bytes("hello")).ok());
    EXPECT_EQ(writer->info().generation, server.server().generation());
    EXPECT_EQ(writer->info().shm_name, segment);
    // Another namespace does not see it; the same one does, from another thread.
    auto other = Client::Connect(ClientFor(server, "other-model"));
    ASSERT_TRUE(other.ok());
    const std::string_view keys[] = {"k"};
    EXPECT_EQ(*other->Lookup(keys), 0u);
    std::thread reader([&] {
      auto same = Client::Connect(ClientFor(server));
      ASSERT_TRUE(same.ok());
      auto got = same->Get("k");
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      EXPECT_EQ(*got, Bytes("hello"));
    });
    reader.join();
    auto stats = writer->Stats();
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->at("objects"), 1u);
    EXPECT_EQ(stats->at("sessions"), 2u);
    auto removed = writer->Remove(keys);
    ASSERT_TRUE(removed.ok());
    EXPECT_EQ(*removed, std::vector{RemoveOutcome::kRemoved});
  }
  server.Stop();
  EXPECT_FALSE(std::filesystem::exists(server.socket()));
  EXPECT_FALSE(testing::SegmentExists(segment));
}

TEST(InProcessServer, AStopWithClientsConnectedEndsTheirCallsWithDisconnected) {
  InProcessServer server(InProcessServer::DefaultOptions("stop"));
  ASSERT_TRUE(server.Start().ok());
  auto client = Client::Connect(ClientFor(server));
  ASSERT_TRUE(client.ok());
  const std::string_view keys[] = {"a"};
  const uint64_t sizes[] = {4096};
  auto slots = client->PrepareStore(keys, sizes);
  ASSERT_TRUE(slots.ok());
  server.Stop();
  const Status s = client->CommitStore(keys);
  EXPECT_EQ(s.code(), StatusCode::kDisconnected) << s.ToString();
}

TEST(InProcessServer, ABadOptionIsAnErrorNamingIt) {
  ServerOptions o = InProcessServer::DefaultOptions("bad");
  o.socket_mode = 0644;
  InProcessServer server(o);
  const Status s = server.Start();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("socket mode 644"), std::string::npos) << s.ToString();
}

TEST(ReadyLine, RoundTripsAndNamesWhatIsWrong) {
  const ReadyLine ready{"lmcache_l1_pool_x", 1u << 30, "/tmp/a dir/shmkv.sock", 12345, std::nullopt};
  const std::string line = FormatReadyLine(ready);
  EXPECT_TRUE(line.starts_with(kReadyPrefix)) << line;
  auto parsed = ParseReadyLine(line + "\n");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->segment, ready.segment);
  EXPECT_EQ(parsed->pool_size, ready.pool_size);
  EXPECT_EQ(parsed->socket, ready.socket);  // spaces in a path survive
  EXPECT_EQ(parsed->generation, ready.generation);

  auto other = ParseReadyLine("shmkv-server: --pool-size: not a size");
  EXPECT_EQ(other.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(other.status().message().find("not a ready line"), std::string::npos);
  auto no_pool = ParseReadyLine("shmkv-server ready: segment=s socket=/x generation=1");
  EXPECT_NE(no_pool.status().message().find("pool_size"), std::string::npos) << no_pool.status().ToString();
  auto bad_number = ParseReadyLine("shmkv-server ready: segment=s pool_size=12x socket=/x generation=1");
  EXPECT_NE(bad_number.status().message().find("'12x' is not a number"), std::string::npos)
      << bad_number.status().ToString();
}

TEST(ReadyLine, HugePagesFieldAndLinesOfOlderServers) {
  ReadyLine ready{"lmcache_l1_pool_h", 64u << 20, "/tmp/s p/shmkv.sock", 9, uint64_t{2} << 20};
  std::string line = FormatReadyLine(ready);
  EXPECT_TRUE(line.ends_with(" generation=9 huge_pages=2MiB")) << line;
  auto parsed = ParseReadyLine(line);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->huge_page_size, std::optional<uint64_t>(2u << 20));
  EXPECT_EQ(parsed->socket, ready.socket);
  EXPECT_EQ(parsed->generation, 9u);

  ready.huge_page_size = 0;  // 4 KiB pages
  line = FormatReadyLine(ready);
  EXPECT_TRUE(line.ends_with(" huge_pages=no")) << line;
  EXPECT_EQ(ParseReadyLine(line)->huge_page_size, std::optional<uint64_t>(0));
  ready.huge_page_size = uint64_t{1} << 30;
  EXPECT_EQ(ParseReadyLine(FormatReadyLine(ready))->huge_page_size, std::optional<uint64_t>(1u << 30));
  ready.huge_page_size.reset();
  line = FormatReadyLine(ready);
  EXPECT_TRUE(line.ends_with(" huge_pages=unknown")) << line;
  EXPECT_FALSE(ParseReadyLine(line)->huge_page_size.has_value());

  // A server from before the field ended the line at generation=.
  auto old = ParseReadyLine("shmkv-server ready: segment=s pool_size=4096 socket=/x y generation=77\n");
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  EXPECT_EQ(old->generation, 77u);
  EXPECT_EQ(old->socket, "/x y");
  EXPECT_FALSE(old->huge_page_size.has_value());
  // Fields a later version may add are skipped.
  auto newer =
      ParseReadyLine("shmkv-server ready: segment=s pool_size=1 socket=/x generation=3 later=1 huge_pages=2MiB");
  ASSERT_TRUE(newer.ok()) << newer.status().ToString();
  EXPECT_EQ(newer->huge_page_size, std::optional<uint64_t>(2u << 20));
  auto bad = ParseReadyLine("shmkv-server ready: segment=s pool_size=1 socket=/x generation=3 huge_pages=big");
  EXPECT_NE(bad.status().message().find("huge_pages='big'"), std::string::npos) << bad.status().ToString();
  auto bad_gen = ParseReadyLine("shmkv-server ready: segment=s pool_size=1 socket=/x generation=3x huge_pages=no");
  EXPECT_NE(bad_gen.status().message().find("generation='3x'"), std::string::npos) << bad_gen.status().ToString();
}

}  // namespace
}  // namespace shmkv
