#pragma once
// The CUDA backend is a separately loaded module (libshiftadd_cuda.so, built from
// engine/cuda_backend.cpp, engine/cuda_module_entry.cpp and kernels/cuda/), so libshiftadd
// itself never needs the CUDA runtime: a CPU-only machine loads it without libcudart.
// The core dlopens the module beside itself the first time a CUDA session is asked for.
#include <memory>
#include <string>

#include "engine/backend.h"

namespace shiftadd {

// Bumped whenever this struct or CudaOptions changes, so a stale module is refused by name.
constexpr int kCudaModuleAbi = 1;

struct CudaModuleApi {
  int abi = kCudaModuleAbi;
  // Throws Error("no CUDA device/driver found: ...") when no usable GPU is present.
  std::unique_ptr<Backend> (*make_backend)(const CudaOptions&) = nullptr;
  bool (*device_available)(std::string* why) = nullptr;
};

// What the module exports (unmangled, found with dlsym).
constexpr const char* kCudaModuleFile = "libshiftadd_cuda.so";
constexpr const char* kCudaModuleSymbol = "shiftadd_cuda_module";
using CudaModuleEntry = const CudaModuleApi* (*)();

// The loaded module, or Error saying why it cannot be used (absent from this build, the CUDA
// runtime or cuBLAS missing, ABI mismatch). Loaded once per process.
const CudaModuleApi& cuda_module();

}  // namespace shiftadd
