#include "shmkv/chunk_hash.h"

#include <openssl/evp.h>

#include <bit>
#include <memory>
#include <string_view>

#include <fmt/format.h>

namespace shmkv {
namespace {

constexpr std::string_view kChainDomain = "shmkv.chunk-hash.v1";

struct MdCtxFree {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

// SHA-256 over a few byte ranges. OpenSSL fails here only on allocation failure, which the
// library does not try to survive.
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_) throw std::bad_alloc();
  }
  void Begin() { EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr); }
  void Add(const void* data, size_t size) { EVP_DigestUpdate(ctx_.get(), data, size); }
  void AddU32(uint32_t v) {
    uint8_t le[4] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v >> 16),
                     static_cast<uint8_t>(v >> 24)};
    Add(le, sizeof le);
  }
  void AddField(std::string_view s) {
    AddU32(static_cast<uint32_t>(s.size()));
    Add(s.data(), s.size());
  }
  ChunkDigest Finish() {
    ChunkDigest d{};
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx_.get(), d.data(), &len);
    return d;
  }

 private:
  MdCtx ctx_;
};

}  // namespace

ChunkDigest ChainRoot(const Namespace& ns) {
  Sha256 h;
  h.Begin();
  h.Add(kChainDomain.data(), kChainDomain.size());
  h.AddField(ns.model);
  h.AddU32(ns.world_size);
  h.AddField(ns.dtype);
  h.AddField(ns.layout);
  h.AddField(ns.salt);
  return h.Finish();
}

Result<std::vector<ChunkDigest>> ChunkDigests(const ChunkDigest& root, std::span<const uint32_t> tokens,
                                              uint32_t chunk_tokens, bool include_partial) {
  if (chunk_tokens == 0) return Status::InvalidArgument("chunk_tokens must be positive, got 0");
  size_t count = tokens.size() / chunk_tokens;
  if (include_partial && tokens.size() % chunk_tokens != 0) ++count;
  std::vector<ChunkDigest> out;
  out.reserve(count);
  Sha256 h;
  const ChunkDigest* prev = &root;
  std::vector<uint32_t> swapped;  // only on big-endian hosts
  for (size_t i = 0; i < count; ++i) {
    std::span<const uint32_t> chunk = tokens.subspan(i * chunk_tokens);
    if (chunk.size() > chunk_tokens) chunk = chunk.first(chunk_tokens);
    h.Begin();
    h.Add(prev->data(), prev->size());
    if constexpr (std::endian::native == std::endian::little) {
      h.Add(chunk.data(), chunk.size_bytes());
    } else {
      swapped.assign(chunk.begin(), chunk.end());
      for (uint32_t& t : swapped) t = __builtin_bswap32(t);
      h.Add(swapped.data(), swapped.size() * sizeof(uint32_t));
    }
    out.push_back(h.Finish());
    prev = &out.back();
  }
  return out;
}

std::string DigestHex(const ChunkDigest& digest) {
  std::string s;
  s.reserve(2 * digest.size());
  for (uint8_t b : digest) fmt::format_to(std::back_inserter(s), "{:02x}", b);
  return s;
}

}  // namespace shmkv
