#pragma once
#include <cstdint>

namespace shiftadd {

// Where tensors live and sessions run. CUDA needs a build with SHIFTADD_CUDA and an NVIDIA GPU.
enum class Device : uint8_t { CPU, CUDA };

}  // namespace shiftadd
