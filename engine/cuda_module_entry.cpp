// The one exported entry point of libshiftadd_cuda.so (engine/cuda_module.h).
#include "engine/cuda_module.h"

extern "C" __attribute__((visibility("default"))) const shiftadd::CudaModuleApi* shiftadd_cuda_module() {
  static const shiftadd::CudaModuleApi api{shiftadd::kCudaModuleAbi, &shiftadd::make_cuda_backend,
                                           &shiftadd::cuda_device_available};
  return &api;
}
