#include "shm/cuda_pinner.h"

#include <dlfcn.h>

#include <cstdlib>

#include <fmt/format.h>

#include "common/log.h"

namespace shmkv {
namespace {

constexpr unsigned kCudaHostRegisterPortable = 1;  // visible to every CUDA context

std::vector<std::string> DefaultLibraryNames() {
  std::vector<std::string> names;
  if (const char* path = std::getenv("SHMKV_CUDART"); path != nullptr && *path != '\0') names.emplace_back(path);
  // A process that already loaded a runtime (e.g. torch's bundled one) gets it back by soname.
  for (const char* n : {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"}) {
    names.emplace_back(n);
  }
  return names;
}

}  // namespace

CudaHostPinner& CudaHostPinner::Instance() {
  static CudaHostPinner pinner(DefaultLibraryNames());
  return pinner;
}

CudaHostPinner::CudaHostPinner(std::vector<std::string> library_names) : library_names_(std::move(library_names)) {}

CudaHostPinner::~CudaHostPinner() {
  if (handle_ != nullptr) ::dlclose(handle_);
}

void CudaHostPinner::LoadOnce() {
  std::call_once(load_once_, [this] {
    for (const std::string& name : library_names_) {
      handle_ = ::dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle_ != nullptr) break;
    }
    if (handle_ == nullptr) {
      unavailable_reason_ = "no CUDA runtime library found (searched libcudart.so*, $SHMKV_CUDART)";
      return;
    }
    auto count = reinterpret_cast<int (*)(int*)>(::dlsym(handle_, "cudaGetDeviceCount"));
    register_ = reinterpret_cast<int (*)(void*, size_t, unsigned)>(::dlsym(handle_, "cudaHostRegister"));
    unregister_ = reinterpret_cast<int (*)(void*)>(::dlsym(handle_, "cudaHostUnregister"));
    error_string_ = reinterpret_cast<const char* (*)(int)>(::dlsym(handle_, "cudaGetErrorString"));
    if (count == nullptr || register_ == nullptr || unregister_ == nullptr) {
      unavailable_reason_ = "the CUDA runtime library lacks cudaHostRegister";
      register_ = nullptr;
      return;
    }
    int devices = 0;
    if (int rc = count(&devices); rc != 0 || devices == 0) {
      unavailable_reason_ = fmt::format("the CUDA runtime reports no device (error {})", rc);
      register_ = nullptr;
    }
  });
}

bool CudaHostPinner::available() {
  LoadOnce();
  return register_ != nullptr;
}

std::string CudaHostPinner::unavailable_reason() {
  LoadOnce();
  return unavailable_reason_;
}

Status CudaHostPinner::Register(void* ptr, size_t size) {
  if (!available()) {
    std::call_once(log_once_, [this] {
      Log().debug("CUDA pinning skipped: {}; pool stays pageable host memory", unavailable_reason_);
    });
    return Status::Unavailable(unavailable_reason_);
  }
  if (int rc = register_(ptr, size, kCudaHostRegisterPortable); rc != 0) {
    return Status::IoError(fmt::format("cudaHostRegister of {} bytes failed: {}", size,
                                       error_string_ ? error_string_(rc) : std::to_string(rc)));
  }
  return Status::Ok();
}

Status CudaHostPinner::Unregister(void* ptr) {
  if (!available()) return Status::Unavailable(unavailable_reason_);
  if (int rc = unregister_(ptr); rc != 0) {
    return Status::IoError(
        fmt::format("cudaHostUnregister failed: {}", error_string_ ? error_string_(rc) : std::to_string(rc)));
  }
  return Status::Ok();
}

}  // namespace shmkv
