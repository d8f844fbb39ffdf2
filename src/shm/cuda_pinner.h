// Page-locks host memory for CUDA DMA through the CUDA runtime loaded with dlopen at run time, so
// shmkv never links against CUDA and runs unchanged on machines without it (docs/design.md §2).
//
// Thread-safety: all members are safe to call from any thread; loading happens once.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include "shmkv/status.h"

namespace shmkv {

class CudaHostPinner {
 public:
  // The process-wide pinner. It searches $SHMKV_CUDART (a path) first, then the usual sonames.
  static CudaHostPinner& Instance();

  // A pinner that searches only `library_names` (tests use it to force the no-CUDA path).
  explicit CudaHostPinner(std::vector<std::string> library_names);
  ~CudaHostPinner();
  CudaHostPinner(const CudaHostPinner&) = delete;
  CudaHostPinner& operator=(const CudaHostPinner&) = delete;

  // Registers [ptr, ptr + size) with cudaHostRegister. Returns kUnavailable (and logs one line,
  // once per pinner) when no runtime or no device is present; that is not an error for callers.
  Status Register(void* ptr, size_t size);
  // Undoes Register. Only call for a range Register accepted.
  Status Unregister(void* ptr);

  // Loads the runtime if not yet tried; true when a runtime and at least one device exist.
  bool available();
  // Why available() is false (empty when it is true).
  std::string unavailable_reason();

 private:
  void LoadOnce();

  std::vector<std::string> library_names_;
  std::once_flag load_once_;
  std::once_flag log_once_;
  void* handle_ = nullptr;
  int (*register_)(void*, size_t, unsigned) = nullptr;
  int (*unregister_)(void*) = nullptr;
  const char* (*error_string_)(int) = nullptr;
  std::string unavailable_reason_;
};

}  // namespace shmkv
