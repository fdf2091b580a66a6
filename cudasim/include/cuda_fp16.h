#pragma once
// cudasim: IEEE binary16 storage type and the conversions the kernels use.
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t x;
};

// fp32 -> fp16, round to nearest even (overflow to infinity, subnormals kept).
inline __half __float2half_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7fffffffu;
  uint16_t h;
  if (absu > 0x7f800000u) {
    h = static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  } else if (absu >= 0x477ff000u) {
    h = static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: infinity
  } else if (absu < 0x38800000u) {              // below 2^-14: subnormal (or zero)
    float a;
    std::memcpy(&a, &absu, 4);
    // a * 2^24 is the subnormal's integer significand; nearbyint rounds half to even.
    const float scaled = a * 16777216.0f;
    const uint32_t m = static_cast<uint32_t>(__builtin_nearbyintf(scaled));
    h = static_cast<uint16_t>(sign | m);
  } else {
    const uint32_t mant = absu & 0x7fffffu;
    const uint32_t exp = (absu >> 23) - 112u;  // rebias 127 -> 15
    uint32_t hm = (exp << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (hm & 1u))) ++hm;  // carries into the exponent correctly
    h = static_cast<uint16_t>(sign | hm);
  }
  return __half{h};
}

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.x & 0x8000u) << 16;
  const uint32_t exp = (h.x >> 10) & 0x1fu, mant = h.x & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    float f = static_cast<float>(mant) * (1.0f / 16777216.0f);  // subnormal: m * 2^-24
    std::memcpy(&u, &f, 4);
    u |= sign;
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
