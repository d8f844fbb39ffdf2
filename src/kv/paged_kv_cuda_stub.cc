// The CUDA entry points of a build without SHMKV_CUDA: present so callers link, always
// kUnavailable (no validation: nothing could run the copy anyway).
#include "shmkv/paged_kv.h"

namespace shmkv {

Status GatherChunksCuda(const PagedKvCache&, std::span<const int64_t>, std::span<const uint32_t>,
                        std::span<const std::span<std::byte>>, void*) {
  return Status::Unavailable("gather (cuda): this shmkv build has no CUDA kernels; rebuild with -DSHMKV_CUDA=ON");
}

Status ScatterChunksCuda(std::span<const std::span<const std::byte>>, const PagedKvCache&, std::span<const int64_t>,
                         uint64_t, void*) {
  return Status::Unavailable("scatter (cuda): this shmkv build has no CUDA kernels; rebuild with -DSHMKV_CUDA=ON");
}

Status GatherChunksStridedCuda(const StridedKvCache&, std::span<const int64_t>, std::span<const uint32_t>,
                               std::span<const std::span<std::byte>>, void*) {
  return Status::Unavailable("gather (cuda): this shmkv build has no CUDA kernels; rebuild with -DSHMKV_CUDA=ON");
}

Status ScatterChunksStridedCuda(std::span<const std::span<const std::byte>>, const StridedKvCache&,
                                std::span<const int64_t>, uint64_t, void*) {
  return Status::Unavailable("scatter (cuda): this shmkv build has no CUDA kernels; rebuild with -DSHMKV_CUDA=ON");
}

bool PagedKvCudaCompiled() {
  return false;
}

}  // namespace shmkv
