#include "core/dtype.h"

#include <cstring>

namespace shiftadd {

static const DTypeTraits kTraits[] = {
    {"F32", 4, true}, {"F16", 2, true}, {"BF16", 2, true}, {"I32", 4, false},
    {"I64", 8, false}, {"U8", 1, false}, {"U16", 2, false}, {"I8", 1, false},
};
static_assert(sizeof(kTraits) / sizeof(kTraits[0]) == static_cast<size_t>(DType::Count));

const DTypeTraits& dtype_traits(DType t) { return kTraits[static_cast<size_t>(t)]; }

bool dtype_from_name(std::string_view name, DType* out) {
  for (size_t i = 0; i < static_cast<size_t>(DType::Count); ++i) {
    if (kTraits[i].name == name) {
      *out = static_cast<DType>(i);
      return true;
    }
  }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16_to_f32(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace shiftadd
