// Loads the CUDA backend module (engine/cuda_module.h) from the directory of this library.
#include "engine/cuda_module.h"

#include <dlfcn.h>

#include <filesystem>
#include <mutex>

#include "core/log.h"
#include "shiftadd/error.h"

namespace shiftadd {

namespace {

std::filesystem::path this_library_dir() {
  Dl_info dl;
  if (dladdr(reinterpret_cast<void*>(&cuda_module), &dl) && dl.dli_fname)
    return std::filesystem::path(dl.dli_fname).parent_path();
  return {};
}

// Throws on failure; the result (module or error) is kept for the life of the process.
const CudaModuleApi* load() {
  const std::filesystem::path dir = this_library_dir();
  const std::filesystem::path file = dir / kCudaModuleFile;
  std::error_code ec;
  if (!std::filesystem::exists(file, ec))
    throw Error("this build has no CUDA backend: " + file.string() +
                " does not exist (build with the CUDA toolkit installed, or -DSHIFTADD_CUDA=ON)");
  // RTLD_LOCAL: the module's CUDA symbols stay private to it.
  void* lib = ::dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* err = ::dlerror();
    throw Error("cannot load the CUDA backend " + file.string() + ": " + (err ? err : "unknown dlopen error") +
                " (is the CUDA runtime (libcudart, libcublas) installed and on the library path?)");
  }
  auto entry = reinterpret_cast<CudaModuleEntry>(::dlsym(lib, kCudaModuleSymbol));
  if (!entry)
    throw Error(file.string() + ": not a shiftadd CUDA module (no symbol '" + kCudaModuleSymbol + "')");
  const CudaModuleApi* api = entry();
  if (!api || api->abi != kCudaModuleAbi || !api->make_backend || !api->device_available)
    throw Error(file.string() + ": CUDA module interface version " + std::to_string(api ? api->abi : -1) +
                ", this libshiftadd needs " + std::to_string(kCudaModuleAbi) +
                " (the module is from another build; install both from one build)");
  logger().info("loaded the CUDA backend {}", file.string());
  return api;
}

}  // namespace

const CudaModuleApi& cuda_module() {
  static std::once_flag once;
  static const CudaModuleApi* api = nullptr;
  static std::string error;
  std::call_once(once, [] {
    try {
      api = load();
    } catch (const Error& e) {
      error = e.what();
    }
  });
  if (!api) throw Error(error);
  return *api;
}

}  // namespace shiftadd
