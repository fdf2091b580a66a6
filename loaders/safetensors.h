#pragma once
// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}},
// then the raw tensor bytes.
#include <map>
#include <string>

#include "core/tensor.h"
#include "loaders/weight_store.h"

namespace shiftadd {

// Maps `path` read-only and validates the whole header. Tensors keep their stored dtype and are
// borrowed from the mapping (read-only memory; writing through them faults); the mapping lives
// as long as any of them. The rare tensor whose offset is not a multiple of its element size is
// copied into aligned memory instead. Any malformed input throws Error naming `path`.
WeightStore load_safetensors(const std::string& path);

// Writes `tensors` (CPU, contiguous) and `metadata` atomically. The header lists tensors by name;
// the data region holds them without gaps, largest element size first, so every tensor stays
// aligned when loaded. Refuses to replace an existing file unless `overwrite`.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      bool overwrite = false);

// F32 tensors are returned as they are (same storage); F16 and BF16 are converted into a new
// owned F32 tensor. Other dtypes throw Error.
Tensor to_f32(const Tensor& t);

}  // namespace shiftadd
