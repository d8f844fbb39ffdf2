// CUDA implementation of GatherChunksCuda / ScatterChunksCuda (include/shmkv/paged_kv.h),
// compiled only with -DSHMKV_CUDA=ON.
//
// The host validates exactly as the CPU path does (kv_internal::Validate*), resolves every
// pointer to its device address, and builds a table of (cache block, chunk block) address pairs,
// one per unit (one block of one layer of K or V). One CUDA thread block copies one unit: a plain
// copy for NHD/MLA, a [heads][tokens] <-> [tokens][heads] row transpose for HND, in the widest
// vector width that every address and the row size allow. The table goes to the device with
// cudaMallocAsync/cudaMemcpyAsync and is freed with cudaFreeAsync on the same stream, so the whole
// call is asynchronous on `stream`.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kv/paged_kv_internal.h"
#include "shmkv/paged_kv.h"

namespace shmkv {
namespace {

struct Run {
  unsigned long long cache;  // device address of the unit in the engine cache
  unsigned long long chunk;  // device address of the unit in the chunk object
};

template <typename V, bool kToChunk>
__global__ void CopyUnits(const Run* runs, uint32_t heads, uint32_t block_size, uint64_t row_vecs, bool transpose) {
  const Run r = runs[blockIdx.x];
  const uint64_t rows = uint64_t{heads} * block_size;
  const uint64_t total = rows * row_vecs;
  for (uint64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const uint64_t row = i / row_vecs;  // chunk side: token-major, row = t * heads + h
    const uint64_t col = i % row_vecs;
    const uint64_t cache_row = transpose ? (row % heads) * block_size + row / heads : row;
    V* chunk = reinterpret_cast<V*>(r.chunk) + row * row_vecs + col;
    V* cache = reinterpret_cast<V*>(r.cache) + cache_row * row_vecs + col;
    if constexpr (kToChunk) {
      *chunk = *cache;
    } else {
      *cache = *chunk;
    }
  }
}

// The strided variant: one thread block per unit; the cache side is addressed by the token, head
// and element strides (bytes), the chunk side is dense [token][head][element]. V is the access
// width: a whole vector of a row when the row's elements are dense (col_stride = sizeof(V)), one
// element otherwise (col_stride = the element stride).
struct StridedArgs {
  uint32_t heads;
  uint32_t block_size;
  uint64_t row_vecs;  // accesses per row
  long long token;
  long long head;
  long long col;  // bytes between consecutive accesses of one row in the cache
};

template <typename V, bool kToChunk>
__global__ void CopyStridedUnits(const Run* runs, StridedArgs a) {
  const Run r = runs[blockIdx.x];
  const uint64_t total = uint64_t{a.heads} * a.block_size * a.row_vecs;
  for (uint64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const uint64_t row = i / a.row_vecs;  // t * heads + h
    const uint64_t col = i % a.row_vecs;
    const long long t = static_cast<long long>(row / a.heads);
    const long long h = static_cast<long long>(row % a.heads);
    V* chunk = reinterpret_cast<V*>(r.chunk) + row * a.row_vecs + col;
    V* cache = reinterpret_cast<V*>(static_cast<long long>(r.cache) + t * a.token + h * a.head +
                                    static_cast<long long>(col) * a.col);
    if constexpr (kToChunk) {
      *chunk = *cache;
    } else {
      *cache = *chunk;
    }
  }
}

std::string CudaError(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
}

Status RequireDevice(std::string_view op) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // reset the runtime's last-error slot so later calls report their own
    return Status::Unavailable(std::string(op) + ": no usable CUDA device: " + CudaError(e));
  }
  if (count == 0) return Status::Unavailable(std::string(op) + ": no CUDA device is present");
  return Status::Ok();
}

// The device address of `p`: device or managed memory as is, registered host memory through its
// mapping. Pageable host memory is refused (a kernel cannot portably address it).
Status DeviceAddress(std::string_view op, const std::string& what, const void* p, unsigned long long* out) {
  cudaPointerAttributes attr{};
  const cudaError_t e = cudaPointerGetAttributes(&attr, p);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::InvalidArgument(std::string(op) + ": " + what +
                                   ": cudaPointerGetAttributes failed: " + CudaError(e));
  }
  if (attr.type == cudaMemoryTypeUnregistered || attr.devicePointer == nullptr) {
    return Status::InvalidArgument(std::string(op) + ": " + what +
                                   " is not device-addressable (neither device memory nor host memory registered "
                                   "with cudaHostRegister)");
  }
  *out = reinterpret_cast<unsigned long long>(attr.devicePointer);
  return Status::Ok();
}

template <bool kToChunk, typename V>
void Launch(const Run* runs, size_t count, const kv_internal::BlockDims& d, cudaStream_t stream) {
  const uint64_t row_vecs = d.row_bytes / sizeof(V);
  CopyUnits<V, kToChunk>
      <<<static_cast<unsigned>(count), 256, 0, stream>>>(runs, d.heads, d.block_size, row_vecs, d.transpose);
}

// Copies the run table to the device and launches; everything is ordered on `stream`.
template <bool kToChunk>
Status Submit(std::string_view op, const std::vector<Run>& runs, const kv_internal::BlockDims& d, uint64_t align,
              cudaStream_t stream) {
  if (runs.empty()) return Status::Ok();
  if (runs.size() > 0x7fffffffu) return Status::InvalidArgument(std::string(op) + ": too many blocks for one launch");
  Run* table = nullptr;
  const size_t bytes = runs.size() * sizeof(Run);
  cudaError_t e = cudaMallocAsync(reinterpret_cast<void**>(&table), bytes, stream);
  if (e != cudaSuccess) return Status::Internal(std::string(op) + ": cudaMallocAsync: " + CudaError(e));
  // From pageable memory: returns once `runs` is staged, so the vector may go away afterwards.
  e = cudaMemcpyAsync(table, runs.data(), bytes, cudaMemcpyHostToDevice, stream);
  if (e == cudaSuccess) {
    switch (align) {
      case 16: Launch<kToChunk, uint4>(table, runs.size(), d, stream); break;
      case 8: Launch<kToChunk, uint2>(table, runs.size(), d, stream); break;
      case 4: Launch<kToChunk, unsigned>(table, runs.size(), d, stream); break;
      case 2: Launch<kToChunk, unsigned short>(table, runs.size(), d, stream); break;
      default: Launch<kToChunk, unsigned char>(table, runs.size(), d, stream); break;
    }
    e = cudaGetLastError();
  }
  (void)cudaFreeAsync(table, stream);
  if (e == cudaErrorNoKernelImageForDevice) {
    return Status::Unavailable(std::string(op) +
                               ": this build has no kernel for the device's architecture: " + CudaError(e));
  }
  if (e != cudaSuccess) return Status::Internal(std::string(op) + ": launch failed: " + CudaError(e));
  return Status::Ok();
}

// The widest access (1..16 bytes) that divides the row size and every base address.
uint64_t Alignment(uint64_t row_bytes, const std::vector<unsigned long long>& bases) {
  uint64_t bits = row_bytes | 16;
  for (unsigned long long b : bases) bits |= b;
  return bits & (~bits + 1);  // lowest set bit
}

}  // namespace

Status GatherChunksCuda(const PagedKvCache& kv, std::span<const int64_t> block_ids,
                        std::span<const uint32_t> chunk_indices, std::span<const std::span<std::byte>> out,
                        void* stream) {
  constexpr std::string_view op = "gather (cuda)";
  SHMKV_RETURN_IF_ERROR(kv_internal::ValidateGather(op, kv, block_ids, chunk_indices, out));
  SHMKV_RETURN_IF_ERROR(RequireDevice(op));
  if (out.empty()) return Status::Ok();
  const kv_internal::BlockDims d = kv_internal::DimsOf(kv.geometry);
  std::vector<unsigned long long> layers(d.layers), chunks(out.size());
  for (uint32_t l = 0; l < d.layers; ++l) {
    SHMKV_RETURN_IF_ERROR(DeviceAddress(op, "layer " + std::to_string(l), kv.layers[l], &layers[l]));
  }
  for (size_t i = 0; i < out.size(); ++i) {
    SHMKV_RETURN_IF_ERROR(DeviceAddress(op, "out[" + std::to_string(i) + "]", out[i].data(), &chunks[i]));
  }
  std::vector<Run> runs;
  runs.reserve(out.size() * d.units_per_chunk());
  for (size_t i = 0; i < out.size(); ++i) {
    for (uint32_t kvi = 0; kvi < d.kv_count; ++kvi) {
      for (uint32_t l = 0; l < d.layers; ++l) {
        for (uint32_t j = 0; j < d.blocks_per_chunk; ++j) {
          const uint64_t unit = (uint64_t{kvi} * d.layers + l) * d.blocks_per_chunk + j;
          const auto block = static_cast<uint64_t>(block_ids[uint64_t{chunk_indices[i]} * d.blocks_per_chunk + j]);
          runs.push_back({layers[l] + d.cache_offset(kvi, block), chunks[i] + unit * d.block_bytes});
        }
      }
    }
  }
  std::vector<unsigned long long> bases = layers;
  bases.insert(bases.end(), chunks.begin(), chunks.end());
  return Submit<true>(op, runs, d, Alignment(d.row_bytes, bases), static_cast<cudaStream_t>(stream));
}

Status ScatterChunksCuda(std::span<const std::span<const std::byte>> in, const PagedKvCache& kv,
                         std::span<const int64_t> block_ids, uint64_t skip_first_n_tokens, void* stream) {
  constexpr std::string_view op = "scatter (cuda)";
  SHMKV_RETURN_IF_ERROR(kv_internal::ValidateScatter(op, in, kv, block_ids, skip_first_n_tokens));
  SHMKV_RETURN_IF_ERROR(RequireDevice(op));
  const kv_internal::BlockDims d = kv_internal::DimsOf(kv.geometry);
  const uint64_t skip_blocks = skip_first_n_tokens / d.block_size;
  if (skip_blocks >= uint64_t{in.size()} * d.blocks_per_chunk) return Status::Ok();
  std::vector<unsigned long long> layers(d.layers), chunks(in.size());
  for (uint32_t l = 0; l < d.layers; ++l) {
    SHMKV_RETURN_IF_ERROR(DeviceAddress(op, "layer " + std::to_string(l), kv.layers[l], &layers[l]));
  }
  for (size_t i = 0; i < in.size(); ++i) {
    SHMKV_RETURN_IF_ERROR(DeviceAddress(op, "in[" + std::to_string(i) + "]", in[i].data(), &chunks[i]));
  }
  std::vector<Run> runs;
  runs.reserve(in.size() * d.units_per_chunk());
  for (size_t i = 0; i < in.size(); ++i) {
    for (uint32_t kvi = 0; kvi < d.kv_count; ++kvi) {
      for (uint32_t l = 0; l < d.layers; ++l) {
        for (uint32_t j = 0; j < d.blocks_per_chunk; ++j) {
          const uint64_t seq_block = uint64_t{i} * d.blocks_per_chunk + j;
          if (seq_block < skip_blocks) continue;
          const uint64_t unit = (uint64_t{kvi} * d.layers + l) * d.blocks_per_chunk + j;
          const auto block = static_cast<uint64_t>(block_ids[seq_block]);
          runs.push_back({layers[l] + d.cache_offset(kvi, block), chunks[i] + unit * d.block_bytes});
        }
      }
    }
  }
  std::vector<unsigned long long> bases = layers;
  bases.insert(bases.end(), chunks.begin(), chunks.end());
  return Submit<false>(op, runs, d, Alignment(d.row_bytes, bases), static_cast<cudaStream_t>(stream));
}

namespace {

// Copies the run table to the device and launches the strided kernel with access width `width`
// (1, 2, 4, 8 or 16 bytes); everything is ordered on `stream`.
template <bool kToChunk>
Status SubmitStrided(std::string_view op, const std::vector<Run>& runs, StridedArgs a, uint64_t width,
                     cudaStream_t stream) {
  if (runs.empty()) return Status::Ok();
  if (runs.size() > 0x7fffffffu) return Status::InvalidArgument(std::string(op) + ": too many blocks for one launch");
  Run* table = nullptr;
  const size_t bytes = runs.size() * sizeof(Run);
  cudaError_t e = cudaMallocAsync(reinterpret_cast<void**>(&table), bytes, stream);
  if (e != cudaSuccess) return Status::Internal(std::string(op) + ": cudaMallocAsync: " + CudaError(e));
  e = cudaMemcpyAsync(table, runs.data(), bytes, cudaMemcpyHostToDevice, stream);
  if (e == cudaSuccess) {
    const auto grid = static_cast<unsigned>(runs.size());
    switch (width) {
      case 16: CopyStridedUnits<uint4, kToChunk><<<grid, 256, 0, stream>>>(table, a); break;
      case 8: CopyStridedUnits<uint2, kToChunk><<<grid, 256, 0, stream>>>(table, a); break;
      case 4: CopyStridedUnits<unsigned, kToChunk><<<grid, 256, 0, stream>>>(table, a); break;
      case 2: CopyStridedUnits<unsigned short, kToChunk><<<grid, 256, 0, stream>>>(table, a); break;
      default: CopyStridedUnits<unsigned char, kToChunk><<<grid, 256, 0, stream>>>(table, a); break;
    }
    e = cudaGetLastError();
  }
  (void)cudaFreeAsync(table, stream);
  if (e == cudaErrorNoKernelImageForDevice) {
    return Status::Unavailable(std::string(op) +
                               ": this build has no kernel for the device's architecture: " + CudaError(e));
  }
  if (e != cudaSuccess) return Status::Internal(std::string(op) + ": launch failed: " + CudaError(e));
  return Status::Ok();
}

// The access width and kernel arguments for a strided cache whose layer and chunk base addresses
// are `bases`: rows with dense elements are copied in the widest vector that divides the row,
// every stride and every base; other rows one element at a time.
StridedArgs StridedLaunch(const StridedKvCache& kv, const kv_internal::BlockDims& d,
                          std::vector<unsigned long long> bases, uint64_t* width) {
  const KvStrides& st = kv.strides;
  const uint32_t e = kv.geometry.element_size;
  const bool dense_row = st.element == static_cast<int64_t>(e) || kv.geometry.head_size == 1;
  uint64_t w = e;
  if (dense_row) {
    // Every cache address is a base plus multiples of the strides; the chunk side is dense.
    bases.push_back(static_cast<unsigned long long>(st.token));
    bases.push_back(static_cast<unsigned long long>(st.head));
    bases.push_back(static_cast<unsigned long long>(st.kv));
    bases.push_back(static_cast<unsigned long long>(st.block));
    w = Alignment(d.row_bytes, bases);
  }
  *width = w;  // a non-dense row: StridedRuns checked that every address is element-aligned
  StridedArgs a{};
  a.heads = d.heads;
  a.block_size = d.block_size;
  a.row_vecs = dense_row ? d.row_bytes / w : kv.geometry.head_size;
  a.token = st.token;
  a.head = st.head;
  a.col = dense_row ? static_cast<long long>(w) : st.element;
  return a;
}

template <bool kToChunk, typename Buf>
Status StridedRuns(std::string_view op, const StridedKvCache& kv, std::span<const Buf> bufs,
                   std::span<const int64_t> block_ids, std::span<const uint32_t> chunk_indices, uint64_t skip_blocks,
                   void* stream) {
  const kv_internal::BlockDims d = kv_internal::DimsOf(kv.geometry);
  std::vector<unsigned long long> layers(d.layers), chunks(bufs.size());
  for (uint32_t l = 0; l < d.layers; ++l) {
    SHMKV_RETURN_IF_ERROR(DeviceAddress(op, "layer " + std::to_string(l), kv.layers[l], &layers[l]));
  }
  for (size_t i = 0; i < bufs.size(); ++i) {
    SHMKV_RETURN_IF_ERROR(DeviceAddress(op, std::string(kToChunk ? "out[" : "in[") + std::to_string(i) + "]",
                                        bufs[i].data(), &chunks[i]));
  }
  std::vector<Run> runs;
  runs.reserve(bufs.size() * d.units_per_chunk());
  for (size_t i = 0; i < bufs.size(); ++i) {
    const uint64_t chunk = chunk_indices.empty() ? i : chunk_indices[i];
    for (uint32_t kvi = 0; kvi < d.kv_count; ++kvi) {
      for (uint32_t l = 0; l < d.layers; ++l) {
        for (uint32_t j = 0; j < d.blocks_per_chunk; ++j) {
          const uint64_t seq_block = chunk * d.blocks_per_chunk + j;
          if (seq_block < skip_blocks) continue;
          const uint64_t unit = (uint64_t{kvi} * d.layers + l) * d.blocks_per_chunk + j;
          const long long cache = static_cast<long long>(layers[l]) + static_cast<long long>(kvi) * kv.strides.kv +
                                  block_ids[seq_block] * kv.strides.block;
          runs.push_back({static_cast<unsigned long long>(cache), chunks[i] + unit * d.block_bytes});
        }
      }
    }
  }
  std::vector<unsigned long long> bases = layers;
  bases.insert(bases.end(), chunks.begin(), chunks.end());
  const KvStrides& st = kv.strides;
  for (long long v : {st.kv, st.block, st.token, st.head, st.element})
    bases.push_back(static_cast<unsigned long long>(v));
  if (Alignment(kv.geometry.element_size, bases) < kv.geometry.element_size) {
    return Status::InvalidArgument(std::string(op) + ": the cache's strides or addresses are not multiples of the " +
                                   std::to_string(kv.geometry.element_size) + "-byte element size");
  }
  bases.resize(layers.size() + chunks.size());
  uint64_t width = 1;
  const StridedArgs a = StridedLaunch(kv, d, std::move(bases), &width);
  return SubmitStrided<kToChunk>(op, runs, a, width, static_cast<cudaStream_t>(stream));
}

}  // namespace

Status GatherChunksStridedCuda(const StridedKvCache& kv, std::span<const int64_t> block_ids,
                               std::span<const uint32_t> chunk_indices, std::span<const std::span<std::byte>> out,
                               void* stream) {
  constexpr std::string_view op = "gather (cuda)";
  SHMKV_RETURN_IF_ERROR(kv_internal::ValidateGatherStrided(op, kv, block_ids, chunk_indices, out));
  SHMKV_RETURN_IF_ERROR(RequireDevice(op));
  if (out.empty()) return Status::Ok();
  return StridedRuns<true>(op, kv, out, block_ids, chunk_indices, 0, stream);
}

Status ScatterChunksStridedCuda(std::span<const std::span<const std::byte>> in, const StridedKvCache& kv,
                                std::span<const int64_t> block_ids, uint64_t skip_first_n_tokens, void* stream) {
  constexpr std::string_view op = "scatter (cuda)";
  SHMKV_RETURN_IF_ERROR(kv_internal::ValidateScatterStrided(op, in, kv, block_ids, skip_first_n_tokens));
  SHMKV_RETURN_IF_ERROR(RequireDevice(op));
  const uint64_t skip_blocks = skip_first_n_tokens / kv.geometry.block_size;
  if (skip_blocks >= uint64_t{in.size()} * kv.geometry.blocks_per_chunk()) return Status::Ok();
  return StridedRuns<false>(op, kv, in, block_ids, {}, skip_blocks, stream);
}

bool PagedKvCudaCompiled() {
  return true;
}

}  // namespace shmkv
