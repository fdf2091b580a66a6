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
// q(x) as a float: X / 2^16, exactly upstream's fp32 value.
SHIFTADD_HD inline float quantize_q16_float(float x) { return static_cast<float>(quantize_q16(x)) * 0x1p-16f; }

// ----- the int8 view of a shift layer (fast mode, docs/shiftadd.md) ------------------------
// Per output row n with largest exponent e_n (over its nonzero weights), a weight g * 2^s is the
// int8 g * 2^(s - e_n + 6) times the row scale 2^(e_n - 6): exact for the 7 exponents
// e_n - 6 .. e_n (|int8| in {1, 2, ..., 64}); weights below that window (< 2^-6 of the row's
// largest) become 0 (dropped; the converter reports how many). |int8| <= 64 also keeps
// u8 * s8 pair sums inside int16 (255 * 64 * 2 < 32767), so AVX2's vpmaddubsw cannot saturate.
constexpr int kShiftInt8Levels = 7;
constexpr int kNoExponent = -127;  // row exponent of an all-zero row

// e_n of a row of K codes (kNoExponent when every weight is zero).
SHIFTADD_HD inline int shift_row_exponent(const uint8_t* codes, int64_t K) {
  int e = kNoExponent;
  for (int64_t k = 0; k < K; ++k)
    if (!shift_code_is_zero(codes[k])) {
      const int s = shift_code_exponent(codes[k]);
      e = s > e ? s : e;
    }
  return e;
}

// The int8 weight of `code` in a row of exponent e (0 when dropped or zero).
SHIFTADD_HD inline int8_t shift_code_int8(uint8_t code, int row_exponent) {
  if (shift_code_is_zero(code)) return 0;
  const int j = shift_code_exponent(code) - row_exponent + kShiftInt8Levels - 1;
  if (j < 0) return 0;
  const int v = 1 << j;
  return static_cast<int8_t>((code & kShiftSignBit) ? -v : v);
}

// The row scale 2^(e - 6) (0 for an all-zero row).
SHIFTADD_HD inline float shift_row_scale(int row_exponent) {
  return row_exponent == kNoExponent ? 0.0f : ldexpf(1.0f, row_exponent - (kShiftInt8Levels - 1));
}

// The row exponent e back from its row scale 2^(e - 6) (kNoExponent for 0).
SHIFTADD_HD inline int row_exponent_of_scale(float row_scale) {
  return row_scale == 0.0f ? kNoExponent : ilogbf(row_scale) + (kShiftInt8Levels - 1);
}

// Fast mode's per-token activation quantizer: symmetric int8 with step amax / 127.
//   inv = 127 / amax (0 when amax is 0), xq = round_half_even(clamp(x * inv, -127, 127)).
// The clamps are written as the SIMD min/max compute them (NaN -> 127), so every backend
// produces the same integers.
SHIFTADD_HD inline float int8_quant_inv(float amax) { return amax > 0.0f ? 127.0f / amax : 0.0f; }
SHIFTADD_HD inline float int8_quant_step(float amax) { return amax / 127.0f; }
SHIFTADD_HD inline int8_t quantize_int8(float x, float inv) {
  float v = x * inv;
  v = v < 127.0f ? v : 127.0f;
  v = v > -127.0f ? v : -127.0f;
  return static_cast<int8_t>(static_cast<int>(nearbyintf(v)));
}

// ----- storage at the real width (shiftadd format v2, docs/format.md) ----------------------
// A row of K codes is stored in packed_code_bytes(K, bits) bytes, LSB first:
//   5 bits: the codes themselves, weight k at bits [5k, 5k + 5) of the row;
//   4 bits: a nibble per weight, sign (bit 3) | level (bits 0-2): level 0 is the zero weight,
//           level l in 1..7 the exponent e - (l - 1), e the row's exponent stored beside it (the
//           7 exponents of fast mode's int8 window; shift_row_exponent).
inline int64_t packed_code_bytes(int64_t K, int bits) { return (K * bits + 7) / 8; }

// Whether every code of the row fits 4 bits under row exponent e (no exponent below e - 6).
inline bool codes_fit_4bit(const uint8_t* codes, int64_t K, int row_exponent) {
  for (int64_t k = 0; k < K; ++k)
    if (!shift_code_is_zero(codes[k]) && shift_code_exponent(codes[k]) < row_exponent - (kShiftInt8Levels - 1))
      return false;
  return true;
}

// Packs a row (4 bits: codes_fit_4bit must hold).
inline void pack_code_row(const uint8_t* codes, int64_t K, int bits, int row_exponent, uint8_t* out) {
  for (int64_t i = 0; i < packed_code_bytes(K, bits); ++i) out[i] = 0;
  for (int64_t k = 0; k < K; ++k) {
    const uint8_t c = codes[k];
    if (bits == 5) {
      const int64_t bit = 5 * k;
      const unsigned v = static_cast<unsigned>(c & 31) << (bit % 8);
      out[bit / 8] |= static_cast<uint8_t>(v);
      if (bit % 8 > 3) out[bit / 8 + 1] |= static_cast<uint8_t>(v >> 8);
    } else {
      const unsigned level = shift_code_is_zero(c) ? 0u : static_cast<unsigned>(row_exponent - shift_code_exponent(c) + 1);
      const unsigned nib = (c & kShiftSignBit ? 8u : 0u) | level;
      out[k / 2] |= static_cast<uint8_t>(nib << (4 * (k % 2)));
    }
  }
}

// Unpacks a row into 5-bit codes; false when a 4-bit level names an exponent outside [-14, 0]
// (or the row exponent is out of range while the row has nonzero weights).
inline bool unpack_code_row(const uint8_t* in, int64_t K, int bits, int row_exponent, uint8_t* codes) {
  for (int64_t k = 0; k < K; ++k) {
    if (bits == 5) {
      const int64_t bit = 5 * k;
      unsigned v = in[bit / 8] >> (bit % 8);
      if (bit % 8 > 3) v |= static_cast<unsigned>(in[bit / 8 + 1]) << (8 - bit % 8);
      codes[k] = static_cast<uint8_t>(v & 31);
    } else {
      const unsigned nib = (in[k / 2] >> (4 * (k % 2))) & 15u;
      const int level = static_cast<int>(nib & 7u);
      if (level == 0) {
        codes[k] = kShiftZeroCode;
        continue;
      }
      const int s = row_exponent - (level - 1);
      if (s < kShiftMin || s > 0) return false;
      codes[k] = encode_shift(nib & 8u ? -1 : 1, s);
    }
  }
  return true;
}

}  // namespace shiftadd

