// Paged-KV transfer: copies between an inference engine's paged KV cache and shmkv chunk objects.
//
// An engine keeps its KV cache per layer in fixed-size token blocks; shmkv stores fixed-size token
// chunks. A chunk of `chunk_tokens` tokens spans `chunk_tokens / block_size` blocks, named by the
// flat `block_ids` list of the sequence: chunk c uses block_ids[c * bpc, (c + 1) * bpc).
//
// Engine layouts, one tensor per layer (contiguous, row-major):
//   NHD: [2, num_blocks, block_size, num_kv_heads, head_size]   (vLLM flash-attention)
//   HND: [2, num_blocks, num_kv_heads, block_size, head_size]   (FlashInfer)
//   MLA: [num_blocks, block_size, head_dim]                     (num_kv_heads == 1, head_size == head_dim)
// Chunk object layout, contiguous in its slot:
//   NHD/HND: [2, num_layers, chunk_tokens, num_kv_heads * head_size]
//   MLA:     [num_layers, chunk_tokens, head_dim]
//
// Every function validates all of its input before it writes a byte: on error nothing is written.
// Thread-safety: the functions are reentrant; concurrent calls must not write the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "shmkv/export.h"
#include "shmkv/status.h"

namespace shmkv {

enum class KvLayout : uint8_t { kNHD, kHND, kMLA };

SHMKV_EXPORT std::string_view KvLayoutName(KvLayout layout);         // "NHD", "HND", "MLA"
SHMKV_EXPORT Result<KvLayout> ParseKvLayout(std::string_view name);  // case-insensitive; error names the input

struct SHMKV_EXPORT KvGeometry {
  KvLayout layout = KvLayout::kNHD;
  uint32_t num_layers = 0;    // layer tensors in the cache
  uint64_t num_blocks = 0;    // blocks in each layer tensor
  uint32_t block_size = 0;    // tokens per block
  uint32_t num_kv_heads = 0;  // KV heads per token; 1 for MLA
  uint32_t head_size = 0;     // elements per head; head_dim for MLA
  uint32_t element_size = 0;  // bytes per element: 1 (fp8/int8), 2 (fp16/bf16) or 4 (fp32)
  uint32_t chunk_tokens = 0;  // tokens per chunk object; a positive multiple of block_size

  // Every field in range, chunk_tokens a multiple of block_size, sizes free of overflow.
  Status Validate() const;
  uint32_t blocks_per_chunk() const { return block_size == 0 ? 0 : chunk_tokens / block_size; }
  // Bytes of one layer tensor of the engine cache.
  uint64_t layer_bytes() const;
  // Bytes of one chunk object.
  uint64_t chunk_bytes() const;
};

// A view of an engine's paged KV cache: one base pointer per layer, each to layer_bytes() bytes.
// Does not own the memory.
struct PagedKvCache {
  KvGeometry geometry;
  std::vector<std::byte*> layers;  // exactly geometry.num_layers, none null
};

struct TransferOptions {
  // Threads for one call: 0 picks automatically (one thread for small transfers, up to the
  // machine's cores for large ones); 1 forces the calling thread only.
  unsigned threads = 0;
};

// Copies chunk chunk_indices[i] of the sequence into out[i], for every i. Each out[i] must be
// exactly chunk_bytes() long; block_ids must cover the largest chunk index named; every block id
// must be in [0, num_blocks). chunk_indices.size() must equal out.size().
SHMKV_EXPORT Status GatherChunks(const PagedKvCache& kv, std::span<const int64_t> block_ids,
                                 std::span<const uint32_t> chunk_indices, std::span<const std::span<std::byte>> out,
                                 const TransferOptions& options = {});

// Copies in[i], chunk i of the sequence (i = 0 .. in.size() - 1), back into the paged cache.
// Tokens before skip_first_n_tokens are not written: skip_first_n_tokens must be a multiple of
// block_size, and the blocks it covers stay untouched. Each in[i] must be exactly chunk_bytes()
// long; block_ids must hold at least in.size() * blocks_per_chunk() ids, each in range.
SHMKV_EXPORT Status ScatterChunks(std::span<const std::span<const std::byte>> in, const PagedKvCache& kv,
                                  std::span<const int64_t> block_ids, uint64_t skip_first_n_tokens,
                                  const TransferOptions& options = {});

// The same two operations for a cache in CUDA device memory, as kernels on `stream` (a
// cudaStream_t; nullptr is the default stream). The chunk buffers are host memory the device can
// address (the pool registered with cudaHostRegister), so the kernels write into the slots
// directly. The copies are asynchronous: synchronize the stream before commit_store (after a
// gather) and before commit_retrieve (after a scatter). Validation is the same as above and
// happens on the host before any launch. Builds without SHMKV_CUDA, and machines without a CUDA
// device, return kUnavailable.
SHMKV_EXPORT Status GatherChunksCuda(const PagedKvCache& kv, std::span<const int64_t> block_ids,
                                     std::span<const uint32_t> chunk_indices, std::span<const std::span<std::byte>> out,
                                     void* stream);
SHMKV_EXPORT Status ScatterChunksCuda(std::span<const std::span<const std::byte>> in, const PagedKvCache& kv,
                                      std::span<const int64_t> block_ids, uint64_t skip_first_n_tokens, void* stream);
// Whether this build carries the CUDA kernels (SHMKV_CUDA) — not whether a device is present.
SHMKV_EXPORT bool PagedKvCudaCompiled();

}  // namespace shmkv
