// CPU implementation of the paged-KV transfer (include/shmkv/paged_kv.h).
//
// NHD and MLA blocks are contiguous in both the engine tensor and the chunk object, so each unit
// (one block of one layer of K or V) is one memcpy of block_bytes. HND blocks are [heads][tokens]
// in the engine and [tokens][heads] in the chunk: each unit is a transpose of head_size-element
// rows. Large transfers are split into contiguous ranges of units over the worker pool; every
// unit writes its own bytes, so the threads never write the same byte. Strided caches (any view
// by byte strides) are walked by a per-call plan of runs and loops; see PlanOf below and
// docs/paged-kv.md.
#include "shmkv/paged_kv.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <string>
#include <thread>

#include <fmt/format.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "kv/paged_kv_internal.h"
#include "kv/paged_kv_pool.h"

namespace shmkv {

std::string_view KvLayoutName(KvLayout layout) {
  switch (layout) {
    case KvLayout::kNHD: return "NHD";
    case KvLayout::kHND: return "HND";
    case KvLayout::kMLA: return "MLA";
  }
  return "unknown";
}

Result<KvLayout> ParseKvLayout(std::string_view name) {
  std::string upper(name);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (KvLayout l : {KvLayout::kNHD, KvLayout::kHND, KvLayout::kMLA}) {
    if (upper == KvLayoutName(l)) return l;
  }
  return Status::InvalidArgument(fmt::format("unknown KV layout '{}'; expected NHD, HND or MLA", name));
}

namespace {

// a * b * c ... into *out; false on overflow of uint64.
bool CheckedProduct(std::initializer_list<uint64_t> factors, uint64_t* out) {
  uint64_t p = 1;
  for (uint64_t f : factors) {
    if (__builtin_mul_overflow(p, f, &p)) return false;
  }
  *out = p;
  return true;
}

uint32_t KvCount(KvLayout layout) {
  return layout == KvLayout::kMLA ? 1 : 2;
}

}  // namespace

Status KvGeometry::Validate() const {
  if (layout != KvLayout::kNHD && layout != KvLayout::kHND && layout != KvLayout::kMLA) {
    return Status::InvalidArgument(
        fmt::format("KV geometry: layout {} is not NHD, HND or MLA", static_cast<int>(layout)));
  }
  auto positive = [](std::string_view field, uint64_t v) {
    return v == 0 ? Status::InvalidArgument(fmt::format("KV geometry: {} is 0; it must be positive", field))
                  : Status::Ok();
  };
  SHMKV_RETURN_IF_ERROR(positive("num_layers", num_layers));
  SHMKV_RETURN_IF_ERROR(positive("num_blocks", num_blocks));
  SHMKV_RETURN_IF_ERROR(positive("block_size", block_size));
  SHMKV_RETURN_IF_ERROR(positive("num_kv_heads", num_kv_heads));
  SHMKV_RETURN_IF_ERROR(positive("head_size", head_size));
  SHMKV_RETURN_IF_ERROR(positive("chunk_tokens", chunk_tokens));
  if (layout == KvLayout::kMLA && num_kv_heads != 1) {
    return Status::InvalidArgument(fmt::format(
        "KV geometry: num_kv_heads is {}; the MLA layout has exactly 1 (head_size is head_dim)", num_kv_heads));
  }
  if (element_size != 1 && element_size != 2 && element_size != 4) {
    return Status::InvalidArgument(fmt::format("KV geometry: element_size is {}; it must be 1, 2 or 4", element_size));
  }
  if (chunk_tokens % block_size != 0) {
    return Status::InvalidArgument(
        fmt::format("KV geometry: chunk_tokens {} is not a multiple of block_size {}", chunk_tokens, block_size));
  }
  if (layer_bytes() == 0) {
    return Status::InvalidArgument(fmt::format(
        "KV geometry: a layer tensor of {} blocks x {} tokens x {} heads x {} elements x {} bytes overflows 64 bits",
        num_blocks, block_size, num_kv_heads, head_size, element_size));
  }
  if (chunk_bytes() == 0) {
    return Status::InvalidArgument(fmt::format(
        "KV geometry: a chunk of {} layers x {} tokens x {} heads x {} elements x {} bytes overflows 64 bits",
        num_layers, chunk_tokens, num_kv_heads, head_size, element_size));
  }
  return Status::Ok();
}

// 0 when a field is 0 or the product overflows (Validate reports which).
uint64_t KvGeometry::layer_bytes() const {
  uint64_t bytes = 0;
  if (!CheckedProduct({KvCount(layout), num_blocks, block_size, num_kv_heads, head_size, element_size}, &bytes)) {
    return 0;
  }
  return bytes;
}

uint64_t KvGeometry::chunk_bytes() const {
  uint64_t bytes = 0;
  if (!CheckedProduct({KvCount(layout), num_layers, chunk_tokens, num_kv_heads, head_size, element_size}, &bytes)) {
    return 0;
  }
  return bytes;
}

namespace kv_internal {

BlockDims DimsOf(const KvGeometry& g) {
  BlockDims d;
  d.kv_count = KvCount(g.layout);
  d.layers = g.num_layers;
  d.block_size = g.block_size;
  d.heads = g.num_kv_heads;
  d.blocks_per_chunk = g.blocks_per_chunk();
  d.num_blocks = g.num_blocks;
  d.row_bytes = uint64_t{g.head_size} * g.element_size;
  d.block_bytes = d.row_bytes * g.num_kv_heads * g.block_size;
  d.chunk_bytes = g.chunk_bytes();
  d.transpose = g.layout == KvLayout::kHND;
  return d;
}

namespace {

Status ValidateCache(std::string_view op, const PagedKvCache& kv) {
  if (Status s = kv.geometry.Validate(); !s.ok()) return s.WithContext(op);
  if (kv.layers.size() != kv.geometry.num_layers) {
    return Status::InvalidArgument(fmt::format("{}: {} layer pointers for a geometry of num_layers {}", op,
                                               kv.layers.size(), kv.geometry.num_layers));
  }
  for (size_t l = 0; l < kv.layers.size(); ++l) {
    if (kv.layers[l] == nullptr) return Status::InvalidArgument(fmt::format("{}: layer {} pointer is null", op, l));
  }
  return Status::Ok();
}

// block_ids[0, needed) must exist and each lie in [0, num_blocks).
Status ValidateBlockIds(std::string_view op, std::span<const int64_t> block_ids, uint64_t needed, std::string_view why,
                        uint64_t num_blocks) {
  if (block_ids.size() < needed) {
    return Status::InvalidArgument(
        fmt::format("{}: only {} block ids, {} needed for {}", op, block_ids.size(), needed, why));
  }
  for (uint64_t i = 0; i < needed; ++i) {
    if (block_ids[i] < 0 || static_cast<uint64_t>(block_ids[i]) >= num_blocks) {
      return Status::InvalidArgument(
          fmt::format("{}: block_ids[{}] = {} is out of range [0, {})", op, i, block_ids[i], num_blocks));
    }
  }
  return Status::Ok();
}

template <typename Byte>
Status ValidateBuffers(std::string_view op, std::string_view name, std::span<const std::span<Byte>> bufs,
                       uint64_t chunk_bytes) {
  for (size_t i = 0; i < bufs.size(); ++i) {
    if (bufs[i].size() != chunk_bytes) {
      return Status::InvalidArgument(fmt::format("{}: {}[{}] is {} bytes; a chunk object of this geometry is {}", op,
                                                 name, i, bufs[i].size(), chunk_bytes));
    }
    if (bufs[i].data() == nullptr) return Status::InvalidArgument(fmt::format("{}: {}[{}] is null", op, name, i));
  }
  return Status::Ok();
}

}  // namespace

namespace {

Status ValidateGatherArgs(std::string_view op, const KvGeometry& g, std::span<const int64_t> block_ids,
                          std::span<const uint32_t> chunk_indices, std::span<const std::span<std::byte>> out) {
  if (chunk_indices.size() != out.size()) {
    return Status::InvalidArgument(fmt::format("{}: {} chunk indices for {} output buffers; give one index per buffer",
                                               op, chunk_indices.size(), out.size()));
  }
  SHMKV_RETURN_IF_ERROR(ValidateBuffers(op, "out", out, g.chunk_bytes()));
  if (chunk_indices.empty()) return Status::Ok();
  const uint32_t max_index = *std::max_element(chunk_indices.begin(), chunk_indices.end());
  const uint64_t needed = (uint64_t{max_index} + 1) * g.blocks_per_chunk();
  return ValidateBlockIds(op, block_ids, needed, fmt::format("chunk index {}", max_index), g.num_blocks);
}

Status ValidateScatterArgs(std::string_view op, std::span<const std::span<const std::byte>> in, const KvGeometry& g,
                           std::span<const int64_t> block_ids, uint64_t skip_first_n_tokens) {
  if (skip_first_n_tokens % g.block_size != 0) {
    return Status::InvalidArgument(fmt::format("{}: skip_first_n_tokens {} is not a multiple of block_size {}", op,
                                               skip_first_n_tokens, g.block_size));
  }
  SHMKV_RETURN_IF_ERROR(ValidateBuffers(op, "in", in, g.chunk_bytes()));
  const uint64_t needed = uint64_t{in.size()} * g.blocks_per_chunk();
  return ValidateBlockIds(op, block_ids, needed, fmt::format("{} chunks", in.size()), g.num_blocks);
}

// 128-bit arithmetic for address ranges: a stride times a count cannot overflow it.
__extension__ typedef __int128 Wide;

// The strided cache's pointers, extents and strides: every byte the view reaches for blocks
// [0, num_blocks) must lie inside the layer's extent.
Status ValidateStridedCache(std::string_view op, const StridedKvCache& kv) {
  const KvGeometry& g = kv.geometry;
  if (Status s = g.Validate(); !s.ok()) return s.WithContext(op);
  if (kv.layers.size() != g.num_layers || kv.extents.size() != g.num_layers) {
    return Status::InvalidArgument(fmt::format("{}: {} layer pointers and {} extents for a geometry of num_layers {}",
                                               op, kv.layers.size(), kv.extents.size(), g.num_layers));
  }
  const KvStrides& st = kv.strides;
  const std::pair<uint64_t, int64_t> dims[] = {{KvCount(g.layout), st.kv},
                                               {g.num_blocks, st.block},
                                               {g.block_size, st.token},
                                               {g.num_kv_heads, st.head},
                                               {g.head_size, st.element}};
  // Lowest and highest byte offset of the view, relative to the layer pointer.
  Wide lo = 0, hi = 0;
  for (const auto& [n, stride] : dims) {
    const Wide span = static_cast<Wide>(n - 1) * stride;
    (span < 0 ? lo : hi) += span;
  }
  hi += g.element_size;
  for (size_t l = 0; l < kv.layers.size(); ++l) {
    if (kv.layers[l] == nullptr) return Status::InvalidArgument(fmt::format("{}: layer {} pointer is null", op, l));
    const auto base = static_cast<Wide>(reinterpret_cast<uintptr_t>(kv.layers[l]));
    const auto begin = static_cast<Wide>(reinterpret_cast<uintptr_t>(kv.extents[l].data()));
    const auto end = begin + static_cast<Wide>(kv.extents[l].size());
    if (kv.extents[l].data() == nullptr || base + lo < begin || base + hi > end) {
      return Status::InvalidArgument(fmt::format(
          "{}: layer {}: the view (strides kv {}, block {}, token {}, head {}, element {} bytes over {} blocks) "
          "reaches bytes [{}, {}) of its pointer, outside its extent of {} bytes starting {} bytes before it",
          op, l, st.kv, st.block, st.token, st.head, st.element, g.num_blocks, static_cast<int64_t>(lo),
          static_cast<int64_t>(hi), kv.extents[l].size(), static_cast<int64_t>(base - begin)));
    }
  }
  return Status::Ok();
}

}  // namespace

Status ValidateGather(std::string_view op, const PagedKvCache& kv, std::span<const int64_t> block_ids,
                      std::span<const uint32_t> chunk_indices, std::span<const std::span<std::byte>> out) {
  SHMKV_RETURN_IF_ERROR(ValidateCache(op, kv));
  return ValidateGatherArgs(op, kv.geometry, block_ids, chunk_indices, out);
}

Status ValidateGatherStrided(std::string_view op, const StridedKvCache& kv, std::span<const int64_t> block_ids,
                             std::span<const uint32_t> chunk_indices, std::span<const std::span<std::byte>> out) {
  SHMKV_RETURN_IF_ERROR(ValidateStridedCache(op, kv));
  return ValidateGatherArgs(op, kv.geometry, block_ids, chunk_indices, out);
}

Status ValidateScatterStrided(std::string_view op, std::span<const std::span<const std::byte>> in,
                              const StridedKvCache& kv, std::span<const int64_t> block_ids,
                              uint64_t skip_first_n_tokens) {
  SHMKV_RETURN_IF_ERROR(ValidateStridedCache(op, kv));
  return ValidateScatterArgs(op, in, kv.geometry, block_ids, skip_first_n_tokens);
}

Status ValidateScatter(std::string_view op, std::span<const std::span<const std::byte>> in, const PagedKvCache& kv,
                       std::span<const int64_t> block_ids, uint64_t skip_first_n_tokens) {
  SHMKV_RETURN_IF_ERROR(ValidateCache(op, kv));
  return ValidateScatterArgs(op, in, kv.geometry, block_ids, skip_first_n_tokens);
}

}  // namespace kv_internal

namespace {

using kv_internal::BlockDims;

// Bytes per thread below which another thread costs more than it saves.
constexpr uint64_t kBytesPerThread = uint64_t{1} << 20;
constexpr uint64_t kRangeBytes = uint64_t{256} << 10;
constexpr uint64_t kAutoMaxThreads = 8;

unsigned PickThreads(const TransferOptions& options, uint64_t bytes, uint64_t units) {
  unsigned threads = options.threads;
  if (threads == 0) {
    // The copy is memory-bound: a few cores saturate the memory bus, and the engine's own threads
    // (and the other ranks' workers) need the rest. So at most half the cores, at most 8; on the
    // 2-core development machine that is one thread, which measured faster than two there
    // (docs/performance-kv.md).
    const uint64_t half = std::max(1u, std::thread::hardware_concurrency() / 2);
    threads = static_cast<unsigned>(std::min<uint64_t>({half, bytes / kBytesPerThread, kAutoMaxThreads}));
  }
  return static_cast<unsigned>(
      std::clamp<uint64_t>(std::min<uint64_t>(threads, units), 1, kv_internal::WorkerPool::kMaxThreads));
}

// Copies one row of `row` bytes; a compile-time size (kRow != 0) lets the compiler inline it.
template <size_t kRow>
inline void CopyRow(std::byte* dst, const std::byte* src, size_t row) {
  if constexpr (kRow == 0) {
    std::memcpy(dst, src, row);
  } else {
    std::memcpy(dst, src, kRow);
  }
}

// One HND block: the engine holds [heads][block_size] rows, the chunk [block_size][heads].
template <size_t kRow, bool kToChunk>
void TransposeBlock(std::byte* dst, const std::byte* src, const BlockDims& d) {
  const size_t row = d.row_bytes;
  for (uint32_t t = 0; t < d.block_size; ++t) {
    for (uint32_t h = 0; h < d.heads; ++h) {
      const size_t chunk_row = (size_t{t} * d.heads + h) * row;
      const size_t cache_row = (size_t{h} * d.block_size + t) * row;
      if constexpr (kToChunk) {
        CopyRow<kRow>(dst + chunk_row, src + cache_row, row);
      } else {
        CopyRow<kRow>(dst + cache_row, src + chunk_row, row);
      }
    }
  }
}

template <bool kToChunk>
void CopyUnit(std::byte* dst, const std::byte* src, const BlockDims& d) {
  if (!d.transpose) {
    std::memcpy(dst, src, d.block_bytes);
    return;
  }
  switch (d.row_bytes) {
    case 64: return TransposeBlock<64, kToChunk>(dst, src, d);
    case 128: return TransposeBlock<128, kToChunk>(dst, src, d);
    case 256: return TransposeBlock<256, kToChunk>(dst, src, d);
    case 512: return TransposeBlock<512, kToChunk>(dst, src, d);
    case 1024: return TransposeBlock<1024, kToChunk>(dst, src, d);
    default: return TransposeBlock<0, kToChunk>(dst, src, d);
  }
}

// Touches the first kPrefetchBytes of the next unit's cache block while the current one copies:
// the blocks lie scattered over the cache, and the hardware prefetcher only picks up a new stream
// after several misses (measured: a gather of shuffled blocks ran at ~0.65x of the same copy from
// sequential blocks; prefetching the head closed most of that gap). Prefetching past the end of
// a small block is harmless: a prefetch never faults.
constexpr uint64_t kPrefetchBytes = 1024;

template <bool kForWrite>
inline void PrefetchHead(const std::byte* p) {
  for (uint64_t off = 0; off < kPrefetchBytes; off += 64) __builtin_prefetch(p + off, kForWrite ? 1 : 0);
}

// Splits units [0, total) into contiguous ranges and runs body(first, last) on each.
template <typename Body>
void ForEachUnitRange(uint64_t total, uint64_t unit_bytes, unsigned threads, Body&& body) {
  if (threads <= 1) {
    body(uint64_t{0}, total);
    return;
  }
  // Ranges of about kRangeBytes (at least 4 per thread), claimed dynamically: a thread slowed by
  // other load holds the call up by one short range at most.
  const uint64_t by_size = total * unit_bytes / kRangeBytes;
  const uint64_t tasks = std::min<uint64_t>(total, std::max<uint64_t>(uint64_t{threads} * 4, by_size));
  auto task = [&](size_t i) { body(total * i / tasks, total * (i + 1) / tasks); };
  kv_internal::WorkerPool::Instance().Run(tasks, threads, task);
}

}  // namespace

Status GatherChunks(const PagedKvCache& kv, std::span<const int64_t> block_ids, std::span<const uint32_t> chunk_indices,
                    std::span<const std::span<std::byte>> out, const TransferOptions& options) {
  SHMKV_RETURN_IF_ERROR(kv_internal::ValidateGather("gather", kv, block_ids, chunk_indices, out));
  if (out.empty()) return Status::Ok();
  const BlockDims d = kv_internal::DimsOf(kv.geometry);
  const uint64_t per_chunk = d.units_per_chunk();
  const uint64_t total = per_chunk * out.size();
  const unsigned threads = PickThreads(options, total * d.block_bytes, total);
  // Where unit u lives in the cache. Unit order follows the chunk object, so each range writes
  // its output sequentially and jumps around the cache.
  auto cache_of = [&](uint64_t u) {
    const uint64_t i = u / per_chunk;
    const uint64_t r = u % per_chunk;
    const auto kv_index = static_cast<uint32_t>(r / (uint64_t{d.layers} * d.blocks_per_chunk));
    const uint64_t layer = (r / d.blocks_per_chunk) % d.layers;
    const uint64_t block = uint64_t{chunk_indices[i]} * d.blocks_per_chunk + r % d.blocks_per_chunk;
    return kv.layers[layer] + d.cache_offset(kv_index, static_cast<uint64_t>(block_ids[block]));
  };
  ForEachUnitRange(total, d.block_bytes, threads, [&](uint64_t first, uint64_t last) {
    const std::byte* src = cache_of(first);
    for (uint64_t u = first; u < last; ++u) {
      const std::byte* next = u + 1 < last ? cache_of(u + 1) : nullptr;
      if (next != nullptr) PrefetchHead<false>(next);
      CopyUnit<true>(out[u / per_chunk].data() + (u % per_chunk) * d.block_bytes, src, d);
      src = next;
    }
  });
  return Status::Ok();
}

Status ScatterChunks(std::span<const std::span<const std::byte>> in, const PagedKvCache& kv,
                     std::span<const int64_t> block_ids, uint64_t skip_first_n_tokens, const TransferOptions& options) {
  SHMKV_RETURN_IF_ERROR(kv_internal::ValidateScatter("scatter", in, kv, block_ids, skip_first_n_tokens));
  const BlockDims d = kv_internal::DimsOf(kv.geometry);
  const uint64_t seq_blocks = uint64_t{in.size()} * d.blocks_per_chunk;
  const uint64_t skip_blocks = std::min(skip_first_n_tokens / d.block_size, seq_blocks);
  if (skip_blocks == seq_blocks) return Status::Ok();
  const uint64_t per_chunk = d.units_per_chunk();
  const uint64_t total = per_chunk * in.size();
  unsigned threads = PickThreads(options, (seq_blocks - skip_blocks) * d.kv_count * d.layers * d.block_bytes, total);
  if (threads > 1) {
    // Two chunks naming the same block would write the same bytes from two threads; keep the
    // single-threaded result (the later chunk wins) instead of a race.
    std::vector<int64_t> written(block_ids.begin() + static_cast<ptrdiff_t>(skip_blocks),
                                 block_ids.begin() + static_cast<ptrdiff_t>(seq_blocks));
    std::sort(written.begin(), written.end());
    if (std::adjacent_find(written.begin(), written.end()) != written.end()) threads = 1;
  }
  // Where unit u goes in the cache; null when it is skipped.
  auto cache_of = [&](uint64_t u) -> std::byte* {
    const uint64_t i = u / per_chunk;
    const uint64_t r = u % per_chunk;
    const uint64_t block = i * d.blocks_per_chunk + r % d.blocks_per_chunk;
    if (block < skip_blocks) return nullptr;
    const auto kv_index = static_cast<uint32_t>(r / (uint64_t{d.layers} * d.blocks_per_chunk));
    const uint64_t layer = (r / d.blocks_per_chunk) % d.layers;
    return kv.layers[layer] + d.cache_offset(kv_index, static_cast<uint64_t>(block_ids[block]));
  };
  ForEachUnitRange(total, d.block_bytes, threads, [&](uint64_t first, uint64_t last) {
    std::byte* dst = cache_of(first);
    for (uint64_t u = first; u < last; ++u) {
      std::byte* next = u + 1 < last ? cache_of(u + 1) : nullptr;
      if (next != nullptr) PrefetchHead<true>(next);
      if (dst != nullptr) CopyUnit<false>(dst, in[u / per_chunk].data() + (u % per_chunk) * d.block_bytes, d);
      dst = next;
    }
  });
  return Status::Ok();
}

// ---- strided caches ----------------------------------------------------------------------------

StridedKvCache ToStrided(const PagedKvCache& kv) {
  StridedKvCache s;
  s.geometry = kv.geometry;
  s.layers = kv.layers;
  const KvGeometry& g = kv.geometry;
  const int64_t e = g.element_size;
  const int64_t row = e * g.head_size;
  const int64_t block = row * g.num_kv_heads * g.block_size;
  switch (g.layout) {
    case KvLayout::kNHD:
      s.strides = {block * static_cast<int64_t>(g.num_blocks), block, row * g.num_kv_heads, row, e};
      break;
    case KvLayout::kHND:
      s.strides = {block * static_cast<int64_t>(g.num_blocks), block, row, row * g.block_size, e};
      break;
    case KvLayout::kMLA: s.strides = {0, block, row, 0, e}; break;
  }
  for (std::byte* p : kv.layers) s.extents.emplace_back(p, g.layer_bytes());
  return s;
}

namespace {

// How one unit of a strided copy is walked. A unit is one block of one layer with K and V
// together (MLA: the latent), or one block of every layer when the layers lie inside the blocks
// (evenly spaced layer pointers closer together than the block stride: vLLM's cross-layer
// buffer, SGLang's page_first host pools). Copying all of a block's parts in one pass reads the
// cache in its memory order even when the view interleaves them (vLLM's standardized [B, H, N, 2D]
// views hold K then V of each head side by side; page_first holds the layers of a token side by
// side), where a pass per part would stream a fraction of each region, touch a new page per run
// and make the hardware prefetcher fetch the rest for nothing.
//
// The unit is a loop nest over the dimensions kv, layer, token, head, element with a byte stride
// on the cache side and one on the chunk side ([kv][layer][block][token][head][element], dense).
// The innermost dimensions whose strides make them contiguous on both sides are merged into the
// run (one memcpy); the others are loops, ordered by cache stride, largest outermost, so that the
// cache is read (or written) as sequentially as the view allows while the chunk side is split
// into its K/V and layer parts.
struct LoopDim {
  uint64_t n = 1;
  int64_t cache = 0;  // bytes
  int64_t chunk = 0;  // bytes
};

struct StridedPlan {
  BlockDims d;
  uint64_t run = 0;             // contiguous bytes per copy, on both sides
  std::array<LoopDim, 5> dims;  // outermost first; unused ones have n = 1
  bool all_layers = false;      // a unit holds every layer (else one layer)
  uint64_t units_per_chunk = 0;
  uint64_t unit_bytes = 0;  // bytes a unit moves
  // The innermost loop steps through the cache run after run (stride == run): the cache side is
  // read sequentially within a unit, and reading ahead by address fetches what comes next.
  bool cache_walk_dense = false;
};

// How far ahead of a dense cache walk the gather prefetches: at a few GB/s per core a miss of
// ~100 ns covers some 500 bytes; measured on the development machine, 1 and 4 KiB both lifted the
// LBNHC gather (from ~0.7-0.9x of memcpy to ~0.8-1.2x; the machine is shared and noisy).
constexpr size_t kReadAhead = 2048;

int64_t Abs(int64_t v) {
  return v < 0 ? -v : v;
}

StridedPlan PlanOf(const StridedKvCache& kv) {
  StridedPlan p;
  p.d = kv_internal::DimsOf(kv.geometry);
  const BlockDims& d = p.d;
  const KvStrides& st = kv.strides;
  const auto e = static_cast<int64_t>(kv.geometry.element_size);
  const auto row = static_cast<int64_t>(d.row_bytes);
  const auto block_bytes = static_cast<int64_t>(d.block_bytes);
  const int64_t chunk_layer = static_cast<int64_t>(d.blocks_per_chunk) * block_bytes;
  // Evenly spaced layers inside the block stride join the unit.
  // (Addresses as integers: the layers may be separate allocations.)
  auto gap = [&](uint32_t l) {
    return static_cast<int64_t>(reinterpret_cast<uintptr_t>(kv.layers[l]) -
                                reinterpret_cast<uintptr_t>(kv.layers[l - 1]));
  };
  int64_t layer_stride = 0;
  if (d.layers > 1) {
    layer_stride = gap(1);
    for (uint32_t l = 2; l < d.layers && layer_stride != 0; ++l) {
      if (gap(l) != layer_stride) layer_stride = 0;
    }
    p.all_layers = layer_stride != 0 && Abs(layer_stride) < Abs(st.block);
  }
  const uint64_t unit_layers = p.all_layers ? d.layers : 1;
  p.units_per_chunk = (p.all_layers ? 1 : uint64_t{d.layers}) * d.blocks_per_chunk;
  p.unit_bytes = uint64_t{d.kv_count} * unit_layers * d.block_bytes;
  // Innermost first on the chunk side: a dimension joins the run only if every inner one did.
  const LoopDim inner_first[] = {{kv.geometry.head_size, st.element, e},
                                 {d.heads, st.head, row},
                                 {d.block_size, st.token, row * static_cast<int64_t>(d.heads)},
                                 {unit_layers, layer_stride, chunk_layer},
                                 {d.kv_count, st.kv, chunk_layer * static_cast<int64_t>(d.layers)}};
  auto run = static_cast<uint64_t>(e);
  bool merging = true;
  std::vector<LoopDim> loops;
  for (const LoopDim& dim : inner_first) {
    if (dim.n == 1) continue;
    if (merging && dim.cache == static_cast<int64_t>(run) && dim.chunk == static_cast<int64_t>(run)) {
      run *= dim.n;
      continue;
    }
    merging = false;
    loops.push_back(dim);
  }
  std::stable_sort(loops.begin(), loops.end(),
                   [](const LoopDim& a, const LoopDim& b) { return Abs(a.cache) > Abs(b.cache); });
  p.run = run;
  p.cache_walk_dense = loops.empty() || loops.back().cache == static_cast<int64_t>(run);
  const size_t pad = p.dims.size() - loops.size();  // at most 5 loops: pad on the outside
  for (size_t i = 0; i < loops.size(); ++i) p.dims[pad + i] = loops[i];
  return p;
}

// Copies one unit between the cache (at `cache`) and the chunk (at `chunk`, the unit's K part),
// in the direction kToChunk says; kRun != 0 is the run length known at compile time.
// Non-temporal (streaming) stores for the destination of large transfers: the bytes are not
// read again by this core soon (a gathered chunk is read by other processes, a scattered block by
// the engine later), and a cached store first reads the destination line (read for ownership),
// a third of the memory traffic of a copy. glibc's memcpy does the same above a few MiB; with
// cached stores the strided copies stayed at 0.6-0.9x of it (docs/performance.md).
constexpr uint64_t kStreamingBytes = uint64_t{256} << 10;

#if defined(__SSE2__)
constexpr bool kHaveStreaming = true;
// Copies n bytes (a multiple of 16, dst 16-byte aligned) with streaming stores.
template <size_t kRun>
inline void StreamRun(std::byte* dst, const std::byte* src, size_t n) {
  const size_t len = kRun != 0 ? kRun : n;
  for (size_t o = 0; o < len; o += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + o), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + o)));
  }
}
inline void StreamFence() {
  _mm_sfence();
}
#else
constexpr bool kHaveStreaming = false;
template <size_t kRun>
inline void StreamRun(std::byte* dst, const std::byte* src, size_t n) {
  std::memcpy(dst, src, kRun != 0 ? kRun : n);
}
inline void StreamFence() {}
#endif

// Copies one unit between the cache (at `cache`) and the chunk (at `chunk`, the unit's first
// part), in the direction kToChunk says; kRun != 0 is the run length known at compile time;
// kStream uses streaming stores (the caller checked the destination's alignment).
template <size_t kRun, bool kToChunk, bool kStream>
void CopyPlanned(std::byte* cache, std::byte* chunk, const StridedPlan& p) {
  const size_t run = kRun != 0 ? kRun : p.run;
  const auto& [a, b, c, x, y] = p.dims;
  for (uint64_t i0 = 0; i0 < a.n; ++i0) {
    for (uint64_t i1 = 0; i1 < b.n; ++i1) {
      for (uint64_t i2 = 0; i2 < c.n; ++i2) {
        std::byte* cache2 = cache + static_cast<int64_t>(i0) * a.cache + static_cast<int64_t>(i1) * b.cache +
                            static_cast<int64_t>(i2) * c.cache;
        std::byte* chunk2 = chunk + static_cast<int64_t>(i0) * a.chunk + static_cast<int64_t>(i1) * b.chunk +
                            static_cast<int64_t>(i2) * c.chunk;
        for (uint64_t i3 = 0; i3 < x.n; ++i3) {
          std::byte* cache3 = cache2 + static_cast<int64_t>(i3) * x.cache;
          std::byte* chunk3 = chunk2 + static_cast<int64_t>(i3) * x.chunk;
          for (uint64_t i4 = 0; i4 < y.n; ++i4) {
            std::byte* cp = cache3 + static_cast<int64_t>(i4) * y.cache;
            std::byte* kp = chunk3 + static_cast<int64_t>(i4) * y.chunk;
            std::byte* dst = kToChunk ? kp : cp;
            const std::byte* src = kToChunk ? cp : kp;
            // Read ahead where the source continues: a dense cache walk (gather), and always on
            // the chunk side (scatter), where a run is followed by the next of the same part.
            if (!kToChunk || p.cache_walk_dense) {
              for (size_t o = 0; o < run; o += 64) __builtin_prefetch(src + kReadAhead + o, 0);
            }
            if constexpr (kStream) {
              StreamRun<kRun>(dst, src, run);
            } else {
              std::memcpy(dst, src, run);
            }
          }
        }
      }
    }
  }
  if constexpr (kStream) StreamFence();  // streaming stores are weakly ordered: done before the caller's commit
}

template <bool kToChunk, bool kStream>
void CopyStridedUnitAs(std::byte* cache, std::byte* chunk, const StridedPlan& p) {
  switch (p.run) {
    case 1: return CopyPlanned<1, kToChunk, false>(cache, chunk, p);
    case 2: return CopyPlanned<2, kToChunk, false>(cache, chunk, p);
    case 4: return CopyPlanned<4, kToChunk, false>(cache, chunk, p);
    case 8: return CopyPlanned<8, kToChunk, false>(cache, chunk, p);
    case 16: return CopyPlanned<16, kToChunk, kStream>(cache, chunk, p);
    case 64: return CopyPlanned<64, kToChunk, kStream>(cache, chunk, p);
    case 128: return CopyPlanned<128, kToChunk, kStream>(cache, chunk, p);
    case 256: return CopyPlanned<256, kToChunk, kStream>(cache, chunk, p);
    case 512: return CopyPlanned<512, kToChunk, kStream>(cache, chunk, p);
    case 1024: return CopyPlanned<1024, kToChunk, kStream>(cache, chunk, p);
    default: return CopyPlanned<0, kToChunk, kStream>(cache, chunk, p);
  }
}

template <bool kToChunk>
void CopyStridedUnit(std::byte* cache, std::byte* chunk, const StridedPlan& p, bool stream) {
  if (stream) return CopyStridedUnitAs<kToChunk, true>(cache, chunk, p);
  CopyStridedUnitAs<kToChunk, false>(cache, chunk, p);
}

bool Aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

// Whether a transfer of `bytes` may use streaming stores into the destination: runs of whole
// 16-byte vectors, and every destination address a multiple of 16 (the chunk side: offsets are
// multiples of the run; the cache side: layer pointers, block stride and loop strides).
bool UseStreaming(const StridedPlan& p, uint64_t bytes, bool to_chunk, const StridedKvCache& kv,
                  std::span<const std::byte* const> chunk_bases) {
  if (!kHaveStreaming || bytes < kStreamingBytes || p.run % 16 != 0) return false;
  if (to_chunk) {
    return std::all_of(chunk_bases.begin(), chunk_bases.end(), [](const std::byte* b) { return Aligned16(b); });
  }
  if (kv.strides.block % 16 != 0) return false;
  if (!std::all_of(kv.layers.begin(), kv.layers.end(), [](const std::byte* l) { return Aligned16(l); })) return false;
  return std::all_of(p.dims.begin(), p.dims.end(), [](const LoopDim& d) { return d.n == 1 || d.cache % 16 == 0; });
}

}  // namespace

Status GatherChunksStrided(const StridedKvCache& kv, std::span<const int64_t> block_ids,
                           std::span<const uint32_t> chunk_indices, std::span<const std::span<std::byte>> out,
                           const TransferOptions& options) {
  SHMKV_RETURN_IF_ERROR(kv_internal::ValidateGatherStrided("gather", kv, block_ids, chunk_indices, out));
  if (out.empty()) return Status::Ok();
  const StridedPlan p = PlanOf(kv);
  const BlockDims& d = p.d;
  // Units in chunk order ([layer,] block of the chunk): each range fills its parts of the chunk
  // sequentially and jumps around the cache.
  const uint64_t per_chunk = p.units_per_chunk;
  const uint64_t total = per_chunk * out.size();
  const unsigned threads = PickThreads(options, total * p.unit_bytes, total);
  std::vector<const std::byte*> bases;
  for (const auto& o : out) bases.push_back(o.data());
  const bool stream = UseStreaming(p, total * p.unit_bytes, /*to_chunk=*/true, kv, bases);
  auto cache_of = [&](uint64_t u) {
    const uint64_t i = u / per_chunk;
    const uint64_t r = u % per_chunk;
    const uint64_t block = uint64_t{chunk_indices[i]} * d.blocks_per_chunk + r % d.blocks_per_chunk;
    return kv.layers[r / d.blocks_per_chunk] + block_ids[block] * kv.strides.block;
  };
  ForEachUnitRange(total, p.unit_bytes, threads, [&](uint64_t first, uint64_t last) {
    for (uint64_t u = first; u < last; ++u) {
      if (u + 1 < last) PrefetchHead<false>(cache_of(u + 1));
      CopyStridedUnit<true>(cache_of(u), out[u / per_chunk].data() + (u % per_chunk) * d.block_bytes, p, stream);
    }
  });
  return Status::Ok();
}

Status ScatterChunksStrided(std::span<const std::span<const std::byte>> in, const StridedKvCache& kv,
                            std::span<const int64_t> block_ids, uint64_t skip_first_n_tokens,
                            const TransferOptions& options) {
  SHMKV_RETURN_IF_ERROR(kv_internal::ValidateScatterStrided("scatter", in, kv, block_ids, skip_first_n_tokens));
  const StridedPlan p = PlanOf(kv);
  const BlockDims& d = p.d;
  const uint64_t seq_blocks = uint64_t{in.size()} * d.blocks_per_chunk;
  const uint64_t skip_blocks = std::min(skip_first_n_tokens / d.block_size, seq_blocks);
  if (skip_blocks == seq_blocks) return Status::Ok();
  const uint64_t per_chunk = p.units_per_chunk;
  const uint64_t total = per_chunk * in.size();
  unsigned threads = PickThreads(options, (seq_blocks - skip_blocks) * d.kv_count * d.layers * d.block_bytes, total);
  if (threads > 1) {
    // As in ScatterChunks: a repeated block id keeps the single-threaded result.
    std::vector<int64_t> written(block_ids.begin() + static_cast<ptrdiff_t>(skip_blocks),
                                 block_ids.begin() + static_cast<ptrdiff_t>(seq_blocks));
    std::sort(written.begin(), written.end());
    if (std::adjacent_find(written.begin(), written.end()) != written.end()) threads = 1;
  }
  const bool stream = UseStreaming(p, (seq_blocks - skip_blocks) * d.kv_count * d.layers * d.block_bytes,
                                   /*to_chunk=*/false, kv, {});
  auto cache_of = [&](uint64_t u) -> std::byte* {
    const uint64_t i = u / per_chunk;
    const uint64_t r = u % per_chunk;
    const uint64_t block = i * d.blocks_per_chunk + r % d.blocks_per_chunk;
    if (block < skip_blocks) return nullptr;
    return kv.layers[r / d.blocks_per_chunk] + block_ids[block] * kv.strides.block;
  };
  ForEachUnitRange(total, p.unit_bytes, threads, [&](uint64_t first, uint64_t last) {
    for (uint64_t u = first; u < last; ++u) {
      std::byte* dst = cache_of(u);
      if (dst == nullptr) continue;
      if (u + 1 < last && !stream) {  // streaming stores do not read the destination
        if (std::byte* next = cache_of(u + 1)) PrefetchHead<true>(next);
      }
      // The chunk side is only read: the cast is for the shared copy routine.
      CopyStridedUnit<false>(dst, const_cast<std::byte*>(in[u / per_chunk].data()) + (u % per_chunk) * d.block_bytes, p,
                             stream);
    }
  });
  return Status::Ok();
}

}  // namespace shmkv
