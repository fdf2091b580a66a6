// ShiftAddViT kernels: shift-code packing, shift linear (exact bit-for-bit, fast within its
// documented bound), KSH hashing, additive attention and MoE routing helpers, cpu:: against
// ref:: over many shapes, every SIMD path, 1 and 2 threads. Inputs random in +-[0.05, 1]
// (never zero); outputs poisoned with NaN first.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/shift_codes.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/shift_kernels.h"
#include "test_util.h"

namespace shiftadd::kernels {
namespace {

using Rng = std::mt19937;
using test::kNaN;

std::vector<float> rnd(Rng& rng, int64_t n, float scale = 1.0f) { return test::random_input(n, rng, scale); }

std::vector<uint8_t> random_codes(Rng& rng, int64_t n) {
  std::uniform_int_distribution<int> s(-14, 0), g(-1, 1);
  std::vector<uint8_t> c(static_cast<size_t>(n));
  for (auto& x : c) x = encode_shift(g(rng), s(rng));
  return c;
}

const char* const kPaths[] = {"avx512vnni", "avx512", "avx2", "scalar"};

// ----- packing -------------------------------------------------------------------------------

TEST(ShiftCodes, RoundTripEveryCode) {
  for (int g = -1; g <= 1; ++g)
    for (int s = -14; s <= 0; ++s) {
      const uint8_t c = encode_shift(g, s);
      EXPECT_LT(c, 32);
      EXPECT_EQ(shift_code_sign(c), g);
      if (g != 0) {
        EXPECT_EQ(shift_code_exponent(c), s);
        EXPECT_EQ(shift_code_lshift(c), 14 + s);
      }
      EXPECT_EQ(decode_shift_weight(c), static_cast<float>(g) * std::ldexp(1.0f, s));
      EXPECT_EQ(pack_shift_weight(static_cast<float>(s), static_cast<float>(g)), c);
    }
}

TEST(ShiftCodes, HalfEvenRoundingAndClamp) {
  EXPECT_EQ(shift_exponent(-0.5f), 0);
  EXPECT_EQ(shift_exponent(-1.5f), -2);
  EXPECT_EQ(shift_exponent(-2.5f), -2);
  EXPECT_EQ(shift_exponent(0.5f), 0);
  EXPECT_EQ(shift_exponent(3.0f), 0);
  EXPECT_EQ(shift_exponent(-14.6f), -14);
  EXPECT_EQ(shift_exponent(-13.5f), -14);
  EXPECT_EQ(shift_exponent(-12.5f), -12);
  EXPECT_EQ(shift_exponent(-20.0f), -14);
  EXPECT_EQ(shift_exponent(-0.51f), -1);
  EXPECT_EQ(shift_sign(0.5f), 0);
  EXPECT_EQ(shift_sign(-0.5f), 0);
  EXPECT_EQ(shift_sign(0.51f), 1);
  EXPECT_EQ(shift_sign(-1.5f), -1);
  EXPECT_EQ(shift_sign(1.5f), 1);
  EXPECT_EQ(shift_sign(-0.2f), 0);
  EXPECT_EQ(pack_shift_weight(-1.5f, -0.7f), encode_shift(-1, -2));
  EXPECT_EQ(pack_shift_weight(-20.f, 2.3f), encode_shift(1, -14));
  EXPECT_EQ(pack_shift_weight(-3.f, 0.5f), kShiftZeroCode);
  EXPECT_EQ(quantize_q16(1.0f), 65536);
  EXPECT_EQ(quantize_q16(-1e-9f), -1);
  EXPECT_EQ(quantize_q16(1e9f), 2147418112);
  EXPECT_EQ(quantize_q16(-1e9f), std::numeric_limits<int32_t>::min());
}

// Storage at the real width (format v2): 5-bit rows round-trip every code; 4-bit rows round-trip
// every row within the 7-exponent window of its largest exponent and refuse levels below -14.
TEST(ShiftCodes, PackedRowsRoundTrip) {
  Rng rng(11);
  for (int64_t K : {1, 2, 3, 7, 8, 9, 15, 16, 17, 96, 301}) {
    const std::vector<uint8_t> codes = random_codes(rng, K);
    std::vector<uint8_t> packed(shiftadd::packed_code_bytes(K, 5) + 1, 0xAB), back(K, 0xFF);
    shiftadd::pack_code_row(codes.data(), K, 5, 0, packed.data());
    EXPECT_EQ(packed.back(), 0xAB) << "wrote past the row";
    ASSERT_TRUE(shiftadd::unpack_code_row(packed.data(), K, 5, 0, back.data()));
    EXPECT_EQ(back, codes) << K;
    // A row within a window: exponents e - 6 .. e.
    std::uniform_int_distribution<int> e(-14, 0), lvl(0, 6), g(-1, 1);
    const int row_e = std::max(-8, e(rng));
    std::vector<uint8_t> w(K);
    for (auto& c : w) c = encode_shift(g(rng), row_e - lvl(rng));
    w[0] = encode_shift(1, row_e);
    const int re = shift_row_exponent(w.data(), K);
    ASSERT_TRUE(codes_fit_4bit(w.data(), K, re));
    std::vector<uint8_t> p4(shiftadd::packed_code_bytes(K, 4) + 1, 0xCD), b4(K, 0xFF);
    shiftadd::pack_code_row(w.data(), K, 4, re, p4.data());
    EXPECT_EQ(p4.back(), 0xCD);
    ASSERT_TRUE(shiftadd::unpack_code_row(p4.data(), K, 4, re, b4.data()));
    EXPECT_EQ(b4, w) << K;
  }
  // Level 7 under row exponent -9 is 2^-15: refused.
  const uint8_t nib = 7;
  uint8_t out = 0xEE;
  EXPECT_FALSE(shiftadd::unpack_code_row(&nib, 1, 4, -9, &out));
  EXPECT_TRUE(shiftadd::unpack_code_row(&nib, 1, 4, -8, &out));
  EXPECT_EQ(out, encode_shift(1, -14));
}

TEST(ShiftCodes, CpuPackMatchesRef) {
  Rng rng(3);
  std::uniform_real_distribution<float> sh(-20.f, 2.f), sg(-2.f, 2.f);
  const int64_t n = 100003;
  std::vector<float> s(n), g(n);
  for (int64_t i = 0; i < n; ++i) s[i] = sh(rng), g[i] = sg(rng);
  s[0] = -0.5f, s[1] = -1.5f, g[2] = 0.5f, g[3] = -0.5f;
  std::vector<uint8_t> a(n, 0xFF), b(n, 0xEE);
  ref::pack_shift_codes(n, s.data(), g.data(), a.data());
  for (int t : {1, 2}) {
    ThreadPool pool(t);
    cpu::pack_shift_codes(n, s.data(), g.data(), b.data(), pool);
    EXPECT_EQ(a, b);
  }
}

// ----- shift linear --------------------------------------------------------------------------

struct LinShape {
  int64_t M, N, K, pad;
  float scale;
};
std::vector<LinShape> lin_shapes() {
  std::vector<LinShape> v;
  for (int64_t M : {1, 2, 7, 33})
    for (int64_t N : {1, 7, 17, 64})
      for (int64_t K : {1, 3, 7, 8, 16, 17, 65, 300}) v.push_back({M, N, K, (M + K) % 3, 1.0f});
  v.push_back({197, 64, 64, 0, 4.0f});
  v.push_back({197, 768, 192, 0, 1.0f});   // DeiT-Tiny fc1: several panels and row blocks
  v.push_back({3136, 64, 32, 1, 1.0f});
  v.push_back({49, 320, 1280, 0, 30.0f});  // large activations, long K
  v.push_back({5, 9, 40, 2, 50000.0f});    // saturating Q16.16 range
  return v;
}

// One layer's inputs; the panel is what the graph builder prepares for the fast kernels.
struct Lin {
  std::vector<float> x, bias, scale, res;
  std::vector<uint8_t> codes;
  std::vector<int8_t> panel;
  std::vector<int32_t> colsum, rows;
  std::vector<float> row_scale;
  ShiftLinearArgs a;
};

// Variants: with an output scale, GELU, a residual (rows mapped like y), a row map (the MoE
// shift expert: every other row of a 2M-row buffer, reversed).
struct LinOpts {
  bool scale = false, gelu = false, residual = false, rows = false;
};

void make_lin(const LinShape& s, ShiftMode mode, LinOpts o, Rng& rng, Lin& l) {
  const int64_t rows = o.rows ? 2 * s.M : s.M;
  l.x = rnd(rng, rows * (s.K + s.pad), s.scale);
  l.codes = random_codes(rng, s.N * s.K);
  l.bias = rnd(rng, s.N, s.scale);
  l.scale = rnd(rng, s.N);
  l.res = rnd(rng, rows * (s.N + s.pad + 1));
  l.panel.assign(cpu::shift_panel_bytes(s.N, s.K), 0);
  l.colsum.assign(s.N, 0);
  l.row_scale.assign(s.N, 0.0f);
  cpu::pack_shift_panel(l.codes.data(), s.N, s.K, s.K, l.panel.data(), l.colsum.data(), l.row_scale.data());
  l.rows.resize(s.M);
  for (int64_t m = 0; m < s.M; ++m) l.rows[m] = static_cast<int32_t>(2 * (s.M - 1 - m) + 1);
  ShiftLinearArgs& a = l.a;
  a = ShiftLinearArgs();
  a.M = s.M, a.N = s.N, a.K = s.K;
  a.x = l.x.data(), a.ldx = s.K + s.pad;
  a.codes = l.codes.data(), a.ldw = s.K;
  a.bias = l.bias.data();
  a.ldy = s.N + s.pad;
  a.mode = mode;
  a.scale = o.scale ? l.scale.data() : nullptr;
  a.gelu = o.gelu;
  if (o.residual) a.residual = l.res.data(), a.ldr = s.N + s.pad + 1;
  a.rows = o.rows ? l.rows.data() : nullptr;
  a.panel.w = l.panel.data(), a.panel.colsum = l.colsum.data(), a.panel.row_scale = l.row_scale.data();
}

// Runs ref and cpu on `l` (outputs poisoned); returns both outputs of the full buffer.
void run_both(Lin& l, ThreadPool& pool, std::vector<float>& y, std::vector<float>& yr) {
  const int64_t rows = l.a.rows ? 2 * l.a.M : l.a.M;
  y.assign(rows * l.a.ldy, kNaN);
  yr = y;
  std::vector<uint8_t> work(cpu::shift_linear_work_bytes(l.a) + 64);
  ShiftLinearArgs ar = l.a, a = l.a;
  ar.y = yr.data(), a.y = y.data();
  a.work = work.data();
  ref::shift_linear(ar);
  pool.reserve_scratch(cpu::shift_linear_scratch_bytes(a));
  cpu::shift_linear(a, pool);
}

// Whether element i of the output buffer belongs to the layer's output (else it must stay NaN).
bool written(const ShiftLinearArgs& a, int64_t i) {
  return i % a.ldy < a.N && (!a.rows || (i / a.ldy) % 2 == 1);
}

TEST(ShiftLinear, FastMatchesRefBitForBit) {
  test::SimdGuard guard;
  for (const char* path : kPaths) {
    if (!cpu::set_simd(path)) continue;
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      unsigned seed = 0;
      for (const LinShape& s : lin_shapes())
        for (int variant = 0; variant < 4; ++variant) {
          const LinOpts o{variant == 1 || variant == 3, false, variant >= 2, variant == 3 || variant == 1};
          Rng rng(++seed);
          Lin l;
          make_lin(s, ShiftMode::Fast, o, rng, l);
          std::vector<float> y, yr;
          run_both(l, pool, y, yr);
          for (int64_t i = 0; i < static_cast<int64_t>(y.size()); ++i) {
            if (!written(l.a, i)) {
              ASSERT_TRUE(std::isnan(y[i])) << "written outside the layer's rows: " << path << " i=" << i;
              continue;
            }
            ASSERT_EQ(std::memcmp(&y[i], &yr[i], 4), 0)
                << path << " " << threads << "thr M=" << s.M << " N=" << s.N << " K=" << s.K
                << " variant=" << variant << " i=" << i << " got " << y[i] << " want " << yr[i];
          }
        }
    }
  }
}

// The per-token int8 quantisation on rows the random data never makes: all zeros, a NaN (does not
// count towards the abs-max; quantised as 127), an infinity (abs-max inf: scale 0), a subnormal
// abs-max (scale 127 / amax overflows to inf), values at the clamp; K around the 64-value step.
TEST(ShiftLinear, FastQuantisesSpecialRowsAsRef) {
  test::SimdGuard guard;
  ThreadPool pool(1);
  for (const char* path : kPaths) {
    if (!cpu::set_simd(path)) continue;
    for (int64_t K : {1, 15, 16, 63, 64, 65, 130, 256}) {
      Rng rng(static_cast<unsigned>(K));
      Lin l;
      make_lin({6, 20, K, 0, 1.0f}, ShiftMode::Fast, {}, rng, l);
      float* x = l.x.data();
      std::fill(x, x + K, 0.0f);                          // row 0: zeros
      x[K + K / 2] = kNaN;                                // row 1: a NaN
      x[2 * K] = -INFINITY;                               // row 2: -inf
      for (int64_t k = 0; k < K; ++k) x[3 * K + k] = 1e-40f * static_cast<float>(k % 3);  // row 3: subnormal
      x[3 * K + K - 1] = -1e-40f;
      for (int64_t k = 0; k < K; ++k) x[4 * K + k] = k % 2 ? 3.0f : -3.0f;  // row 4: |x| = amax everywhere
      std::vector<float> y, yr;
      run_both(l, pool, y, yr);
      for (size_t i = 0; i < y.size(); ++i)
        ASSERT_TRUE(std::memcmp(&y[i], &yr[i], 4) == 0 || (std::isnan(y[i]) && std::isnan(yr[i])))
            << path << " K=" << K << " row " << i / l.a.ldy << " col " << i % l.a.ldy << " got " << y[i]
            << " want " << yr[i];
    }
  }
}

// GELU runs through each path's erf approximation: within 2e-6 of ref's std::erf relative to
// the layer's largest output (as the dense GELU harness in test_kernels.cpp).
TEST(ShiftLinear, FastWithGeluMatchesRef) {
  test::SimdGuard guard;
  for (const char* path : kPaths) {
    if (!cpu::set_simd(path)) continue;
    ThreadPool pool(2);
    unsigned seed = 500;
    for (const LinShape& s : lin_shapes()) {
      if (s.scale > 1000) continue;
      Rng rng(++seed);
      Lin l;
      make_lin(s, ShiftMode::Fast, {true, true, true, seed % 2 == 0}, rng, l);
      std::vector<float> y, yr;
      run_both(l, pool, y, yr);
      double diff = 0, mag = 1;
      for (int64_t i = 0; i < static_cast<int64_t>(y.size()); ++i) {
        if (!written(l.a, i)) continue;
        ASSERT_FALSE(std::isnan(y[i])) << path << " i=" << i;
        diff = std::max(diff, std::fabs(static_cast<double>(y[i]) - yr[i]));
        mag = std::max(mag, std::fabs(static_cast<double>(yr[i])));
      }
      EXPECT_LE(diff / mag, 2e-6) << path << " M=" << s.M << " N=" << s.N << " K=" << s.K;
    }
  }
}

// Exact mode: cpu:: is upstream's fp32 GEMM of q(x) against the decoded weights, ref:: the
// exact value rounded once. They differ by fp32 accumulation only: at most K * 2^-24 of the sum
// of |terms| (a blocked sum does far better), plus the epilogue's roundings.
TEST(ShiftLinear, ExactWithinFp32AccumulationOfRef) {
  test::SimdGuard guard;
  for (const char* path : kPaths) {
    if (!cpu::set_simd(path)) continue;
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      unsigned seed = 1000;
      double worst = 0;
      for (const LinShape& s : lin_shapes())
        for (int variant = 0; variant < 3; ++variant) {
          const LinOpts o{variant >= 1, variant == 2, variant >= 1, variant == 2};
          Rng rng(++seed);
          Lin l;
          make_lin(s, ShiftMode::Exact, o, rng, l);
          std::vector<float> y, yr;
          run_both(l, pool, y, yr);
          auto q = [](float v) { return static_cast<double>(quantize_q16_float(v)); };
          for (int64_t m = 0; m < s.M; ++m) {
            const int64_t row = o.rows ? l.rows[m] : m;
            for (int64_t n = 0; n < s.N; ++n) {
              double mag = std::fabs(q(l.bias[n]));
              for (int64_t k = 0; k < s.K; ++k)
                mag += std::fabs(q(l.x[row * l.a.ldx + k]) * decode_shift_weight(l.codes[n * s.K + k]));
              if (o.scale) mag *= std::fabs(l.scale[n]);
              const int64_t i = row * l.a.ldy + n;
              const double e = std::fabs(static_cast<double>(y[i]) - yr[i]);
              const double bound = (s.K + 3) * 0x1p-24 * mag + 0x1p-22 * std::fabs(yr[i]) + 1e-30;
              ASSERT_LE(e, bound) << path << " M=" << s.M << " N=" << s.N << " K=" << s.K << " variant=" << variant
                                  << " m=" << m << " n=" << n << " got " << y[i] << " want " << yr[i];
              worst = std::max(worst, e / bound);
            }
          }
          for (int64_t i = 0; i < static_cast<int64_t>(y.size()); ++i)
            if (!written(l.a, i)) {
              ASSERT_TRUE(std::isnan(y[i])) << "written outside the layer's rows: " << path << " i=" << i;
            }
        }
      std::printf("[ shift_linear exact %s %d thr ] cpu (fp32 GEMM) vs ref (exact): %.0f%% of the bound at most\n",
                  path, threads, 100 * worst);
    }
  }
}

// ref's exact mode against an independent double-precision evaluation of upstream's float
// formula q(x) W^T + q(b).
TEST(ShiftLinear, RefExactIsTheFloatFormula) {
  double worst = 0;
  unsigned seed = 100;
  for (const LinShape& s : lin_shapes()) {
    if (s.scale > 1000) continue;
    Rng rng(++seed);
    Lin l;
    make_lin(s, ShiftMode::Exact, {}, rng, l);
    std::vector<float> y(s.M * l.a.ldy, kNaN);
    l.a.y = y.data();
    ref::shift_linear(l.a);
    auto q = [](float v) {  // upstream's fp32 q()
      return std::clamp(std::floor(v * 65536.0f) / 65536.0f, -32768.0f, 32767.0f);
    };
    for (int64_t m = 0; m < s.M; ++m)
      for (int64_t n = 0; n < s.N; ++n) {
        double want = q(l.bias[n]), mag = std::fabs(want);
        for (int64_t k = 0; k < s.K; ++k) {
          const double t = static_cast<double>(q(l.x[m * l.a.ldx + k])) * decode_shift_weight(l.codes[n * s.K + k]);
          want += t, mag += std::fabs(t);
        }
        worst = std::max(worst, std::fabs(y[m * l.a.ldy + n] - want) / std::max(mag, 1e-30));
      }
  }
  EXPECT_LE(worst, 1e-7);
}

TEST(ShiftLinear, PanelIsTheInt8WindowOfEachRow) {
  // Row 0: exponents 0..-14 (the 8 smallest dropped); row 1: all zero; row 2: one weight.
  const int64_t K = 15, N = 3;
  std::vector<uint8_t> codes(N * K, kShiftZeroCode);
  for (int64_t k = 0; k < K; ++k) codes[k] = encode_shift(k % 2 ? -1 : 1, -static_cast<int>(k));
  codes[2 * K + 5] = encode_shift(-1, -9);
  std::vector<int8_t> panel(cpu::shift_panel_bytes(N, K));
  std::vector<int32_t> colsum(N);
  std::vector<float> row_scale(N);
  EXPECT_EQ(panel.size(), 32u * 16u);
  EXPECT_EQ(cpu::pack_shift_panel(codes.data(), N, K, K, panel.data(), colsum.data(), row_scale.data()), 8);
  auto w = [&](int64_t n, int64_t k) { return panel[(k / 4) * 128 + n * 4 + k % 4]; };
  for (int64_t k = 0; k < K; ++k) {
    EXPECT_EQ(w(0, k), k < 7 ? (k % 2 ? -1 : 1) * (64 >> k) : 0) << k;
    EXPECT_EQ(w(1, k), 0);
    EXPECT_EQ(w(2, k), k == 5 ? -64 : 0);
  }
  EXPECT_EQ(colsum[0], 64 - 32 + 16 - 8 + 4 - 2 + 1);
  EXPECT_EQ(colsum[2], -64);
  EXPECT_EQ(row_scale[0], 0x1p-6f);
  EXPECT_EQ(row_scale[1], 0.0f);
  EXPECT_EQ(row_scale[2], 0x1p-15f);
  for (size_t i = 0; i < panel.size(); ++i)
    if (i % 128 >= 3 * 4) {
      EXPECT_EQ(panel[i], 0) << "padding " << i;
    }
}

// Fast mode's deviation from exact per layer for PVTv2 / DeiT layer shapes (M = tokens of one
// 224x224 image), activations ~ N(0, 1) as after a LayerNorm, weights the shift codes of
// N(0, 1/K) dense weights (upstream's init: round(log2|w|)). Error relative to max |y| and the
// RMS of y; docs/shiftadd.md quotes this table.
TEST(ShiftLinear, FastDeviationPerLayer) {
  ThreadPool pool(2);
  struct L { const char* name; int64_t M, K, N; };
  const L layers[] = {{"b0 stage1 to_qk/to_v/proj", 3136, 32, 32},   {"b0 stage1 fc1", 3136, 32, 256},
                      {"b0 stage1 fc2", 3136, 256, 32},              {"b0 stage2 fc1", 784, 64, 512},
                      {"b0 stage3 fc2", 196, 640, 160},              {"b0 stage4 fc2", 49, 1024, 256},
                      {"b1 stage1 fc1", 3136, 64, 512},              {"b1 stage4 fc2", 49, 2048, 512},
                      {"DeiT-Tiny qkv", 197, 192, 576},              {"DeiT-Tiny fc2", 197, 768, 192}};
  Rng rng(2024);
  for (const L& l : layers) {
    std::normal_distribution<float> act(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(l.M * l.K)), bias = rnd(rng, l.N, 0.1f);
    for (float& v : x) v = act(rng);
    std::vector<uint8_t> codes(static_cast<size_t>(l.N * l.K));
    std::normal_distribution<float> nd(0.0f, 1.0f / std::sqrt(static_cast<float>(l.K)));
    for (uint8_t& c : codes) {
      const float w = nd(rng);
      c = pack_shift_weight(std::log2(std::fabs(w)), w > 0 ? 1.0f : -1.0f);
    }
    std::vector<int8_t> panel(cpu::shift_panel_bytes(l.N, l.K));
    std::vector<int32_t> colsum(l.N);
    std::vector<float> row_scale(l.N);
    const int64_t dropped =
        cpu::pack_shift_panel(codes.data(), l.N, l.K, l.K, panel.data(), colsum.data(), row_scale.data());
    ShiftLinearArgs a;
    a.M = l.M, a.N = l.N, a.K = l.K, a.x = x.data(), a.ldx = l.K, a.codes = codes.data(), a.ldw = l.K;
    a.bias = bias.data(), a.ldy = l.N;
    a.panel.w = panel.data(), a.panel.colsum = colsum.data(), a.panel.row_scale = row_scale.data();
    std::vector<float> ye(static_cast<size_t>(l.M * l.N)), yf = ye;
    std::vector<uint8_t> work(cpu::shift_linear_work_bytes(a));
    a.work = work.data();
    pool.reserve_scratch(cpu::shift_linear_scratch_bytes(a));
    a.y = ye.data(), a.mode = ShiftMode::Exact;
    cpu::shift_linear(a, pool);
    a.y = yf.data(), a.mode = ShiftMode::Fast;
    pool.reserve_scratch(cpu::shift_linear_scratch_bytes(a));
    cpu::shift_linear(a, pool);
    double diff = 0, sq = 0, ref = 0, ref_sq = 0;
    for (size_t i = 0; i < ye.size(); ++i) {
      const double d = std::fabs(static_cast<double>(yf[i]) - ye[i]);
      diff = std::max(diff, d), sq += d * d, ref = std::max(ref, std::fabs(static_cast<double>(ye[i])));
      ref_sq += static_cast<double>(ye[i]) * ye[i];
    }
    const double rms_rel = std::sqrt(sq / ref_sq);
    std::printf("[ fast vs exact ] %-26s M=%-5lld K=%-5lld N=%-4lld dropped %5.2f%%  max rel %.2e  rms rel %.2e\n",
                l.name, (long long)l.M, (long long)l.K, (long long)l.N,
                100.0 * dropped / static_cast<double>(l.N * l.K), diff / ref, rms_rel);
    // int8 activations (step amax / 127) and the dropped tail: ~1% of the layer's RMS.
    EXPECT_LE(rms_rel, 0.03) << l.name;
  }
}

// ----- KSH -----------------------------------------------------------------------------------

struct KshShape {
  int64_t B, H, N, d, m, nbits, streams;
};
const KshShape kKsh[] = {{1, 1, 1, 1, 1, 1, 1},       {2, 2, 7, 8, 25, 16, 2},   {1, 1, 3136, 32, 25, 16, 1},
                         {2, 2, 784, 32, 25, 16, 1},   {2, 5, 197, 17, 25, 16, 2}, {1, 3, 50, 8, 7, 40, 1},
                         {1, 2, 33, 16, 25, 64, 2},    {1, 3, 197, 64, 25, 16, 2}, {1, 1, 70, 20, 70, 16, 1},
                         {2, 1, 65, 40, 49, 33, 2}};

// Raw (unnormalised) rows as the kernels take them, a few of them zero; streams side by side.
void make_ksh(const KshShape& s, Rng& rng, std::vector<float>& qk, std::vector<float>& anc,
              std::vector<float>& mvec, std::vector<float>& A, KshArgs& a) {
  const int64_t C = s.H * s.d, ld = s.streams * C + 3;
  qk = rnd(rng, s.B * s.N * ld, 3.0f);
  if (s.N > 5)
    for (int64_t c = 0; c < s.d; ++c) qk[5 * ld + c] = 0.0f;  // token 5, head 0 of stream 0
  anc = rnd(rng, s.H * s.m * s.d, 0.3f);
  mvec = rnd(rng, s.H * s.m, 0.5f);
  A = rnd(rng, s.H * s.nbits * s.m);
  a.B = s.B, a.H = s.H, a.N = s.N, a.d = s.d, a.m = s.m, a.nbits = s.nbits;
  a.qk = qk.data(), a.qk_ld = ld, a.qk_bstride = s.N * ld;
  a.streams = s.streams, a.stream_offset = C;
  a.anchors = anc.data(), a.mvec = mvec.data(), a.A = A.data();
}

TEST(KshHash, MatchesRef) {
  test::SimdGuard guard;
  for (const char* path : kPaths) {
    if (!cpu::set_simd(path)) continue;
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      double worst = 0;
      int flips = 0;
      for (const KshShape& s : kKsh) {
        Rng rng(static_cast<unsigned>(s.N * 31 + s.nbits));
        std::vector<float> qk, anc, mvec, A;
        KshArgs a;
        make_ksh(s, rng, qk, anc, mvec, A, a);
        const int64_t T = s.streams * s.B * s.H * s.N;
        std::vector<float> pre(T * s.nbits, kNaN), pre_ref = pre;
        std::vector<uint64_t> c64(T, ~0ull), c64r = c64;
        std::vector<uint16_t> c16(T, 0xFFFF), c16r = c16;
        KshArgs ar = a;
        a.preact = pre.data(), ar.preact = pre_ref.data();
        a.codes = s.nbits <= 16 ? static_cast<void*>(c16.data()) : c64.data();
        ar.codes = s.nbits <= 16 ? static_cast<void*>(c16r.data()) : c64r.data();
        ref::ksh_hash(ar);
        std::vector<std::byte> work(cpu::ksh_work_bytes(a));
        a.work = work.data();
        cpu::ksh_hash(a, pool);
        // With the layer's constants prepared once (as the graph does): the same results.
        {
          std::vector<std::byte> prepared(cpu::ksh_prepared_bytes(a) + 64);
          void* aligned = prepared.data() + (64 - reinterpret_cast<uintptr_t>(prepared.data()) % 64) % 64;
          cpu::ksh_prepare(a, aligned);
          KshArgs ap = a;
          std::vector<float> pre2(pre.size(), kNaN);
          std::vector<uint64_t> c64b(T, ~0ull);
          std::vector<uint16_t> c16b(T, 0xFFFF);
          ap.prepared = aligned, ap.preact = pre2.data();
          ap.codes = s.nbits <= 16 ? static_cast<void*>(c16b.data()) : c64b.data();
          cpu::ksh_hash(ap, pool);
          ASSERT_EQ(std::memcmp(pre2.data(), pre.data(), pre.size() * 4), 0) << path;
          ASSERT_EQ(c16b, c16);
          ASSERT_EQ(c64b, c64);
        }
        double maxref = 0;
        for (float v : pre_ref) maxref = std::max(maxref, (double)std::fabs(v));
        for (int64_t t = 0; t < T; ++t) {
          const uint64_t got = s.nbits <= 16 ? c16[t] : c64[t];
          const uint64_t want = s.nbits <= 16 ? c16r[t] : c64r[t];
          for (int64_t k = 0; k < s.nbits; ++k) {
            const float p = pre[t * s.nbits + k], pr = pre_ref[t * s.nbits + k];
            ASSERT_FALSE(std::isnan(p)) << path << " t=" << t << " k=" << k;
            worst = std::max(worst, std::fabs((double)p - pr) / maxref);
            if (((got ^ want) >> k) & 1) {
              ++flips;
              EXPECT_LT(std::fabs(pr), 1e-5 * maxref) << "bit flip away from the boundary";
            }
          }
          if (s.nbits < 64) {
            EXPECT_EQ(got >> s.nbits, 0u);
          }
        }
      }
      EXPECT_LE(worst, 1e-5);
      std::printf("[ ksh %s %d thr ] preact max rel %.2e, boundary bit flips %d\n", path, threads,
                  worst, flips);
    }
  }
}

// ----- additive attention --------------------------------------------------------------------

TEST(AdditiveAttention, MatchesRef) {
  test::SimdGuard guard;
  struct S {
    int64_t B, H, N, d, nbits;
  };
  const S shapes[] = {{1, 1, 1, 1, 16}, {2, 2, 7, 8, 16},   {1, 1, 3136, 32, 16}, {2, 2, 784, 32, 16},
                      {2, 5, 197, 17, 16}, {1, 3, 50, 8, 40}, {1, 1, 9, 3, 64},     {1, 3, 197, 64, 16},
                      {3, 1, 300, 33, 13}};
  for (const char* path : kPaths) {
    if (!cpu::set_simd(path)) continue;
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      double worst = 0;
      for (const S& s : shapes)
      for (bool separate : {false, true}) {  // shared q = k codes (upstream), or query codes apart (ViT)
        Rng rng(static_cast<unsigned>(s.N + s.d + separate));
        const int64_t C = s.H * s.d, vld = 2 * C + 1, old = C + 2;
        std::vector<float> v = rnd(rng, s.B * s.N * vld), taps = rnd(rng, s.H * 9);
        const int64_t T = s.B * s.H * s.N;
        std::vector<uint16_t> c16(T), q16(T);
        std::vector<uint64_t> c64(T), q64(T);
        std::uniform_int_distribution<uint64_t> bits;
        for (int64_t t = 0; t < T; ++t) {
          const uint64_t r = bits(rng) | 1, rq = bits(rng);  // key codes never all zero
          c16[t] = static_cast<uint16_t>(r);
          c64[t] = s.nbits == 64 ? r : r & ((1ull << s.nbits) - 1);
          q16[t] = static_cast<uint16_t>(rq);
          q64[t] = s.nbits == 64 ? rq : rq & ((1ull << s.nbits) - 1);
        }
        AdditiveAttentionArgs a;
        a.B = s.B, a.H = s.H, a.N = s.N, a.d = s.d, a.nbits = s.nbits;
        a.codes = s.nbits <= 16 ? static_cast<const void*>(c16.data()) : c64.data();
        if (separate) a.qcodes = s.nbits <= 16 ? static_cast<const void*>(q16.data()) : q64.data();
        a.v = v.data() + C, a.v_ld = vld, a.v_bstride = s.N * vld;  // v is the 2nd half of a kv buffer
        a.taps = taps.data();
        a.o_ld = old, a.o_bstride = s.N * old;
        std::vector<float> out(s.B * s.N * old, kNaN), outr = out;
        AdditiveAttentionArgs ar = a;
        a.out = out.data(), ar.out = outr.data();
        ref::additive_attention(ar);
        pool.reserve_scratch(cpu::additive_attention_scratch_bytes(a));
        std::vector<std::byte> work(cpu::additive_attention_work_bytes(a, threads));
        a.work = work.data();
        cpu::additive_attention(a, pool);
        double md = 0, mr = 0;
        for (size_t i = 0; i < out.size(); ++i) {
          if (static_cast<int64_t>(i) % old >= C) {
            ASSERT_TRUE(std::isnan(out[i])) << "padding written";
            continue;
          }
          ASSERT_FALSE(std::isnan(out[i]));
          md = std::max(md, std::fabs((double)out[i] - outr[i]));
          mr = std::max(mr, std::fabs((double)outr[i]));
        }
        worst = std::max(worst, md / mr);
      }
      EXPECT_LE(worst, 1e-5);
      std::printf("[ additive_attention %s %d thr ] max rel %.2e\n", path, threads, worst);
    }
  }
}

// ----- MoE -----------------------------------------------------------------------------------

// The MoE combine in the expert epilogues (kernels.h Combine), on every SIMD path: y passed
// through a K = 1 GEMM against the weight 1 (the dense expert's epilogue) and through a fast
// shift layer (the shift expert's); LogExp within a few ulps of libm's log(exp(y) + eps) with
// its -36.04 floor and +inf above 88.72, Limits bit for bit, NaN kept.
TEST(MoeCombine, EveryPathInBothExpertEpilogues) {
  test::SimdGuard guard;
  std::vector<float> y;
  for (int i = -20000; i <= 20000; ++i) y.push_back(i * 5e-3f);
  for (float v : {-1e30f, -100.f, -88.f, -36.05f, -36.f, 80.f, 80.01f, 88.7228f, 88.72284f, 88.8f, 1e30f,
                  INFINITY, -INFINITY, kNaN, 0.0f, -0.0f})
    y.push_back(v);
  const int64_t M = static_cast<int64_t>(y.size());
  const float one = 1.0f;
  for (Combine c : {Combine::LogExp, Combine::Limits}) {
    std::vector<float> want(M);
    for (int64_t i = 0; i < M; ++i) want[i] = combine_value(y[i], c);
    for (const char* path : kPaths) {
      if (!cpu::set_simd(path)) continue;
      ThreadPool pool(2);
      pool.reserve_scratch(cpu::gemm_scratch_bytes());
      std::vector<float> got(M, 123.0f);
      GemmArgs g;
      g.M = M, g.N = 1, g.K = 1, g.A = y.data(), g.lda = 1, g.B = &one, g.ldb = 1, g.C = got.data(), g.ldc = 1;
      g.epi.combine = c;
      cpu::gemm(g, pool);
      for (int64_t i = 0; i < M; ++i) {
        if (std::isnan(want[i])) {
          ASSERT_TRUE(std::isnan(got[i])) << path << " y=" << y[i];
        } else if (std::isinf(want[i]) || c == Combine::Limits) {
          ASSERT_EQ(got[i], want[i]) << path << " y=" << y[i];
        } else {
          ASSERT_NEAR(got[i], want[i], 4e-7 * std::max(1.0f, std::fabs(want[i]))) << path << " y=" << y[i];
        }
      }
    }
  }
  // The shift expert's epilogue: ref and cpu agree bit for bit on Limits and within ulps on LogExp
  // (outputs spanning the floor and the overflow: scale 60 on activations of +-1).
  for (const char* path : kPaths) {
    if (!cpu::set_simd(path)) continue;
    ThreadPool pool(2);
    for (Combine c : {Combine::LogExp, Combine::Limits}) {
      Rng rng(77);
      Lin l;
      make_lin({64, 40, 64, 0, 1.0f}, ShiftMode::Fast, {true, false, false, true}, rng, l);
      for (float& s : l.scale) s *= 60.0f;
      l.a.combine = c;
      std::vector<float> out, outr;
      run_both(l, pool, out, outr);
      int floor_hits = 0, inf_hits = 0;
      for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i) {
        if (!written(l.a, i)) continue;
        floor_hits += outr[i] < -36.0f, inf_hits += std::isinf(outr[i]);
        if (c == Combine::Limits || std::isinf(outr[i])) {
          ASSERT_EQ(std::memcmp(&out[i], &outr[i], 4), 0) << path << " i=" << i << " " << out[i] << " " << outr[i];
        } else {
          ASSERT_NEAR(out[i], outr[i], 4e-7 * std::max(1.0f, std::fabs(outr[i]))) << path << " i=" << i;
        }
      }
      EXPECT_GT(floor_hits, 0);
      EXPECT_GT(inf_hits, 0);
    }
  }
}

TEST(MoeRouting, RouterPlanGather) {
  test::SimdGuard guard;
  for (const char* path : kPaths)
  for (int threads : {1, 2}) {
    if (!cpu::set_simd(path)) continue;
    ThreadPool pool(threads);
    for (int64_t M : {1, 7, 197, 3136})
      for (int64_t K : {1, 7, 64, 320}) {
        Rng rng(static_cast<unsigned>(M * 7 + K));
        const int64_t ldx = K + 1;
        std::vector<float> x = rnd(rng, M * ldx), Wg = rnd(rng, 2 * K), bg = rnd(rng, 2, 0.1f);
        RouterArgs a;
        a.M = M, a.K = K, a.x = x.data(), a.ldx = ldx, a.Wg = Wg.data(), a.bg = bg.data();
        std::vector<float> lg(2 * M, kNaN), lgr = lg;
        std::vector<uint8_t> e(M, 9), er(M, 9);
        RouterArgs ar = a;
        a.logits = lg.data(), a.expert = e.data(), ar.logits = lgr.data(), ar.expert = er.data();
        ref::moe_router(ar);
        cpu::moe_router(a, pool);
        for (int64_t m = 0; m < M; ++m) {
          ASSERT_NEAR(lg[2 * m], lgr[2 * m], 1e-5 * std::sqrt((double)K) + 1e-6);
          ASSERT_NEAR(lg[2 * m + 1], lgr[2 * m + 1], 1e-5 * std::sqrt((double)K) + 1e-6);
          EXPECT_EQ(e[m], lg[2 * m + 1] > lg[2 * m] ? 1 : 0);
          if (e[m] != er[m]) {
            EXPECT_LT(std::fabs(lgr[2 * m] - lgr[2 * m + 1]), 1e-4);
          }
        }
        // plan / gather / scatter / combine, with the reference's choices
        std::vector<int32_t> perm(M, -1), permr(M, -2);
        int64_t cnt[2], cntr[2];
        ref::moe_plan(M, er.data(), permr.data(), cntr);
        cpu::moe_plan(M, er.data(), perm.data(), cnt);
        ASSERT_EQ(perm, permr);
        ASSERT_EQ(cnt[0], cntr[0]);
        ASSERT_EQ(cnt[0] + cnt[1], M);
        for (int64_t i = 1; i < cnt[0]; ++i) ASSERT_LT(perm[i - 1], perm[i]);
        for (int64_t i = 0; i < M; ++i) ASSERT_EQ(er[perm[i]], i < cnt[0] ? 0 : 1);
      }
  }
  // Ties go to expert 0.
  ThreadPool pool(1);
  const float x[2] = {1.f, 1.f}, Wg[4] = {1.f, 2.f, 2.f, 1.f};
  float lg[2];
  uint8_t e = 7, er = 7;
  RouterArgs a;
  a.M = 1, a.K = 2, a.x = x, a.ldx = 2, a.Wg = Wg, a.logits = lg, a.expert = &e;
  cpu::moe_router(a, pool);
  a.expert = &er;
  ref::moe_router(a);
  EXPECT_EQ(e, 0);
  EXPECT_EQ(er, 0);
  EXPECT_EQ(combine_value(0.f, Combine::LogExp), 0.f);
  EXPECT_NEAR(combine_value(-50.f, Combine::LogExp), kCombineFloor, 1e-6);
  EXPECT_TRUE(std::isinf(combine_value(kCombineMax * 1.000001f, Combine::LogExp)));
  EXPECT_FALSE(std::isinf(combine_value(kCombineMax, Combine::LogExp)));
}

}  // namespace
}  // namespace shiftadd::kernels
