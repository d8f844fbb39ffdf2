// Chunk digests: the keys under which shmkv stores a token sequence's KV chunks (docs/design.md §3).
//
// A sequence is cut into chunks of `chunk_tokens` token ids. Chunk i's digest chains over every
// chunk before it, so equal digests mean equal prefixes:
//   d[-1] = SHA-256("shmkv.chunk-hash.v1" || namespace fields)                 (ChainRoot)
//   d[i]  = SHA-256(d[i-1] || token ids of chunk i as little-endian uint32)   (ChunkDigests)
// The encoding of the namespace fields and test vectors are in docs/chunk-hashing.md. The result
// depends on nothing but these bytes: it is the same in every process, host and run.
//
// Thread-safety: free functions without shared state; safe to call from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "shmkv/export.h"
#include "shmkv/status.h"
#include "shmkv/types.h"

namespace shmkv {

inline constexpr uint32_t kDefaultChunkTokens = 256;

using ChunkDigest = std::array<uint8_t, 32>;

// d[-1] of every chain in a deployment. It covers model, world_size, dtype, layout and salt but
// not the rank: all ranks of one deployment get the same digests for the same prompt, so a
// scheduler hashes a prompt once; the rank still separates keys through the key namespace.
SHMKV_EXPORT ChunkDigest ChainRoot(const Namespace& ns);

// The digests of the chunks of `tokens`: one per full chunk, plus one for a trailing partial
// chunk when include_partial is set. chunk_tokens must be positive.
SHMKV_EXPORT Result<std::vector<ChunkDigest>> ChunkDigests(const ChunkDigest& root, std::span<const uint32_t> tokens,
                                                           uint32_t chunk_tokens = kDefaultChunkTokens,
                                                           bool include_partial = false);

// Lower-case hex, 64 characters.
SHMKV_EXPORT std::string DigestHex(const ChunkDigest& digest);

}  // namespace shmkv
