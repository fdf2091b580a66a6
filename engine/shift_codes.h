#pragma once
// Packing of DeepShift-PS shift weights (spec section 3) into 5-bit codes.
//
// Upstream parameters are raw floats `shift` and `sign`; at load:
//   s = round_half_even(clamp(shift, -14, 0))      in {-14, ..., 0}
//   g = sign(round_half_even(sign))                 in {-1, 0, +1}
//   W = g * 2^s
// One code per weight, stored one per uint8 (only the low 5 bits are used):
//   bit 4      sign: 1 = negative (g = -1), 0 = positive
//   bits 0..3  e + 1 where e = -s in 0..14, i.e. 1..15
//   0x00       the zero code (g = 0); any code whose low nibble is 0 decodes to W = 0
// The encoding is chosen so that the exact shift-linear kernel reads its left shift directly:
// X * 2^s * 2^14 = X << (14 + s) = X << (15 - (code & 15)).
// NaN shift or sign values pack to the zero code.
//
// Plain inline functions, usable from CUDA device code later (SHIFTADD_HD).
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SHIFTADD_HD __host__ __device__
#else
#define SHIFTADD_HD
#endif

namespace shiftadd {

constexpr int kShiftMin = -14;  // smallest exponent s
constexpr uint8_t kShiftZeroCode = 0;
constexpr uint8_t kShiftSignBit = 0x10;
constexpr uint8_t kShiftExpMask = 0x0F;

// Round to nearest, ties to even (torch.round), independent of the FP rounding mode.
SHIFTADD_HD inline float round_half_even(float x) {
  const float r = floorf(x);
  const float diff = x - r;  // exact for |x| < 2^23; beyond that x is an integer, diff = 0
  if (diff > 0.5f) return r + 1.0f;
  if (diff < 0.5f) return r;
  // A tie: pick the even neighbour.
  const float half = r * 0.5f;
  return floorf(half) == half ? r : r + 1.0f;
}

// Exponent s in [-14, 0] of a raw upstream `shift` value.
SHIFTADD_HD inline int shift_exponent(float shift) {
  const float c = shift < -14.0f ? -14.0f : shift > 0.0f ? 0.0f : shift;
  return static_cast<int>(round_half_even(c));
}

// Sign g in {-1, 0, +1} of a raw upstream `sign` value.
SHIFTADD_HD inline int shift_sign(float sign) {
  const float r = round_half_even(sign);
  return r > 0.0f ? 1 : r < 0.0f ? -1 : 0;  // NaN -> 0
}

// Code of (g, s); s must be in [-14, 0].
SHIFTADD_HD inline uint8_t encode_shift(int g, int s) {
  if (g == 0) return kShiftZeroCode;
  return static_cast<uint8_t>((g < 0 ? kShiftSignBit : 0) | static_cast<uint8_t>(1 - s));
}

// Code of raw upstream (shift, sign) floats (round + clamp as upstream's forward does).
SHIFTADD_HD inline uint8_t pack_shift_weight(float shift, float sign) {
  const int g = shift_sign(sign);
  if (g == 0 || shift != shift) return kShiftZeroCode;
  return encode_shift(g, shift_exponent(shift));
}

SHIFTADD_HD inline bool shift_code_is_zero(uint8_t code) { return (code & kShiftExpMask) == 0; }
// g in {-1, 0, +1}
SHIFTADD_HD inline int shift_code_sign(uint8_t code) {
  return shift_code_is_zero(code) ? 0 : (code & kShiftSignBit) ? -1 : 1;
}
// s in [-14, 0] (0 for the zero code)
SHIFTADD_HD inline int shift_code_exponent(uint8_t code) {
  return shift_code_is_zero(code) ? 0 : 1 - static_cast<int>(code & kShiftExpMask);
}
// Left shift applied to Q16.16 activations in the exact kernel: 14 + s in [0, 14].
SHIFTADD_HD inline int shift_code_lshift(uint8_t code) {
  return 15 - static_cast<int>(code & kShiftExpMask);
}
// The weight as a float, g * 2^s (exact).
SHIFTADD_HD inline float decode_shift_weight(uint8_t code) {
  if (shift_code_is_zero(code)) return 0.0f;
  const float w = ldexpf(1.0f, shift_code_exponent(code));
  return (code & kShiftSignBit) ? -w : w;
}

// Q16.16 activation quantizer of upstream, in integer form:
//   q(x) = clamp(floor(x * 2^16) / 2^16, -32768, 32767) = X / 2^16,
//   X = clamp(floor(x * 2^16), -2^31, 32767 * 2^16), which always fits an int32.
// x * 2^16 and floor are exact in fp32, so X / 2^16 equals upstream's fp32 q(x) exactly.
// NaN maps to 0 (upstream would propagate NaN).
constexpr float kQ16Min = -2147483648.0f;  // -32768 * 2^16
constexpr float kQ16Max = 2147418112.0f;   //  32767 * 2^16
SHIFTADD_HD inline int32_t quantize_q16(float x) {
  float f = floorf(x * 65536.0f);
  if (!(f >= kQ16Min)) f = (f != f) ? 0.0f : kQ16Min;
  if (f > kQ16Max) f = kQ16Max;
  return static_cast<int32_t>(f);
}

}  // namespace shiftadd
