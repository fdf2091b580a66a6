#pragma once
// cudasim: the runtime API plus the device side (built-in variables, barriers, warp
// intrinsics, kernel launches) for .cu files compiled as C++.
#include "cuda_runtime_api.h"
#include "cudasim/device.h"
