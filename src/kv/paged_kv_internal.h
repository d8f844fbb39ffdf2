// Shared by the CPU and CUDA paged-KV paths: validation of a call and the block geometry it
// implies. Both paths validate with these functions, so they reject exactly the same inputs.
//
// Thread-safety: pure functions over their arguments.
#pragma once

#include <cstdint>
#include <span>

#include "shmkv/paged_kv.h"
#include "shmkv/status.h"

namespace shmkv::kv_internal {

// The sizes one transfer works in, derived from a validated geometry. A "unit" is one block of
// one layer of K or V (or of the MLA latent): the engine holds it as one contiguous run of
// block_bytes, the chunk object holds it at unit-in-chunk * block_bytes, where
// unit-in-chunk = (kv * layers + layer) * blocks_per_chunk + block-in-chunk.
struct BlockDims {
  uint32_t kv_count = 0;  // 2 (K and V) or 1 (MLA)
  uint32_t layers = 0;
  uint32_t block_size = 0;
  uint32_t heads = 0;
  uint32_t blocks_per_chunk = 0;
  uint64_t num_blocks = 0;
  uint64_t row_bytes = 0;    // one head of one token: head_size * element_size
  uint64_t block_bytes = 0;  // block_size * heads * row_bytes
  uint64_t chunk_bytes = 0;
  bool transpose = false;  // HND: the engine block is [heads][tokens], the chunk [tokens][heads]

  uint64_t units_per_chunk() const { return uint64_t{kv_count} * layers * blocks_per_chunk; }
  // Byte offset of (kv, block) in a layer tensor.
  uint64_t cache_offset(uint32_t kv, uint64_t block) const { return (kv * num_blocks + block) * block_bytes; }
};

BlockDims DimsOf(const KvGeometry& g);  // g must be valid

// Everything GatherChunks checks before it writes: on OK, every pointer the copy touches is
// in range. `op` prefixes the messages ("gather", "gather (cuda)").
Status ValidateGather(std::string_view op, const PagedKvCache& kv, std::span<const int64_t> block_ids,
                      std::span<const uint32_t> chunk_indices, std::span<const std::span<std::byte>> out);
Status ValidateScatter(std::string_view op, std::span<const std::span<const std::byte>> in, const PagedKvCache& kv,
                       std::span<const int64_t> block_ids, uint64_t skip_first_n_tokens);

// The strided counterparts: the cache's strides and extents are checked as well (every byte the
// view can touch for blocks [0, num_blocks) lies inside the layer's extent).
Status ValidateGatherStrided(std::string_view op, const StridedKvCache& kv, std::span<const int64_t> block_ids,
                             std::span<const uint32_t> chunk_indices, std::span<const std::span<std::byte>> out);
Status ValidateScatterStrided(std::string_view op, std::span<const std::span<const std::byte>> in,
                              const StridedKvCache& kv, std::span<const int64_t> block_ids,
                              uint64_t skip_first_n_tokens);

}  // namespace shmkv::kv_internal
