#pragma once
// NumPy .npy arrays (format versions 1.0, 2.0 and 3.0), used for inputs, outputs and goldens.
// Supported dtypes: '<f4' F32, '<f2' F16, '<i4' I32, '<i8' I64, '|u1' U8, '<u2' U16.
#include <string>
#include <vector>

#include "core/tensor.h"

namespace shiftadd {

// Reads the whole array into an owned, C-ordered tensor. Throws Error naming `path` for anything
// else: bad magic, unknown version, malformed header, other dtypes (big-endian, float64, object,
// structured), Fortran order, truncated or oversized data. With `accepted`, any other dtype is an
// error listing only those.
Tensor load_npy(const std::string& path, const std::vector<DType>& accepted = {});

// Writes a contiguous CPU tensor as a version 1.0 file (2.0 if the header would not fit), with
// the header padded to 64 bytes as NumPy does. Atomic; replaces an existing file.
void save_npy(const std::string& path, const Tensor& t);

}  // namespace shiftadd
