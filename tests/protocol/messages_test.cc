// The control protocol's messages (src/protocol/messages.h) against docs/protocol.md: every
// request and reply round-trips through the encoders and decoders that the server and the C++
// client use, every malformed input gets the documented error, and the bytes of a version-1
// request and of the replies are pinned against what older clients and servers put on the wire.
#include "protocol/messages.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include <fmt/format.h>

namespace shmkv::protocol {
namespace {

constexpr auto npos = std::string_view::npos;

// Whether `s` failed with `code` and a message containing `part` (the field, index or limit).
::testing::AssertionResult FailsWith(const Status& s, StatusCode code, std::string_view part) {
  if (s.ok()) {
    return ::testing::AssertionFailure() << "succeeded; wanted " << StatusCodeName(code) << " naming '" << part << "'";
  }
  if (s.code() != code || s.message().find(part) == npos) {
    return ::testing::AssertionFailure() << "got " << s.ToString() << "; wanted " << StatusCodeName(code) << " naming '"
                                         << part << "'";
  }
  return ::testing::AssertionSuccess();
}

std::string Hex(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) out += fmt::format("{:02x}", c);
  return out;
}

std::string Unhex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

// Packs whatever `body` packs into one msgpack buffer (a frame body, no length header).
std::string Msgpack(const std::function<void(wire::Packer&)>& body) {
  msgpack::sbuffer buf;
  wire::Packer pk(buf);
  body(pk);
  return {buf.data(), buf.size()};
}

// A request map {"id", "op", ...`n_extra` fields packed by `extra`}, as any client may send it.
std::string RequestBody(uint64_t id, std::string_view op, uint32_t n_extra,
                        const std::function<void(wire::Packer&)>& extra) {
  return Msgpack([&](wire::Packer& pk) {
    pk.pack_map(2 + n_extra);
    wire::PackStr(pk, "id");
    pk.pack_uint64(id);
    wire::PackStr(pk, "op");
    wire::PackStr(pk, op);
    if (extra) extra(pk);
  });
}

// One message decoded as the server reads a request and the client a reply: one msgpack value,
// a map with string keys. Its views point into `bytes` (a copy of the body) and `zone`.
struct Decoded {
  std::string bytes;
  msgpack::zone zone;
  msgpack::object obj;
  wire::MapReader map = wire::MapReader::Empty();
};

Status DecodeBody(std::string_view body, std::string_view what, Decoded& d,
                  uint32_t max_map_fields = wire::kMaxMapFields) {
  d.bytes.assign(body);
  SHMKV_RETURN_IF_ERROR(UnpackFrame(d.zone, d.bytes, what, &d.obj, max_map_fields));
  auto m = wire::MapReader::From(d.obj);
  if (!m.ok()) return m.status();
  d.map = *m;
  return Status::Ok();
}

// A whole frame: its 4-byte little-endian header must count the body exactly.
Status DecodeFrame(std::string_view frame, std::string_view what, Decoded& d,
                   uint32_t max_map_fields = wire::kMaxMapFields) {
  if (frame.size() < wire::kHeaderBytes) return Status::Protocol("frame shorter than its header");
  const uint32_t length = wire::ReadLength(reinterpret_cast<const uint8_t*>(frame.data()));
  if (length != frame.size() - wire::kHeaderBytes) {
    return Status::Protocol(fmt::format("header counts {} bytes, the body has {}", length, frame.size() - 4));
  }
  return DecodeBody(frame.substr(wire::kHeaderBytes), what, d, max_map_fields);
}

// Encodes `m` as request `id`, decodes the frame and its envelope as the server does.
template <typename Request>
void EncodeAndDecodeRequest(wire::FrameBuffer& frame, uint64_t id, const Request& m, bool chained, Decoded& d) {
  const std::string_view bytes = EncodeRequest(frame, id, m, chained);
  ASSERT_TRUE(DecodeFrame(bytes, "request", d).ok());
  RequestHead head;
  ASSERT_TRUE(DecodeRequestHead(d.map, &head).ok());
  EXPECT_EQ(head.id, id);
  EXPECT_EQ(head.op_name, OpName(Request::kOp));
  EXPECT_EQ(head.op, Request::kOp);
  auto got_chained = DecodeChained(d.map);
  ASSERT_TRUE(got_chained.ok());
  EXPECT_EQ(*got_chained, chained);
}

// Encodes `m` as the reply to `id`, decodes the frame and its envelope as the client does.
template <typename Reply>
void EncodeAndDecodeReply(wire::FrameBuffer& frame, uint64_t id, const Reply& m, Decoded& d) {
  const std::string_view bytes = EncodeReply(frame, id, m);
  ASSERT_TRUE(DecodeFrame(bytes, "reply", d).ok());
  ReplyHead head;
  const Status s = DecodeReplyHead(d.map, id, &head);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(head.answered);
  EXPECT_FALSE(head.not_executed);
  EXPECT_TRUE(head.expired.empty());
}

// Keys as clients send them: 1..64 opaque bytes, NULs and high bytes included.
std::vector<std::string> SampleKeys() {
  return {std::string(1, 'a'), std::string("\0\xff\x80 key", 7), std::string(32, '\x5a'), std::string(64, 'k')};
}

std::vector<std::string_view> Views(const std::vector<std::string>& keys) {
  return {keys.begin(), keys.end()};
}

void ExpectKeys(std::span<const std::string_view> got, const std::vector<std::string>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "key #" << i;
}

// ---- operations ---------------------------------------------------------------------------------

TEST(Ops, EveryOperationNameParsesBackAndNothingElseDoes) {
  for (size_t i = 0; i < kOpCount; ++i) {
    const Op op = static_cast<Op>(i);
    EXPECT_EQ(ParseOp(OpName(op)), op) << OpName(op);
  }
  EXPECT_EQ(OpName(Op::kPrepareRetrieve), "prepare_retrieve");
  for (std::string_view bad : {"", "Lookup", "lookup ", "fly", "prepare_retrievE", "commit"}) {
    EXPECT_FALSE(ParseOp(bad).has_value()) << bad;
  }
  EXPECT_FALSE(NeedsRegistration(Op::kRegister));
  EXPECT_FALSE(NeedsRegistration(Op::kStats));
  EXPECT_FALSE(NeedsRegistration(Op::kHealth));
  for (Op op : {Op::kClear, Op::kPrepareStore, Op::kCommitStore, Op::kAbortStore, Op::kLookup, Op::kPrepareRetrieve,
                Op::kCommitRetrieve, Op::kRemove}) {
    EXPECT_TRUE(NeedsRegistration(op)) << OpName(op);
  }
}

// ---- requests -----------------------------------------------------------------------------------

TEST(RequestRoundTrip, RegisterWithEveryField) {
  wire::FrameBuffer frame;
  Decoded d;
  RegisterRequest in;
  in.instance_id = "worker-3";
  in.client_version = "1.2.3";
  in.protocol = 2;
  in.ns = {"llama-70b", "bfloat16", "NHD", std::string_view("s\0lt", 4), 8, 7};
  EncodeAndDecodeRequest(frame, 1, in, false, d);
  RegisterRequest out;
  ASSERT_TRUE(Unpack(d.map, out).ok());
  EXPECT_EQ(out.instance_id, "worker-3");
  EXPECT_EQ(out.client_version, "1.2.3");
  EXPECT_EQ(out.protocol, 2u);
  EXPECT_EQ(out.ns.model, "llama-70b");
  EXPECT_EQ(out.ns.dtype, "bfloat16");
  EXPECT_EQ(out.ns.layout, "NHD");
  EXPECT_EQ(out.ns.salt, std::string_view("s\0lt", 4));
  EXPECT_EQ(out.ns.world_size, std::optional<uint64_t>(8));
  EXPECT_EQ(out.ns.rank, std::optional<uint64_t>(7));
}

// Absent and 0 name different namespaces, so presence must survive the round trip.
TEST(RequestRoundTrip, RegisterKeepsWorldSizeAndRankAbsentOrZero) {
  wire::FrameBuffer frame;
  {
    Decoded d;
    RegisterRequest in;
    in.instance_id = "w";
    EncodeAndDecodeRequest(frame, 2, in, false, d);
    RegisterRequest out;
    ASSERT_TRUE(Unpack(d.map, out).ok());
    EXPECT_FALSE(out.ns.world_size.has_value());
    EXPECT_FALSE(out.ns.rank.has_value());
    EXPECT_EQ(out.ns.model, "");
    EXPECT_EQ(out.ns.salt, "");
    EXPECT_EQ(out.protocol, 1u);  // the struct's default, sent as such
  }
  {
    Decoded d;
    RegisterRequest in;
    in.instance_id = "w";
    in.ns.world_size = 0;
    EncodeAndDecodeRequest(frame, 3, in, false, d);
    RegisterRequest out;
    ASSERT_TRUE(Unpack(d.map, out).ok());
    EXPECT_EQ(out.ns.world_size, std::optional<uint64_t>(0));
    EXPECT_FALSE(out.ns.rank.has_value());
  }
}

// A version-1 client sends neither client_version nor protocol, and may send an empty namespace.
TEST(RequestRoundTrip, RegisterFromAnOldClientTakesTheDefaults) {
  const std::string body = RequestBody(5, "register", 2, [](wire::Packer& pk) {
    wire::PackStr(pk, "instance_id");
    wire::PackStr(pk, "old");
    wire::PackStr(pk, "namespace");
    pk.pack_map(0);
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "request", d).ok());
  RegisterRequest out;
  out.protocol = 7;  // must be overwritten with the default
  ASSERT_TRUE(Unpack(d.map, out).ok());
  EXPECT_EQ(out.instance_id, "old");
  EXPECT_EQ(out.client_version, "");
  EXPECT_EQ(out.protocol, 1u);
  EXPECT_FALSE(out.ns.world_size.has_value());
  EXPECT_EQ(out.ns.layout, "");
}

// client_version is informative: a malformed one is ignored, not refused.
TEST(RequestRoundTrip, RegisterIgnoresAMalformedClientVersion) {
  const std::string body = RequestBody(5, "register", 3, [](wire::Packer& pk) {
    wire::PackStr(pk, "instance_id");
    wire::PackStr(pk, "w");
    wire::PackStr(pk, "client_version");
    pk.pack_uint64(12);
    wire::PackStr(pk, "namespace");
    pk.pack_map(0);
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "request", d).ok());
  RegisterRequest out;
  ASSERT_TRUE(Unpack(d.map, out).ok());
  EXPECT_EQ(out.client_version, "");
}

TEST(RequestRoundTrip, FieldlessRequestsCarryOnlyTheEnvelope) {
  wire::FrameBuffer frame;
  for (bool chained : {false, true}) {
    Decoded a, b, c;
    EncodeAndDecodeRequest(frame, 10, StatsRequest{}, chained, a);
    EXPECT_EQ(a.obj.via.map.size, chained ? 3u : 2u);
    EncodeAndDecodeRequest(frame, 11, HealthRequest{}, chained, b);
    EXPECT_EQ(b.obj.via.map.size, chained ? 3u : 2u);
    EncodeAndDecodeRequest(frame, 12, ClearRequest{}, chained, c);
    EXPECT_EQ(c.obj.via.map.size, chained ? 3u : 2u);
  }
}

TEST(RequestRoundTrip, PrepareStoreKeysAndSizes) {
  const std::vector<std::string> keys = SampleKeys();
  const std::vector<std::string_view> views = Views(keys);
  const std::vector<uint64_t> sizes = {1, 4096, 2u << 20, std::numeric_limits<uint64_t>::max()};
  wire::FrameBuffer frame;
  for (bool chained : {false, true}) {
    Decoded d;
    EncodeAndDecodeRequest(frame, 77, PrepareStoreRequest{views, sizes}, chained, d);
    DecodeScratch scratch;
    PrepareStoreRequest out;
    ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
    ExpectKeys(out.keys, keys);
    ASSERT_EQ(out.sizes.size(), sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) EXPECT_EQ(out.sizes[i], sizes[i]);
  }
}

TEST(RequestRoundTrip, LookupWithAndWithoutPin) {
  const std::vector<std::string> keys = SampleKeys();
  const std::vector<std::string_view> views = Views(keys);
  wire::FrameBuffer frame;
  for (bool pin : {false, true}) {
    Decoded d;
    EncodeAndDecodeRequest(frame, 8, LookupRequest{views, pin}, false, d);
    DecodeScratch scratch;
    LookupRequest out;
    out.pin = !pin;
    ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
    ExpectKeys(out.keys, keys);
    EXPECT_EQ(out.pin, pin);
  }
  // pin is optional: absent means false.
  const std::string body = RequestBody(9, "lookup", 1, [](wire::Packer& pk) {
    wire::PackStr(pk, "keys");
    pk.pack_array(1);
    wire::PackBin(pk, "k");
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "request", d).ok());
  DecodeScratch scratch;
  LookupRequest out;
  out.pin = true;
  ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
  EXPECT_FALSE(out.pin);
}

TEST(RequestRoundTrip, EmptyKeyListsAreValid) {
  wire::FrameBuffer frame;
  DecodeScratch scratch;
  {
    Decoded d;
    EncodeAndDecodeRequest(frame, 1, PrepareStoreRequest{}, false, d);
    PrepareStoreRequest out;
    ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
    EXPECT_TRUE(out.keys.empty());
    EXPECT_TRUE(out.sizes.empty());
  }
  {
    Decoded d;
    EncodeAndDecodeRequest(frame, 2, LookupRequest{{}, true}, false, d);
    LookupRequest out;
    ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
    EXPECT_TRUE(out.keys.empty());
    EXPECT_TRUE(out.pin);
  }
}

// The batch limit itself is accepted: 65,536 keys (and sizes) in one request.
TEST(RequestRoundTrip, TheLargestBatchOf65536Keys) {
  std::vector<std::string> keys;
  keys.reserve(wire::kMaxBatchKeys);
  for (uint32_t i = 0; i < wire::kMaxBatchKeys; ++i) keys.push_back(fmt::format("{:08x}", i));
  const std::vector<std::string_view> views = Views(keys);
  const std::vector<uint64_t> sizes(keys.size(), 4096);
  wire::FrameBuffer frame;
  Decoded d;
  EncodeAndDecodeRequest(frame, 3, PrepareStoreRequest{views, sizes}, false, d);
  DecodeScratch scratch;
  PrepareStoreRequest out;
  ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
  ExpectKeys(out.keys, keys);
  EXPECT_EQ(out.sizes.size(), size_t{wire::kMaxBatchKeys});
}

// Only the bytes of a key count: a str key reads as the same bytes as a bin key.
TEST(RequestRoundTrip, KeysMayBeStrOrBin) {
  const std::string body = RequestBody(4, "remove", 1, [](wire::Packer& pk) {
    wire::PackStr(pk, "keys");
    pk.pack_array(2);
    wire::PackStr(pk, "ab");
    wire::PackBin(pk, "ab");
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "request", d).ok());
  DecodeScratch scratch;
  RemoveRequest out;
  ASSERT_TRUE(UnpackKeys(d.map, out, scratch).ok());
  ASSERT_EQ(out.keys.size(), 2u);
  EXPECT_EQ(out.keys[0], "ab");
  EXPECT_EQ(out.keys[1], "ab");
}

// Clients in other languages send fields in any order, and unknown fields are ignored.
TEST(RequestRoundTrip, FieldOrderDoesNotMatterAndUnknownFieldsAreIgnored) {
  const std::string body = Msgpack([](wire::Packer& pk) {
    pk.pack_map(5);
    wire::PackStr(pk, "keys");
    pk.pack_array(1);
    wire::PackBin(pk, "k1");
    wire::PackStr(pk, "future_field");
    pk.pack_array(2);
    pk.pack_nil();
    pk.pack_double(1.5);
    wire::PackStr(pk, "op");
    wire::PackStr(pk, "commit_store");
    wire::PackStr(pk, "chained");
    pk.pack_false();
    wire::PackStr(pk, "id");
    pk.pack_uint64(123456789012345ull);
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "request", d).ok());
  RequestHead head;
  ASSERT_TRUE(DecodeRequestHead(d.map, &head).ok());
  EXPECT_EQ(head.id, 123456789012345ull);
  EXPECT_EQ(head.op, Op::kCommitStore);
  EXPECT_EQ(DecodeChained(d.map).value(), false);
  DecodeScratch scratch;
  CommitStoreRequest out;
  ASSERT_TRUE(UnpackKeys(d.map, out, scratch).ok());
  ASSERT_EQ(out.keys.size(), 1u);
  EXPECT_EQ(out.keys[0], "k1");
}

TEST(RequestRoundTrip, ChainedMustBeABoolean) {
  const std::string body = RequestBody(4, "stats", 1, [](wire::Packer& pk) {
    wire::PackStr(pk, "chained");
    pk.pack_uint64(1);
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "request", d).ok());
  EXPECT_TRUE(FailsWith(DecodeChained(d.map).status(), StatusCode::kProtocol, "'chained'"));
}

// commit_store, abort_store, prepare_retrieve, commit_retrieve and remove carry only keys.
template <typename T>
class KeysOnlyRequest : public ::testing::Test {};
using KeysOnlyTypes = ::testing::Types<CommitStoreRequest, AbortStoreRequest, PrepareRetrieveRequest,
                                       CommitRetrieveRequest, RemoveRequest>;
TYPED_TEST_SUITE(KeysOnlyRequest, KeysOnlyTypes);

TYPED_TEST(KeysOnlyRequest, RoundTripsWithKeysEmptyOrNotChainedOrNot) {
  const std::vector<std::string> keys = SampleKeys();
  const std::vector<std::string_view> views = Views(keys);
  wire::FrameBuffer frame;
  DecodeScratch scratch;
  for (bool chained : {false, true}) {
    for (bool empty : {false, true}) {
      Decoded d;
      TypeParam in;
      if (!empty) in.keys = views;
      EncodeAndDecodeRequest(frame, 40, in, chained, d);
      EXPECT_EQ(d.obj.via.map.size, chained ? 4u : 3u);  // id, op, [chained], keys
      TypeParam out;
      ASSERT_TRUE(UnpackKeys(d.map, out, scratch).ok());
      ExpectKeys(out.keys, empty ? std::vector<std::string>{} : keys);
    }
  }
}

TYPED_TEST(KeysOnlyRequest, AKeyOfZeroOr65BytesIsInvalidArgumentNamingIt) {
  for (size_t bad_len : {size_t{0}, size_t{65}}) {
    const std::string bad(bad_len, 'x');
    const std::string ok64(64, 'y');
    const std::vector<std::string_view> views = {"a", ok64, bad};
    wire::FrameBuffer frame;
    Decoded d;
    EncodeAndDecodeRequest(frame, 41, TypeParam{views}, false, d);
    DecodeScratch scratch;
    TypeParam out;
    const Status s = UnpackKeys(d.map, out, scratch);
    EXPECT_TRUE(FailsWith(s, StatusCode::kInvalidArgument, "keys[2]"));
    EXPECT_NE(s.message().find(fmt::format("is {} bytes", bad_len)), npos) << s.ToString();
  }
}

TEST(RequestKeys, AKeyOfZeroOr65BytesIsInvalidArgumentForPrepareStoreAndLookup) {
  for (size_t bad_len : {size_t{0}, size_t{65}}) {
    const std::string bad(bad_len, 'x');
    const std::vector<std::string_view> views = {bad, "b"};
    const std::vector<uint64_t> sizes = {1, 1};
    wire::FrameBuffer frame;
    DecodeScratch scratch;
    {
      Decoded d;
      EncodeAndDecodeRequest(frame, 1, PrepareStoreRequest{views, sizes}, false, d);
      PrepareStoreRequest out;
      EXPECT_TRUE(FailsWith(Unpack(d.map, out, scratch), StatusCode::kInvalidArgument, "keys[0]"));
    }
    {
      Decoded d;
      EncodeAndDecodeRequest(frame, 2, LookupRequest{views, true}, false, d);
      LookupRequest out;
      EXPECT_TRUE(FailsWith(Unpack(d.map, out, scratch), StatusCode::kInvalidArgument, "keys[0]"));
    }
  }
}

// ---- replies ------------------------------------------------------------------------------------

TEST(ReplyRoundTrip, Register) {
  wire::FrameBuffer frame;
  Decoded d;
  const RegisterReply in{42, "lmcache_l1_pool_x", 1ull << 40, 4096, "0.9.1", 2, 0xfeedfacecafebeefull, ""};
  EncodeAndDecodeReply(frame, 1, in, d);
  RegisterReply out;
  ASSERT_TRUE(Unpack(d.map, out).ok());
  EXPECT_EQ(out.session, 42u);
  EXPECT_EQ(out.shm_name, "lmcache_l1_pool_x");
  EXPECT_EQ(out.pool_size, 1ull << 40);
  EXPECT_EQ(out.alignment, 4096u);
  EXPECT_EQ(out.server_version, "0.9.1");
  EXPECT_EQ(out.protocol, 2u);
  EXPECT_EQ(out.generation, 0xfeedfacecafebeefull);
}

// shm_path is optional: sent only when set, so the reply of a server in /dev/shm without it is
// the 7 fields older clients know; an older server's reply (no shm_path) decodes to an empty path.
TEST(ReplyRoundTrip, RegisterWithAndWithoutTheSegmentPath) {
  wire::FrameBuffer frame;
  Decoded d;
  const RegisterReply with{7, "lmcache_l1_pool_h", 64u << 20, 4096, "0.9.2", 2, 5, "/mnt/huge/lmcache_l1_pool_h"};
  EncodeAndDecodeReply(frame, 1, with, d);
  EXPECT_EQ(d.obj.via.map.size, 2u + 8u);
  RegisterReply out;
  ASSERT_TRUE(Unpack(d.map, out).ok());
  EXPECT_EQ(out.shm_path, "/mnt/huge/lmcache_l1_pool_h");
  EXPECT_EQ(out.shm_name, "lmcache_l1_pool_h");

  Decoded old;
  const RegisterReply without{7, "lmcache_l1_pool_h", 64u << 20, 4096, "0.9.1", 2, 5, ""};
  EncodeAndDecodeReply(frame, 1, without, old);
  EXPECT_EQ(old.obj.via.map.size, 2u + 7u);  // what older clients were pinned to
  EXPECT_FALSE(old.map.Has("shm_path"));
  RegisterReply out_old;
  out_old.shm_path = "stale";
  ASSERT_TRUE(Unpack(old.map, out_old).ok());
  EXPECT_EQ(out_old.shm_path, "");
}

TEST(ReplyRoundTrip, StatsCountersAndTheSegmentName) {
  const std::vector<std::pair<std::string_view, uint64_t>> counters = {
      {"objects", 3}, {"used_bytes", 0}, {"l2_bytes", std::numeric_limits<uint64_t>::max()}};
  wire::FrameBuffer frame;
  Decoded d;
  EncodeAndDecodeReply(frame, 2, StatsReply{counters, "lmcache_l1_pool_s"}, d);
  DecodeScratch scratch;
  StatsReply out;
  ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
  ASSERT_EQ(out.counters.size(), counters.size());
  for (size_t i = 0; i < counters.size(); ++i) EXPECT_EQ(out.counters[i], counters[i]);
  EXPECT_EQ(out.shm_name, "lmcache_l1_pool_s");
}

// A server with many tiers reports more counters than a request may carry fields: the client
// decodes replies with its own, higher map limit.
TEST(ReplyRoundTrip, StatsWithMoreThan64CountersNeedsTheClientsMapLimit) {
  std::vector<std::string> names;
  for (int i = 0; i < 100; ++i) names.push_back(fmt::format("c{}", i));
  std::vector<std::pair<std::string_view, uint64_t>> counters;
  for (size_t i = 0; i < names.size(); ++i) counters.emplace_back(names[i], i);
  wire::FrameBuffer frame;
  const std::string_view bytes = EncodeReply(frame, 3, StatsReply{counters, "x"});
  Decoded strict;
  EXPECT_TRUE(FailsWith(DecodeFrame(bytes, "reply", strict), StatusCode::kProtocol, "64"));
  Decoded d;
  ASSERT_TRUE(DecodeFrame(bytes, "reply", d, /*max_map_fields=*/4096).ok());
  DecodeScratch scratch;
  StatsReply out;
  ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
  EXPECT_EQ(out.counters.size(), 100u);
  EXPECT_EQ(out.counters[99].first, "c99");
}

TEST(ReplyRoundTrip, HealthClearAbortLookup) {
  wire::FrameBuffer frame;
  {
    Decoded d;
    EncodeAndDecodeReply(frame, 4, HealthReply{"serving", 99}, d);
    HealthReply out;
    ASSERT_TRUE(Unpack(d.map, out).ok());
    EXPECT_EQ(out.status, "serving");
    EXPECT_EQ(out.generation, 99u);
  }
  {
    Decoded d;
    EncodeAndDecodeReply(frame, 5, ClearReply{12}, d);
    ClearReply out;
    ASSERT_TRUE(Unpack(d.map, out).ok());
    EXPECT_EQ(out.removed, 12u);
  }
  {
    Decoded d;
    EncodeAndDecodeReply(frame, 6, AbortStoreReply{3}, d);
    AbortStoreReply out;
    ASSERT_TRUE(Unpack(d.map, out).ok());
    EXPECT_EQ(out.aborted, 3u);
  }
  {
    Decoded d;
    EncodeAndDecodeReply(frame, 7, LookupReply{65536}, d);
    LookupReply out;
    ASSERT_TRUE(Unpack(d.map, out).ok());
    EXPECT_EQ(out.count, 65536u);
  }
}

// An older server's health reply has no generation: it reads as 0.
TEST(ReplyRoundTrip, HealthWithoutAGenerationReadsAsZero) {
  const std::string body = Msgpack([](wire::Packer& pk) {
    pk.pack_map(3);
    wire::PackStr(pk, "id");
    pk.pack_uint64(1);
    wire::PackStr(pk, "ok");
    pk.pack_true();
    wire::PackStr(pk, "status");
    wire::PackStr(pk, "serving");
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "reply", d).ok());
  HealthReply out{"x", 5};
  ASSERT_TRUE(Unpack(d.map, out).ok());
  EXPECT_EQ(out.status, "serving");
  EXPECT_EQ(out.generation, 0u);
}

TEST(ReplyRoundTrip, SlotsOfEveryStatus) {
  const std::vector<SlotResult> slots = {
      {SlotStatus::kOk, 8388608, 2097152}, {SlotStatus::kExists, 0, 0},
      {SlotStatus::kBusy, 0, 0},           {SlotStatus::kFull, 0, 0},
      {SlotStatus::kMissing, 0, 0},        {SlotStatus::kOk, std::numeric_limits<uint64_t>::max() - 4095, 1}};
  wire::FrameBuffer frame;
  for (uint64_t id : {uint64_t{8}, std::numeric_limits<uint64_t>::max()}) {
    Decoded d;
    EncodeAndDecodeReply(frame, id, SlotsReply{slots}, d);
    DecodeScratch scratch;
    SlotsReply out;
    ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
    ASSERT_EQ(out.slots.size(), slots.size());
    for (size_t i = 0; i < slots.size(); ++i) {
      EXPECT_EQ(out.slots[i].status, slots[i].status) << i;
      EXPECT_EQ(out.slots[i].offset, slots[i].offset) << i;
      EXPECT_EQ(out.slots[i].length, slots[i].length) << i;
    }
  }
  Decoded d;
  EncodeAndDecodeReply(frame, 9, SlotsReply{}, d);
  DecodeScratch scratch;
  SlotsReply out;
  ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
  EXPECT_TRUE(out.slots.empty());
}

TEST(ReplyRoundTrip, CommitsAnswerWithTheEnvelopeOnly) {
  wire::FrameBuffer frame;
  Decoded d;
  EncodeAndDecodeReply(frame, 10, EmptyReply{}, d);
  EXPECT_EQ(d.obj.via.map.size, 2u);  // id, ok
  EXPECT_TRUE(d.map.Has("id"));
  EXPECT_TRUE(d.map.Has("ok"));
}

TEST(ReplyRoundTrip, RemoveOfEveryOutcome) {
  const std::vector<RemoveOutcome> results = {RemoveOutcome::kRemoved, RemoveOutcome::kMissing, RemoveOutcome::kBusy,
                                              RemoveOutcome::kRemoved};
  wire::FrameBuffer frame;
  Decoded d;
  EncodeAndDecodeReply(frame, 11, RemoveReply{results}, d);
  DecodeScratch scratch;
  RemoveReply out;
  ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
  ASSERT_EQ(out.results.size(), results.size());
  for (size_t i = 0; i < results.size(); ++i) EXPECT_EQ(out.results[i], results[i]) << i;
}

// ---- error replies ------------------------------------------------------------------------------

Status DecodeError(const ErrorReply& e, uint64_t id, ReplyHead* head) {
  wire::FrameBuffer frame;
  Decoded d;
  SHMKV_RETURN_IF_ERROR(DecodeFrame(EncodeError(frame, id, e), "reply", d));
  return DecodeReplyHead(d.map, id, head);
}

TEST(ErrorReply, EveryStatusCodeRoundTripsWithItsMessage) {
  for (int c = static_cast<int>(StatusCode::kInvalidArgument); c <= static_cast<int>(StatusCode::kInternal); ++c) {
    const StatusCode code = static_cast<StatusCode>(c);
    const std::string message = fmt::format("commit_store: key #2 failed with {}", StatusCodeName(code));
    ReplyHead head;
    const Status s = DecodeError({StatusCodeName(code), message, {}}, 31, &head);
    EXPECT_EQ(s.code(), code) << s.ToString();
    EXPECT_EQ(s.message(), message);
    EXPECT_TRUE(head.answered);
    EXPECT_FALSE(head.not_executed);
    EXPECT_TRUE(head.expired.empty());
  }
}

TEST(ErrorReply, ExpiredCarriesTheIndicesOfTheKeys) {
  const std::vector<uint32_t> expired = {0, 2, 65535};
  ReplyHead head;
  const Status s = DecodeError({"Expired", "commit_retrieve: 3 pins expired", expired}, 32, &head);
  EXPECT_EQ(s.code(), StatusCode::kExpired);
  EXPECT_EQ(s.message(), "commit_retrieve: 3 pins expired");
  EXPECT_TRUE(head.answered);
  EXPECT_EQ(head.expired, expired);
}

TEST(ErrorReply, ExpiredWithoutItsIndicesIsAProtocolError) {
  ReplyHead head;
  EXPECT_TRUE(FailsWith(DecodeError({"Expired", "no indices", {}}, 33, &head), StatusCode::kProtocol, "'expired'"));
}

TEST(ErrorReply, NotExecutedIsFlagged) {
  ReplyHead head;
  const Status s = DecodeError({wire::kNotExecutedCode, "not executed: an earlier request failed", {}}, 34, &head);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "not executed: an earlier request failed");
  EXPECT_TRUE(head.answered);
  EXPECT_TRUE(head.not_executed);
  // Any other failure is not flagged.
  ReplyHead other;
  (void)DecodeError({"InvalidArgument", "x", {}}, 35, &other);
  EXPECT_FALSE(other.not_executed);
}

TEST(ErrorReply, AnUnknownCodeIsInternalAndKeepsItsMessage) {
  for (std::string_view code : {"Teapot", "", "invalidargument", "NotExecuted2"}) {
    ReplyHead head;
    const Status s = DecodeError({code, "from a newer server", {}}, 36, &head);
    EXPECT_EQ(s.code(), StatusCode::kInternal) << code;
    EXPECT_EQ(s.message(), "from a newer server");
    EXPECT_TRUE(head.answered);
    EXPECT_FALSE(head.not_executed);
  }
  EXPECT_EQ(ParseStatusCode("Teapot"), StatusCode::kInternal);
  EXPECT_EQ(ParseStatusCode("Expired"), StatusCode::kExpired);
  EXPECT_EQ(ParseStatusCode("Protocol"), StatusCode::kProtocol);
}

// "OK" is a StatusCodeName, so an error reply ({"ok": false, "error": {"code": "OK", ...}}) once
// decoded as a *successful* Status: a malformed or hostile server could make a failed
// commit_store (EmptyReply, nothing else to check) look applied. It is a malformed reply.
TEST(ErrorReply, AnErrorReplyWithCodeOKIsNeverASuccess) {
  ReplyHead head;
  const Status s = DecodeError({"OK", "looks fine", {}}, 37, &head);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kProtocol);
}

// The `expired` indices were read as uint64 and stored as uint32 without a range check, so an
// index of 2^32 + 1 came back as 1 and the caller reported key #1 as expired. An index that can
// name no key of any batch (a batch holds at most 65,536) is a malformed reply: a Protocol error.
TEST(ErrorReply, AnExpiredIndexThatNamesNoKeyIsAProtocolError) {
  const std::string body = Msgpack([](wire::Packer& pk) {
    pk.pack_map(3);
    wire::PackStr(pk, "id");
    pk.pack_uint64(7);
    wire::PackStr(pk, "ok");
    pk.pack_false();
    wire::PackStr(pk, "error");
    pk.pack_map(3);
    wire::PackStr(pk, "code");
    wire::PackStr(pk, "Expired");
    wire::PackStr(pk, "message");
    wire::PackStr(pk, "commit_retrieve: a pin expired");
    wire::PackStr(pk, "expired");
    pk.pack_array(1);
    pk.pack_uint64((uint64_t{1} << 32) + 1);
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "reply", d).ok());
  ReplyHead head;
  const Status s = DecodeReplyHead(d.map, 7, &head);
  EXPECT_TRUE(FailsWith(s, StatusCode::kProtocol, "expired")) << "expired indices read back: " << head.expired.size();
  EXPECT_TRUE(head.expired.empty() || head.expired[0] != 1u) << "index 2^32 + 1 read as 1";
}

TEST(ErrorReply, MissingPiecesOfTheErrorMap) {
  auto reply = [](const std::function<void(wire::Packer&)>& error, bool with_error) {
    return Msgpack([&](wire::Packer& pk) {
      pk.pack_map(with_error ? 3 : 2);
      wire::PackStr(pk, "id");
      pk.pack_uint64(7);
      wire::PackStr(pk, "ok");
      pk.pack_false();
      if (with_error) {
        wire::PackStr(pk, "error");
        error(pk);
      }
    });
  };
  struct Case {
    std::string body;
    StatusCode code;
    std::string_view part;
  };
  const std::vector<Case> cases = {
      {reply(nullptr, false), StatusCode::kProtocol, "without an error map"},
      {reply([](wire::Packer& pk) { wire::PackStr(pk, "broken"); }, true), StatusCode::kProtocol,
       "without an error map"},
      {reply(
           [](wire::Packer& pk) {
             pk.pack_map(1);
             wire::PackStr(pk, "code");
             wire::PackStr(pk, "Full");
           },
           true),
       StatusCode::kFull, "(no message)"},
      {reply(
           [](wire::Packer& pk) {
             pk.pack_map(1);
             wire::PackStr(pk, "message");
             wire::PackStr(pk, "no code");
           },
           true),
       StatusCode::kInternal, "no code"},
  };
  for (const Case& c : cases) {
    Decoded d;
    ASSERT_TRUE(DecodeBody(c.body, "reply", d).ok());
    ReplyHead head;
    EXPECT_TRUE(FailsWith(DecodeReplyHead(d.map, 7, &head), c.code, c.part)) << Hex(c.body);
  }
}

TEST(ReplyHeadDecoding, AReplyToAnotherRequestIsAProtocolError) {
  wire::FrameBuffer frame;
  Decoded d;
  ASSERT_TRUE(DecodeFrame(EncodeReply(frame, 8, LookupReply{1}), "reply", d).ok());
  ReplyHead head;
  EXPECT_TRUE(FailsWith(DecodeReplyHead(d.map, 7, &head), StatusCode::kProtocol, "does not answer this request"));
  EXPECT_FALSE(head.answered);  // the stream is out of step
  // The same holds for an error reply to another id.
  Decoded e;
  ASSERT_TRUE(DecodeFrame(EncodeError(frame, 0, {"Protocol", "unreadable", {}}), "reply", e).ok());
  ReplyHead head2;
  EXPECT_TRUE(FailsWith(DecodeReplyHead(e.map, 7, &head2), StatusCode::kProtocol, "does not answer this request"));
  EXPECT_FALSE(head2.answered);
}

TEST(ReplyHeadDecoding, IdAndOkAreRequired) {
  auto body = [](bool with_id, bool ok_as_bool) {
    return Msgpack([&](wire::Packer& pk) {
      pk.pack_map(with_id ? 2 : 1);
      if (with_id) {
        wire::PackStr(pk, "id");
        pk.pack_uint64(7);
      }
      wire::PackStr(pk, "ok");
      if (ok_as_bool) {
        pk.pack_true();
      } else {
        pk.pack_uint64(1);
      }
    });
  };
  {
    Decoded d;
    ASSERT_TRUE(DecodeBody(body(false, true), "reply", d).ok());
    ReplyHead head;
    EXPECT_TRUE(FailsWith(DecodeReplyHead(d.map, 7, &head), StatusCode::kProtocol, "does not answer"));
  }
  {
    Decoded d;
    ASSERT_TRUE(DecodeBody(body(true, false), "reply", d).ok());
    ReplyHead head;
    EXPECT_TRUE(FailsWith(DecodeReplyHead(d.map, 7, &head), StatusCode::kProtocol, "'ok'"));
    EXPECT_FALSE(head.answered);
  }
}

// ---- malformed requests: the error table of docs/protocol.md ------------------------------------

TEST(MalformedRequest, AnIdMissingOrNotAUintIsAProtocolErrorAnsweredWithIdZero) {
  const std::vector<std::pair<std::string, std::function<void(wire::Packer&)>>> ids = {
      {"missing", nullptr},
      {"string", [](wire::Packer& pk) { wire::PackStr(pk, "7"); }},
      {"negative", [](wire::Packer& pk) { pk.pack_int64(-7); }},
      {"float", [](wire::Packer& pk) { pk.pack_double(7.5); }},
      {"nil", [](wire::Packer& pk) { pk.pack_nil(); }},
      {"bool", [](wire::Packer& pk) { pk.pack_true(); }},
      {"array",
       [](wire::Packer& pk) {
         pk.pack_array(1);
         pk.pack_uint64(7);
       }},
  };
  for (const auto& entry : ids) {
    // Plain references, not a structured binding: clang 14 cannot capture bindings in a lambda.
    const std::string& what = entry.first;
    const std::function<void(wire::Packer&)>& id = entry.second;
    const std::string body = Msgpack([&](wire::Packer& pk) {
      pk.pack_map(id ? 2 : 1);
      wire::PackStr(pk, "op");
      wire::PackStr(pk, "stats");
      if (id) {
        wire::PackStr(pk, "id");
        id(pk);
      }
    });
    Decoded d;
    ASSERT_TRUE(DecodeBody(body, "request", d).ok()) << what;
    RequestHead head;
    EXPECT_TRUE(FailsWith(DecodeRequestHead(d.map, &head), StatusCode::kProtocol, "'id'")) << what;
    EXPECT_EQ(head.id, 0u) << what;
  }
  // A float64 of integral value, as a client in a dynamic language may send (msgpack-c's own
  // packer would write 7.0 as an integer, so the bytes are written out).
  const std::string float_id = Msgpack([](wire::Packer& pk) {
                                 pk.pack_map(2);
                                 wire::PackStr(pk, "op");
                                 wire::PackStr(pk, "stats");
                                 wire::PackStr(pk, "id");
                               }) +
                               Unhex("cb401c000000000000");
  Decoded d;
  ASSERT_TRUE(DecodeBody(float_id, "request", d).ok());
  ASSERT_EQ(d.map.Find("id")->type, msgpack::type::FLOAT64);
  RequestHead head;
  EXPECT_TRUE(FailsWith(DecodeRequestHead(d.map, &head), StatusCode::kProtocol, "'id'"));
  EXPECT_EQ(head.id, 0u);
}

TEST(MalformedRequest, AnOpMissingOrNotAStringIsAProtocolErrorAnsweredWithTheId) {
  for (bool present : {false, true}) {
    const std::string body = Msgpack([&](wire::Packer& pk) {
      pk.pack_map(present ? 2 : 1);
      wire::PackStr(pk, "id");
      pk.pack_uint64(99);
      if (present) {
        wire::PackStr(pk, "op");
        pk.pack_uint64(3);
      }
    });
    Decoded d;
    ASSERT_TRUE(DecodeBody(body, "request", d).ok());
    RequestHead head;
    EXPECT_TRUE(FailsWith(DecodeRequestHead(d.map, &head), StatusCode::kProtocol, "'op'"));
    EXPECT_EQ(head.id, 99u);
  }
}

// An unknown operation is the handler's InvalidArgument; the envelope itself reads fine.
TEST(MalformedRequest, AnUnknownOpIsReadWithoutAnOp) {
  Decoded d;
  ASSERT_TRUE(DecodeBody(RequestBody(5, "fly", 0, nullptr), "request", d).ok());
  RequestHead head;
  ASSERT_TRUE(DecodeRequestHead(d.map, &head).ok());
  EXPECT_EQ(head.id, 5u);
  EXPECT_EQ(head.op_name, "fly");
  EXPECT_FALSE(head.op.has_value());
}

TEST(MalformedRequest, NotAMapOrAKeyThatIsNotAString) {
  Decoded array;
  EXPECT_TRUE(FailsWith(DecodeBody(Msgpack([](wire::Packer& pk) {
                                     pk.pack_array(2);
                                     pk.pack_uint64(1);
                                     pk.pack_uint64(2);
                                   }),
                                   "request", array),
                        StatusCode::kProtocol, "not a msgpack map"));
  Decoded int_key;
  EXPECT_TRUE(FailsWith(DecodeBody(Msgpack([](wire::Packer& pk) {
                                     pk.pack_map(2);
                                     wire::PackStr(pk, "id");
                                     pk.pack_uint64(1);
                                     pk.pack_uint64(5);
                                     wire::PackStr(pk, "op");
                                   }),
                                   "request", int_key),
                        StatusCode::kProtocol, "map key is not a string"));
  Decoded bin_key;  // keys of the map must be str (keys of the *batch* may be bin)
  EXPECT_TRUE(FailsWith(DecodeBody(Msgpack([](wire::Packer& pk) {
                                     pk.pack_map(1);
                                     wire::PackBin(pk, "id");
                                     pk.pack_uint64(1);
                                   }),
                                   "request", bin_key),
                        StatusCode::kProtocol, "map key is not a string"));
}

// A required field missing or of the wrong type: Protocol, naming the field (or element).
TEST(MalformedRequest, ARequiredFieldMissingOrMistypedIsAProtocolErrorNamingIt) {
  using Fields = std::function<void(wire::Packer&)>;
  auto keys = [](wire::Packer& pk) {
    wire::PackStr(pk, "keys");
    pk.pack_array(1);
    wire::PackBin(pk, "k");
  };
  auto ns = [](wire::Packer& pk) {
    wire::PackStr(pk, "namespace");
    pk.pack_map(0);
  };
  auto instance = [](wire::Packer& pk) {
    wire::PackStr(pk, "instance_id");
    wire::PackStr(pk, "w");
  };
  struct Case {
    std::string name;
    std::string_view op;
    uint32_t n;
    Fields fields;
    std::string_view part;
  };
  const std::vector<Case> cases = {
      {"prepare_store without keys", "prepare_store", 1,
       [](wire::Packer& pk) {
         wire::PackStr(pk, "sizes");
         pk.pack_array(0);
       },
       "field 'keys' is missing"},
      {"prepare_store keys not an array", "prepare_store", 2,
       [](wire::Packer& pk) {
         wire::PackStr(pk, "keys");
         wire::PackBin(pk, "k");
         wire::PackStr(pk, "sizes");
         pk.pack_array(0);
       },
       "field 'keys' must be"},
      {"prepare_store keys[3] an integer", "prepare_store", 2,
       [](wire::Packer& pk) {
         wire::PackStr(pk, "keys");
         pk.pack_array(4);
         for (int i = 0; i < 3; ++i) wire::PackBin(pk, "k");
         pk.pack_uint64(3);
         wire::PackStr(pk, "sizes");
         pk.pack_array(0);
       },
       "keys[3]"},
      {"prepare_store without sizes", "prepare_store", 1, keys, "field 'sizes' is missing"},
      {"prepare_store sizes a map", "prepare_store", 2,
       [&](wire::Packer& pk) {
         keys(pk);
         wire::PackStr(pk, "sizes");
         pk.pack_map(0);
       },
       "field 'sizes' must be"},
      {"prepare_store sizes[1] negative", "prepare_store", 2,
       [&](wire::Packer& pk) {
         keys(pk);
         wire::PackStr(pk, "sizes");
         pk.pack_array(2);
         pk.pack_uint64(1);
         pk.pack_int64(-1);
       },
       "sizes[1]"},
      {"prepare_store sizes[0] a string", "prepare_store", 2,
       [&](wire::Packer& pk) {
         keys(pk);
         wire::PackStr(pk, "sizes");
         pk.pack_array(1);
         wire::PackStr(pk, "4096");
       },
       "sizes[0]"},
      {"lookup pin an integer", "lookup", 2,
       [&](wire::Packer& pk) {
         keys(pk);
         wire::PackStr(pk, "pin");
         pk.pack_uint64(1);
       },
       "field 'pin' must be a boolean"},
      {"lookup without keys", "lookup", 0, nullptr, "field 'keys' is missing"},
      {"commit_store keys nil", "commit_store", 1,
       [](wire::Packer& pk) {
         wire::PackStr(pk, "keys");
         pk.pack_nil();
       },
       "field 'keys' must be"},
      {"remove without keys", "remove", 0, nullptr, "field 'keys' is missing"},
      {"register without instance_id", "register", 1, ns, "field 'instance_id' is missing"},
      {"register instance_id an integer", "register", 2,
       [&](wire::Packer& pk) {
         ns(pk);
         wire::PackStr(pk, "instance_id");
         pk.pack_uint64(1);
       },
       "field 'instance_id' must be a string"},
      {"register without namespace", "register", 1, instance, "field 'namespace' is missing"},
      {"register namespace a string", "register", 2,
       [&](wire::Packer& pk) {
         instance(pk);
         wire::PackStr(pk, "namespace");
         wire::PackStr(pk, "llama");
       },
       "field 'namespace' must be a map"},
      {"register namespace.world_size a string", "register", 2,
       [&](wire::Packer& pk) {
         instance(pk);
         wire::PackStr(pk, "namespace");
         pk.pack_map(1);
         wire::PackStr(pk, "world_size");
         wire::PackStr(pk, "4");
       },
       "field 'world_size' must be"},
      {"register namespace.rank negative", "register", 2,
       [&](wire::Packer& pk) {
         instance(pk);
         wire::PackStr(pk, "namespace");
         pk.pack_map(1);
         wire::PackStr(pk, "rank");
         pk.pack_int64(-1);
       },
       "field 'rank' must be"},
      {"register namespace.model an integer", "register", 2,
       [&](wire::Packer& pk) {
         instance(pk);
         wire::PackStr(pk, "namespace");
         pk.pack_map(1);
         wire::PackStr(pk, "model");
         pk.pack_uint64(70);
       },
       "field 'model' must be a string"},
      {"register protocol a string", "register", 3,
       [&](wire::Packer& pk) {
         instance(pk);
         ns(pk);
         wire::PackStr(pk, "protocol");
         wire::PackStr(pk, "2");
       },
       "field 'protocol' must be"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string body = RequestBody(17, c.op, c.n, c.fields);
    Decoded d;
    ASSERT_TRUE(DecodeBody(body, "request", d).ok());
    RequestHead head;
    ASSERT_TRUE(DecodeRequestHead(d.map, &head).ok());
    ASSERT_TRUE(head.op.has_value());
    DecodeScratch scratch;
    Status s;
    switch (*head.op) {
      case Op::kRegister: {
        RegisterRequest r;
        s = Unpack(d.map, r);
        break;
      }
      case Op::kPrepareStore: {
        PrepareStoreRequest r;
        s = Unpack(d.map, r, scratch);
        break;
      }
      case Op::kLookup: {
        LookupRequest r;
        s = Unpack(d.map, r, scratch);
        break;
      }
      case Op::kCommitStore: {
        CommitStoreRequest r;
        s = UnpackKeys(d.map, r, scratch);
        break;
      }
      case Op::kRemove: {
        RemoveRequest r;
        s = UnpackKeys(d.map, r, scratch);
        break;
      }
      default: FAIL() << "no case for " << c.op;
    }
    EXPECT_TRUE(FailsWith(s, StatusCode::kProtocol, c.part));
  }
}

// ---- malformed frames: limits and bytes ---------------------------------------------------------

TEST(MalformedFrame, BytesAfterTheValueAreAProtocolError) {
  std::string body = RequestBody(1, "stats", 0, nullptr);
  body += "\x01\x02";
  Decoded d;
  EXPECT_TRUE(
      FailsWith(DecodeBody(body, "request", d), StatusCode::kProtocol, "2 bytes follow the request's msgpack value"));
  // Two whole messages in one frame are the same error.
  const std::string two = RequestBody(1, "stats", 0, nullptr) + RequestBody(2, "stats", 0, nullptr);
  Decoded d2;
  EXPECT_TRUE(FailsWith(DecodeBody(two, "request", d2), StatusCode::kProtocol, "follow the request's"));
}

TEST(MalformedFrame, InvalidMsgpackIsAProtocolError) {
  const std::vector<std::pair<std::string, std::string>> bodies = {
      {"reserved byte 0xc1", std::string("\xc1", 1)},
      {"empty", std::string()},
      {"map promising 2 fields, holding 1", Unhex("82a269640a")},
      {"str cut short", Unhex("81a26964a56f70")},
  };
  for (const auto& [what, body] : bodies) {
    Decoded d;
    const Status s = DecodeBody(body, "request", d);
    EXPECT_EQ(s.code(), StatusCode::kProtocol) << what << ": " << s.ToString();
    EXPECT_NE(s.message().find("request"), npos) << what << ": " << s.ToString();
  }
  Decoded d;
  EXPECT_TRUE(
      FailsWith(DecodeBody(std::string("\xc1", 1), "reply", d), StatusCode::kProtocol, "reply is not valid msgpack"));
}

TEST(MalformedFrame, AnArrayOfMoreThan65536ElementsIsRefusedNamingTheLimit) {
  std::vector<std::string> keys;
  for (uint32_t i = 0; i <= wire::kMaxBatchKeys; ++i) keys.push_back(fmt::format("{:x}", i));
  const std::vector<std::string_view> views = Views(keys);
  wire::FrameBuffer frame;
  Decoded d;
  EXPECT_TRUE(FailsWith(DecodeFrame(EncodeRequest(frame, 1, RemoveRequest{views}), "request", d), StatusCode::kProtocol,
                        "arrays of at most 65536 elements"));
}

Status DecodeMapOfFields(uint32_t fields, uint32_t max_map_fields = wire::kMaxMapFields) {
  const std::string body = RequestBody(1, "stats", fields - 2, [&](wire::Packer& pk) {
    for (uint32_t i = 2; i < fields; ++i) {
      wire::PackStr(pk, fmt::format("f{}", i));
      pk.pack_uint64(i);
    }
  });
  Decoded d;
  return DecodeBody(body, "request", d, max_map_fields);
}

TEST(MalformedFrame, AMapOfMoreThan64FieldsIsRefusedNamingTheLimit) {
  EXPECT_TRUE(DecodeMapOfFields(64).ok());
  EXPECT_TRUE(FailsWith(DecodeMapOfFields(65), StatusCode::kProtocol, "maps of at most 64 fields"));
  EXPECT_TRUE(DecodeMapOfFields(65, /*max_map_fields=*/4096).ok());
}

// A request map whose "deep" field nests `levels - 1` arrays: `levels` containers in all.
Status DecodeNesting(uint32_t levels) {
  const std::string body = RequestBody(1, "stats", 1, [&](wire::Packer& pk) {
    wire::PackStr(pk, "deep");
    for (uint32_t i = 1; i < levels - 1; ++i) pk.pack_array(1);
    pk.pack_array(0);
  });
  Decoded d;
  return DecodeBody(body, "request", d);
}

TEST(MalformedFrame, NestingDeeperThan8LevelsIsRefusedNamingTheLimit) {
  EXPECT_TRUE(DecodeNesting(8).ok());
  EXPECT_TRUE(FailsWith(DecodeNesting(9), StatusCode::kProtocol, "nesting of at most 8 levels"));
  EXPECT_TRUE(FailsWith(DecodeNesting(100), StatusCode::kProtocol, "nesting of at most 8 levels"));
}

// A container may not declare more elements than its frame has bytes: refused before the
// unpacker reserves memory for them.
TEST(MalformedFrame, AContainerDeclaringMoreElementsThanTheFrameHoldsIsRefused) {
  for (const std::string& body : {Unhex("dd00010000"),           // array32 of 65536 elements, 5-byte frame
                                  Unhex("df00000020a1610a")}) {  // map32 of 32 fields, 8-byte frame
    Decoded d;
    EXPECT_TRUE(FailsWith(DecodeBody(body, "request", d), StatusCode::kProtocol, "exceeds a protocol limit"))
        << Hex(body);
  }
}

// ---- malformed replies --------------------------------------------------------------------------

std::string OkReplyBody(uint32_t n_fields, const std::function<void(wire::Packer&)>& fields) {
  return Msgpack([&](wire::Packer& pk) {
    pk.pack_map(2 + n_fields);
    wire::PackStr(pk, "id");
    pk.pack_uint64(1);
    wire::PackStr(pk, "ok");
    pk.pack_true();
    fields(pk);
  });
}

// A slot status this version does not know (a newer server's) grants nothing.
TEST(MalformedReply, AnUnknownSlotStatusReadsAsMissing) {
  const std::string body = OkReplyBody(1, [](wire::Packer& pk) {
    wire::PackStr(pk, "slots");
    pk.pack_array(3);
    for (std::string_view status : {"teleported", "ok", "OK"}) {
      pk.pack_array(3);
      wire::PackStr(pk, status);
      pk.pack_uint64(8192);
      pk.pack_uint64(100);
    }
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "reply", d).ok());
  DecodeScratch scratch;
  SlotsReply out;
  ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
  ASSERT_EQ(out.slots.size(), 3u);
  EXPECT_EQ(out.slots[0].status, SlotStatus::kMissing);
  EXPECT_EQ(out.slots[1].status, SlotStatus::kOk);
  EXPECT_EQ(out.slots[2].status, SlotStatus::kMissing);  // names are case-sensitive
}

TEST(MalformedReply, SlotsThatAreNotStatusOffsetLengthTriples) {
  using Fields = std::function<void(wire::Packer&)>;
  const std::vector<std::pair<Fields, std::string_view>> cases = {
      {[](wire::Packer& pk) {
         wire::PackStr(pk, "slots");
         pk.pack_map(0);
       },
       "field 'slots' must be an array"},
      {[](wire::Packer& pk) {
         wire::PackStr(pk, "slots");
         pk.pack_array(2);
         pk.pack_array(3);
         wire::PackStr(pk, "ok");
         pk.pack_uint64(0);
         pk.pack_uint64(1);
         pk.pack_array(2);
         wire::PackStr(pk, "ok");
         pk.pack_uint64(0);
       },
       "slot #1 is not [status, offset, length]"},
      {[](wire::Packer& pk) {
         wire::PackStr(pk, "slots");
         pk.pack_array(1);
         pk.pack_array(3);
         wire::PackStr(pk, "ok");
         pk.pack_int64(-4096);
         pk.pack_uint64(1);
       },
       "slot #0 is not"},
      {[](wire::Packer& pk) {
         wire::PackStr(pk, "slots");
         pk.pack_array(1);
         pk.pack_array(3);
         pk.pack_uint64(0);
         pk.pack_uint64(0);
         pk.pack_uint64(1);
       },
       "slot #0 is not"},
  };
  for (const auto& [fields, part] : cases) {
    Decoded d;
    ASSERT_TRUE(DecodeBody(OkReplyBody(1, fields), "reply", d).ok());
    DecodeScratch scratch;
    SlotsReply out;
    EXPECT_TRUE(FailsWith(Unpack(d.map, out, scratch), StatusCode::kProtocol, part));
  }
  Decoded d;
  ASSERT_TRUE(DecodeBody(OkReplyBody(0, [](wire::Packer&) {}), "reply", d).ok());
  DecodeScratch scratch;
  SlotsReply out;
  EXPECT_TRUE(FailsWith(Unpack(d.map, out, scratch), StatusCode::kProtocol, "'slots'"));
}

TEST(MalformedReply, AnUnknownRemoveResultIsAProtocolErrorNamingItsIndex) {
  const std::string body = OkReplyBody(1, [](wire::Packer& pk) {
    wire::PackStr(pk, "results");
    pk.pack_array(2);
    wire::PackStr(pk, "removed");
    wire::PackStr(pk, "vanished");
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "reply", d).ok());
  DecodeScratch scratch;
  RemoveReply out;
  EXPECT_TRUE(FailsWith(Unpack(d.map, out, scratch), StatusCode::kProtocol, "remove result #1 is unknown"));
}

TEST(MalformedReply, RequiredReplyFieldsMissingOrMistyped) {
  DecodeScratch scratch;
  {
    // A register reply without generation (every field is required).
    const std::string body = OkReplyBody(6, [](wire::Packer& pk) {
      for (std::string_view f : {"session", "pool_size", "alignment", "protocol"}) {
        wire::PackStr(pk, f);
        pk.pack_uint64(1);
      }
      wire::PackStr(pk, "shm_name");
      wire::PackStr(pk, "p");
      wire::PackStr(pk, "server_version");
      wire::PackStr(pk, "v");
    });
    Decoded d;
    ASSERT_TRUE(DecodeBody(body, "reply", d).ok());
    RegisterReply out;
    const Status s = Unpack(d.map, out);
    EXPECT_TRUE(FailsWith(s, StatusCode::kProtocol, "'generation'"));
    EXPECT_TRUE(FailsWith(s, StatusCode::kProtocol, "register reply"));
  }
  {
    Decoded d;
    ASSERT_TRUE(DecodeBody(OkReplyBody(1,
                                       [](wire::Packer& pk) {
                                         wire::PackStr(pk, "stats");
                                         pk.pack_array(0);
                                       }),
                           "reply", d)
                    .ok());
    StatsReply out;
    EXPECT_TRUE(FailsWith(Unpack(d.map, out, scratch), StatusCode::kProtocol, "field 'stats' must be a map"));
  }
  Decoded empty;
  ASSERT_TRUE(DecodeBody(OkReplyBody(0, [](wire::Packer&) {}), "reply", empty).ok());
  HealthReply health;
  EXPECT_TRUE(FailsWith(Unpack(empty.map, health), StatusCode::kProtocol, "'status'"));
  ClearReply clear;
  EXPECT_TRUE(FailsWith(Unpack(empty.map, clear), StatusCode::kProtocol, "'removed'"));
  AbortStoreReply abort;
  EXPECT_TRUE(FailsWith(Unpack(empty.map, abort), StatusCode::kProtocol, "'aborted'"));
  LookupReply lookup;
  EXPECT_TRUE(FailsWith(Unpack(empty.map, lookup), StatusCode::kProtocol, "'count'"));
  RemoveReply remove;
  EXPECT_TRUE(FailsWith(Unpack(empty.map, remove, scratch), StatusCode::kProtocol, "'results'"));
  Decoded negative;
  ASSERT_TRUE(DecodeBody(OkReplyBody(1,
                                     [](wire::Packer& pk) {
                                       wire::PackStr(pk, "count");
                                       pk.pack_int64(-1);
                                     }),
                         "reply", negative)
                  .ok());
  EXPECT_TRUE(FailsWith(Unpack(negative.map, lookup), StatusCode::kProtocol, "field 'count' must be"));
}

// Newer servers may put other kinds of values into stats: skipped, not an error.
TEST(MalformedReply, StatsSkipsValuesOfKindsThisVersionDoesNotKnow) {
  const std::string body = OkReplyBody(1, [](wire::Packer& pk) {
    wire::PackStr(pk, "stats");
    pk.pack_map(4);
    wire::PackStr(pk, "objects");
    pk.pack_uint64(3);
    wire::PackStr(pk, "histogram");
    pk.pack_array(2);
    pk.pack_uint64(1);
    pk.pack_uint64(2);
    wire::PackStr(pk, "shm_name");
    wire::PackStr(pk, "lmcache_l1_pool_z");
    wire::PackStr(pk, "drift");
    pk.pack_int64(-5);
  });
  Decoded d;
  ASSERT_TRUE(DecodeBody(body, "reply", d).ok());
  DecodeScratch scratch;
  StatsReply out;
  ASSERT_TRUE(Unpack(d.map, out, scratch).ok());
  ASSERT_EQ(out.counters.size(), 1u);
  EXPECT_EQ(out.counters[0].first, "objects");
  EXPECT_EQ(out.counters[0].second, 3u);
  EXPECT_EQ(out.shm_name, "lmcache_l1_pool_z");
}

// ---- wire compatibility: bytes pinned -----------------------------------------------------------

// The bytes a version-1 client (before the typed messages) put on the wire: a map of exactly
// {"id", "op", ...the fields}, id and op first, keys as msgpack bin, integers in their shortest
// encoding, the map header packed with its count (a fixmap for these sizes).
std::string OlderClientFrame(uint64_t id, std::string_view op, uint32_t n_fields,
                             const std::function<void(wire::Packer&)>& fields) {
  const std::string body = RequestBody(id, op, n_fields, fields);
  std::string frame(4, '\0');
  wire::WriteLength(static_cast<uint32_t>(body.size()), reinterpret_cast<uint8_t*>(frame.data()));
  return frame + body;
}

// The typed encoder writes a map32 header (its count patched after the fields are packed) where
// older clients wrote a fixmap; everything after the header must be byte for byte the same, and
// both must decode to the same request.
void ExpectSameRequestAsOlderClients(std::string_view now, std::string_view older) {
  ASSERT_GE(older.size(), 5u);
  const uint8_t fixmap = static_cast<uint8_t>(older[4]);
  ASSERT_EQ(fixmap & 0xf0, 0x80) << "older client frame does not start with a fixmap";
  const uint32_t count = fixmap & 0x0f;
  ASSERT_EQ(now.size(), older.size() + 4);
  EXPECT_EQ(wire::ReadLength(reinterpret_cast<const uint8_t*>(now.data())), now.size() - 4);
  EXPECT_EQ(Hex(now.substr(4, 5)), fmt::format("df{:08x}", count));
  EXPECT_EQ(Hex(now.substr(9)), Hex(older.substr(5)));
  Decoded a, b;
  ASSERT_TRUE(DecodeFrame(now, "request", a).ok());
  ASSERT_TRUE(DecodeFrame(older, "request", b).ok());
  EXPECT_EQ(a.obj, b.obj);
}

TEST(WireGolden, V1LookupRequestBytes) {
  const std::string key("\x01\x02\x03", 3);
  const std::string_view keys[] = {key};
  wire::FrameBuffer frame;
  const std::string_view bytes = EncodeRequest(frame, 7, LookupRequest{keys, false});
  // {"id": 7, "op": "lookup", "keys": [bin 010203], "pin": false}
  EXPECT_EQ(Hex(bytes),
            "23000000"                // length 35, little-endian
            "df00000004"              // map32, 4 fields
            "a2696407"                // "id": 7
            "a26f70a66c6f6f6b7570"    // "op": "lookup"
            "a46b65797391c403010203"  // "keys": [bin 01 02 03]
            "a370696ec2");            // "pin": false
  const std::string older = OlderClientFrame(7, "lookup", 2, [&](wire::Packer& pk) {
    wire::PackStr(pk, "keys");
    pk.pack_array(1);
    wire::PackBin(pk, key);
    wire::PackStr(pk, "pin");
    pk.pack(false);
  });
  EXPECT_EQ(Hex(older), "1f00000084a2696407a26f70a66c6f6f6b7570a46b65797391c403010203a370696ec2");
  ExpectSameRequestAsOlderClients(bytes, older);
}

TEST(WireGolden, V1RequestsCarryTheFieldsOlderClientsSent) {
  const std::string k1(32, '\xab'), k2("\x00\x01", 2);
  const std::string_view keys[] = {k1, k2};
  const uint64_t sizes[] = {2097152, 1};
  wire::FrameBuffer frame;
  auto pack_keys = [&](wire::Packer& pk) {
    wire::PackStr(pk, "keys");
    pk.pack_array(2);
    for (std::string_view k : keys) wire::PackBin(pk, k);
  };
  ExpectSameRequestAsOlderClients(EncodeRequest(frame, 10, PrepareStoreRequest{keys, sizes}),
                                  OlderClientFrame(10, "prepare_store", 2, [&](wire::Packer& pk) {
                                    pack_keys(pk);
                                    wire::PackStr(pk, "sizes");
                                    pk.pack_array(2);
                                    for (uint64_t s : sizes) pk.pack_uint64(s);
                                  }));
  ExpectSameRequestAsOlderClients(EncodeRequest(frame, 11, CommitStoreRequest{keys}),
                                  OlderClientFrame(11, "commit_store", 1, pack_keys));
  ExpectSameRequestAsOlderClients(EncodeRequest(frame, 12, AbortStoreRequest{keys}),
                                  OlderClientFrame(12, "abort_store", 1, pack_keys));
  ExpectSameRequestAsOlderClients(EncodeRequest(frame, 13, PrepareRetrieveRequest{keys}),
                                  OlderClientFrame(13, "prepare_retrieve", 1, pack_keys));
  ExpectSameRequestAsOlderClients(EncodeRequest(frame, 14, CommitRetrieveRequest{keys}),
                                  OlderClientFrame(14, "commit_retrieve", 1, pack_keys));
  ExpectSameRequestAsOlderClients(EncodeRequest(frame, 15, RemoveRequest{keys}),
                                  OlderClientFrame(15, "remove", 1, pack_keys));
  ExpectSameRequestAsOlderClients(EncodeRequest(frame, 16, ClearRequest{}), OlderClientFrame(16, "clear", 0, nullptr));
  ExpectSameRequestAsOlderClients(EncodeRequest(frame, 1, StatsRequest{}), OlderClientFrame(1, "stats", 0, nullptr));
  ExpectSameRequestAsOlderClients(EncodeRequest(frame, 17, HealthRequest{}),
                                  OlderClientFrame(17, "health", 0, nullptr));
  // register as the C++ client sent it: every namespace field, world_size and rank included.
  RegisterRequest reg;
  reg.instance_id = "vllm-0";
  reg.client_version = "0.9.0";
  reg.protocol = 2;
  reg.ns = {"m", "bf16", "NHD", "", 2, 1};
  ExpectSameRequestAsOlderClients(EncodeRequest(frame, 1, reg),
                                  OlderClientFrame(1, "register", 4, [](wire::Packer& pk) {
                                    wire::PackStr(pk, "instance_id");
                                    wire::PackStr(pk, "vllm-0");
                                    wire::PackStr(pk, "client_version");
                                    wire::PackStr(pk, "0.9.0");
                                    wire::PackStr(pk, "protocol");
                                    pk.pack_uint32(2);
                                    wire::PackStr(pk, "namespace");
                                    pk.pack_map(6);
                                    wire::PackStr(pk, "model");
                                    wire::PackStr(pk, "m");
                                    wire::PackStr(pk, "world_size");
                                    pk.pack_uint32(2);
                                    wire::PackStr(pk, "rank");
                                    pk.pack_uint32(1);
                                    wire::PackStr(pk, "dtype");
                                    wire::PackStr(pk, "bf16");
                                    wire::PackStr(pk, "layout");
                                    wire::PackStr(pk, "NHD");
                                    wire::PackStr(pk, "salt");
                                    wire::PackStr(pk, "");
                                  }));
}

// Replies as the server wrote them before the typed messages: success replies with a map32
// header, error replies with a fixmap.
TEST(WireGolden, ReplyBytesAsOlderServersWroteThem) {
  const SlotResult slots[] = {{SlotStatus::kOk, 8388608, 2097152}, {SlotStatus::kExists, 0, 0}};
  wire::FrameBuffer frame;
  // {"id": 7, "ok": true, "slots": [["ok", 8388608, 2097152], ["exists", 0, 0]]}
  EXPECT_EQ(Hex(EncodeReply(frame, 7, SlotsReply{slots})),
            "2c000000"                      // length 44
            "df00000003"                    // map32, 3 fields
            "a2696407"                      // "id": 7
            "a26f6bc3"                      // "ok": true
            "a5736c6f747392"                // "slots": [2]
            "93a26f6bce00800000ce00200000"  // ["ok", 8388608, 2097152]
            "93a66578697374730000");        // ["exists", 0, 0]
  const uint32_t expired[] = {1};
  // {"id": 5, "ok": false, "error": {"code": "Expired", "message": "x", "expired": [1]}}
  EXPECT_EQ(Hex(EncodeError(frame, 5, {"Expired", "x", expired})),
            "31000000"                    // length 49
            "83a2696405a26f6bc2"          // {"id": 5, "ok": false,
            "a56572726f7283"              //  "error": {
            "a4636f6465a745787069726564"  //    "code": "Expired",
            "a76d657373616765a178"        //    "message": "x",
            "a7657870697265649101");      //    "expired": [1]}}
}

}  // namespace
}  // namespace shmkv::protocol
