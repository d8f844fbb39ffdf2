// The server's request path without sockets: frame -> decoded request -> KvService -> Store, through the
// RequestHandler seam every connection uses. An input is a sequence of steps, each
//   [control: 1 byte][length: 2 bytes, little-endian, clamped to what is left][request body]
// where the control byte picks one of two sessions (bit 0), lets every lease expire after the
// step (bit 1), or closes that session and opens a new one before it (bit 2). After every step
// each reply must be one well-formed frame holding a map with `id` and `ok`, and the Store's
// invariants must hold (index, allocator, leases, quarantine).
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "protocol/wire.h"
#include "server/kv_service.h"
#include "server/request_handler.h"
#include "server/store.h"

namespace {

using shmkv::RequestHandler;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "request_handler_fuzzer: %s\n", what);
    __builtin_trap();
  }
}

// Every reply appended to `out` is a frame whose body is a map with `id` and `ok`.
void CheckReplies(const std::string& out) {
  size_t pos = 0;
  msgpack::zone zone;
  while (pos < out.size()) {
    Check(out.size() - pos >= shmkv::wire::kHeaderBytes, "a reply is shorter than its header");
    const uint32_t len = shmkv::wire::ReadLength(reinterpret_cast<const uint8_t*>(out.data() + pos));
    Check(out.size() - pos - shmkv::wire::kHeaderBytes >= len, "a reply is shorter than its length says");
    const std::string_view body(out.data() + pos + shmkv::wire::kHeaderBytes, len);
    size_t used = 0;
    const msgpack::object obj = shmkv::wire::UnpackReferenced(zone, body, msgpack::unpack_limit(), &used);
    Check(used == body.size(), "a reply frame holds more than one value");
    auto reply = shmkv::wire::MapReader::From(obj);
    Check(reply.ok() && reply->U64("id").ok() && reply->Bool("ok").ok(), "a reply lacks id or ok");
    pos += shmkv::wire::kHeaderBytes + len;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  shmkv::StoreOptions options;
  options.pool_size = 64 * shmkv::kSlotAlignment;
  options.reserve_ttl = options.pin_ttl = std::chrono::seconds(1);
  auto store = shmkv::Store::Create(options);
  Check(store.ok(), "store");
  shmkv::KvService service(std::move(store).value(), {"lmcache_l1_pool_fuzz", options.pool_size, 1, ""});
  shmkv::Store* l1 = &service.l1();
  std::array<std::unique_ptr<RequestHandler>, 2> handlers;
  std::array<shmkv::SessionId, 2> sessions{1, 2};
  shmkv::SessionId next = 3;
  for (size_t i = 0; i < 2; ++i) {
    service.OpenSession(sessions[i]);
    handlers[i] = std::make_unique<RequestHandler>(service, sessions[i], nullptr);
  }
  auto now = shmkv::Clock::now();
  size_t pos = 0;
  std::string out;
  while (size - pos >= 3) {
    const uint8_t control = data[pos];
    const size_t len = std::min<size_t>(data[pos + 1] | size_t{data[pos + 2]} << 8, size - pos - 3);
    const std::string body(reinterpret_cast<const char*>(data + pos + 3), len);
    pos += 3 + len;
    const size_t who = control & 1;
    if ((control & 4) != 0) {
      // The process behind the session may live on or not: both ends of a quarantine.
      if (service.CloseSession(sessions[who], (control & 8) != 0)) service.ReleaseOrphans(sessions[who]);
      sessions[who] = next++;
      service.OpenSession(sessions[who]);
      handlers[who] = std::make_unique<RequestHandler>(service, sessions[who], nullptr);
    }
    if (body.empty()) continue;  // the server never hands over an empty frame
    out.clear();
    const bool deferred = handlers[who]->Handle(body, out);
    Check(!deferred, "a request was deferred without a tier");
    Check(!out.empty(), "a request got no reply");
    CheckReplies(out);
    if ((control & 2) != 0) {
      now += std::chrono::hours(1);
      service.ExpireLeases(now);
    }
    const shmkv::Status invariants = l1->CheckInvariants();
    Check(invariants.ok(), invariants.ToString().c_str());
  }
  for (shmkv::SessionId s : sessions) service.CloseSession(s, false);
  Check(l1->CheckInvariants().ok(), "invariants after every session closed");
  const shmkv::StoreStats st = l1->stats();
  Check(st.reserved_objects == 0 && st.pinned_objects == 0 && st.quarantined_slots == 0,
        "a closed session left a reservation, a pin or a quarantined slot");
  return 0;
}
