#pragma once
// Data types and their traits table (one row per dtype; ggml-style).
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace shiftadd {

enum class DType : uint8_t { F32, F16, BF16, I32, I64, U8, U16, I8, Count };

struct DTypeTraits {
  std::string_view name;  // safetensors spelling: "F32", "F16", ...
  size_t size;            // bytes per element
  bool is_float;
};

const DTypeTraits& dtype_traits(DType t);
inline size_t dtype_size(DType t) { return dtype_traits(t).size; }
inline std::string_view dtype_name(DType t) { return dtype_traits(t).name; }
// Parses a safetensors dtype name; returns false for names we do not know.
bool dtype_from_name(std::string_view name, DType* out);

// IEEE half and bfloat16 to float (used when loading F16/BF16 checkpoints).
float f16_to_f32(uint16_t h);
float bf16_to_f32(uint16_t b);

}  // namespace shiftadd
