// Uses only the installed headers and libshmkv-client: chunk digests, Status, sizes, the paged-KV
// layout parser, and a client connect that must fail cleanly (no server is started). Exits 0 and
// prints "consumer ok" when every check holds; otherwise names the first that does not.
#include <shmkv/chunk_hash.h>
#include <shmkv/client.h>
#include <shmkv/paged_kv.h>
#include <shmkv/size.h>
#include <shmkv/status.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

namespace {

int failures = 0;

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "consumer: FAILED: %s\n", what.c_str());
    ++failures;
  }
}

}  // namespace

int main() {
  shmkv::Namespace ns;
  ns.model = "consumer-model";
  ns.dtype = "bfloat16";
  ns.layout = "NHD";
  const shmkv::ChunkDigest root = shmkv::ChainRoot(ns);
  std::vector<uint32_t> tokens(600);
  std::iota(tokens.begin(), tokens.end(), 0u);

  auto digests = shmkv::ChunkDigests(root, tokens, 256);
  Check(digests.ok(), "ChunkDigests of 600 tokens: " + digests.status().ToString());
  if (digests.ok()) {
    Check(digests->size() == 2, "two full chunks of 256 tokens");
    Check(shmkv::DigestHex(digests->front()).size() == 64, "a digest is 64 hex digits");
    Check(digests->at(0) != digests->at(1), "chained digests differ");
  }
  auto bad = shmkv::ChunkDigests(root, tokens, 0);
  Check(!bad.ok() && bad.status().code() == shmkv::StatusCode::kInvalidArgument,
        "chunk_tokens 0 is an invalid argument: " + bad.status().ToString());

  const shmkv::Status missing = shmkv::Status::FromErrno("open x", ENOENT);
  Check(missing.code() == shmkv::StatusCode::kNotFound && missing.sys_errno() == ENOENT, "FromErrno(ENOENT)");
  Check(std::string(shmkv::StatusCodeName(shmkv::StatusCode::kBusy)).size() > 0, "StatusCodeName");

  auto size = shmkv::ParseSize("2GiB");
  Check(size.ok() && *size == (2ULL << 30), "ParseSize(2GiB)");
  Check(shmkv::ParseKvLayout("hnd").ok(), "ParseKvLayout(hnd)");

  shmkv::ClientOptions options;
  options.socket_path = "/nonexistent-shmkv-consumer/shmkv.sock";
  options.timeout = std::chrono::milliseconds(500);
  auto client = shmkv::Client::Connect(options);
  Check(!client.ok() && !client.status().message().empty(), "Connect to a missing socket fails with a message");

  if (failures != 0) return 1;
  std::printf("consumer ok\n");
  return 0;
}
