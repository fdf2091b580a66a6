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

#include "engine/shift_codes.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/shift_kernels.h"

namespace shiftadd::kernels {
namespace {

using Rng = std::mt19937;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> rnd(Rng& rng, int64_t n, float scale = 1.0f) {
  std::uniform_real_distribution<float> mag(0.05f, 1.0f);
  std::bernoulli_distribution neg(0.5);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = scale * (neg(rng) ? -mag(rng) : mag(rng));
  return v;
}

std::vector<uint8_t> random_codes(Rng& rng, int64_t n) {
  std::uniform_int_distribution<int> s(-14, 0), g(-1, 1);
  std::vector<uint8_t> c(static_cast<size_t>(n));
  for (auto& x : c) x = encode_shift(g(rng), s(rng));
  return c;
}

struct SimdGuard {
  std::string name = cpu::simd_name();
  ~SimdGuard() { cpu::set_simd(name.c_str()); }
};
const char* const kPaths[] = {"avx512", "avx2", "scalar"};

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
  v.push_back({3136, 64, 32, 1, 1.0f});
  v.push_back({49, 320, 1280, 0, 30.0f});  // large activations, long K
  v.push_back({5, 9, 40, 2, 50000.0f});    // saturating Q16.16 range
  return v;
}

void run_lin(const LinShape& s, ShiftMode mode, Rng& rng, std::vector<float>& x,
             std::vector<uint8_t>& codes, std::vector<float>& bias, ShiftLinearArgs& a) {
  x = rnd(rng, s.M * (s.K + s.pad), s.scale);
  codes = random_codes(rng, s.N * s.K);
  bias = rnd(rng, s.N, s.scale);
  a.M = s.M, a.N = s.N, a.K = s.K;
  a.x = x.data(), a.ldx = s.K + s.pad;
  a.codes = codes.data(), a.ldw = s.K;
  a.bias = bias.data();
  a.ldy = s.N + s.pad;
  a.mode = mode;
}

TEST(ShiftLinear, ExactMatchesRefBitForBit) {
  SimdGuard guard;
  for (const char* path : kPaths) {
    if (!cpu::set_simd(path)) continue;
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      unsigned seed = 0;
      for (const LinShape& s : lin_shapes()) {
        for (ShiftMode mode : {ShiftMode::Exact, ShiftMode::Fast}) {
          Rng rng(++seed);
          std::vector<float> x, bias;
          std::vector<uint8_t> codes;
          ShiftLinearArgs a;
          run_lin(s, mode, rng, x, codes, bias, a);
          std::vector<float> y(s.M * a.ldy, kNaN), yr = y;
          ShiftLinearArgs ar = a;
          ar.y = yr.data(), a.y = y.data();
          ref::shift_linear(ar);
          pool.reserve_scratch(cpu::shift_linear_scratch_bytes(a));
          cpu::shift_linear(a, pool);
          for (int64_t i = 0; i < static_cast<int64_t>(y.size()); ++i) {
            const bool inside = i % a.ldy < s.N;
            if (!inside) {
              ASSERT_TRUE(std::isnan(y[i])) << "padding written";
              continue;
            }
            ASSERT_EQ(std::memcmp(&y[i], &yr[i], 4), 0)
                << path << " " << threads << "thr M=" << s.M << " N=" << s.N << " K=" << s.K
                << " mode=" << (mode == ShiftMode::Exact ? "exact" : "fast") << " i=" << i
                << " got " << y[i] << " want " << yr[i];
          }
        }
      }
    }
  }
}

// Exact mode against an independent double-precision evaluation of upstream's float formula
// q(x) W^T + q(b), and the fast mode's deviation from exact.
TEST(ShiftLinear, ExactAgainstFloatFormulaAndFastDeviation) {
  ThreadPool pool(2);
  double worst_exact = 0, worst_fast = 0, worst_fast_abs = 0;
  unsigned seed = 100;
  for (const LinShape& s : lin_shapes()) {
    if (s.scale > 1000) continue;
    Rng rng(++seed);
    std::vector<float> x, bias;
    std::vector<uint8_t> codes;
    ShiftLinearArgs a;
    run_lin(s, ShiftMode::Exact, rng, x, codes, bias, a);
    std::vector<float> ye(s.M * a.ldy, kNaN), yf = ye;
    pool.reserve_scratch(cpu::shift_linear_scratch_bytes(a));
    a.y = ye.data();
    cpu::shift_linear(a, pool);
    a.y = yf.data(), a.mode = ShiftMode::Fast;
    cpu::shift_linear(a, pool);
    auto q = [](float v) {  // upstream's fp32 q()
      return std::clamp(std::floor(v * 65536.0f) / 65536.0f, -32768.0f, 32767.0f);
    };
    for (int64_t m = 0; m < s.M; ++m)
      for (int64_t n = 0; n < s.N; ++n) {
        double ref = q(bias[n]), mag = std::fabs(ref);
        for (int64_t k = 0; k < s.K; ++k) {
          const double t = static_cast<double>(q(x[m * a.ldx + k])) * decode_shift_weight(codes[n * s.K + k]);
          ref += t, mag += std::fabs(t);
        }
        const double e = std::fabs(ye[m * a.ldy + n] - ref) / std::max(mag, 1e-30);
        worst_exact = std::max(worst_exact, e);
        const double fe = std::fabs(static_cast<double>(yf[m * a.ldy + n]) - ye[m * a.ldy + n]);
        worst_fast_abs = std::max(worst_fast_abs, fe);
        worst_fast = std::max(worst_fast, fe / std::max(mag, 1e-30));
        EXPECT_LE(fe, (s.K + 1) * 0x1p-16 + 1e-6 * mag);
      }
  }
  EXPECT_LE(worst_exact, 1e-6);
  std::printf("[ shift_linear ] exact vs double formula: max rel %.2e (of sum |terms|); fast vs "
              "exact: max abs %.2e, max rel %.2e\n",
              worst_exact, worst_fast_abs, worst_fast);
}

// Fast mode's deviation per layer for PVTv2-b0 / b1 ShiftAddViT layer shapes (M = tokens of one
// 224x224 image), activations ~ N(0, 1) as after a LayerNorm, weights the shift codes of
// N(0, 1/K) dense weights (upstream's init: round(log2|w|)). Error relative to max |y| of the layer;
// docs/shiftadd.md quotes this table.
TEST(ShiftLinear, FastDeviationPerLayer) {
  ThreadPool pool(2);
  struct L { const char* name; int64_t M, K, N; };
  const L layers[] = {{"b0 stage1 to_qk/to_v/proj", 3136, 32, 32},   {"b0 stage1 fc1", 3136, 32, 256},
                      {"b0 stage1 fc2", 3136, 256, 32},              {"b0 stage2 fc1", 784, 64, 512},
                      {"b0 stage3 fc2", 196, 640, 160},              {"b0 stage4 fc2", 49, 1024, 256},
                      {"b1 stage1 fc1", 3136, 64, 512},              {"b1 stage4 fc2", 49, 2048, 512}};
  Rng rng(2024);
  for (const L& l : layers) {
    std::vector<float> x = rnd(rng, l.M * l.K), bias = rnd(rng, l.N, 0.1f);
    std::vector<uint8_t> codes(static_cast<size_t>(l.N * l.K));
    std::normal_distribution<float> nd(0.0f, 1.0f / std::sqrt(static_cast<float>(l.K)));
    for (uint8_t& c : codes) {
      const float w = nd(rng);
      c = pack_shift_weight(std::log2(std::fabs(w)), w > 0 ? 1.0f : -1.0f);
    }
    ShiftLinearArgs a;
    a.M = l.M, a.N = l.N, a.K = l.K, a.x = x.data(), a.ldx = l.K, a.codes = codes.data(), a.ldw = l.K;
    a.bias = bias.data(), a.ldy = l.N;
    std::vector<float> ye(static_cast<size_t>(l.M * l.N)), yf = ye;
    pool.reserve_scratch(cpu::shift_linear_scratch_bytes(a));
    a.y = ye.data(), a.mode = ShiftMode::Exact;
    cpu::shift_linear(a, pool);
    a.y = yf.data(), a.mode = ShiftMode::Fast;
    cpu::shift_linear(a, pool);
    double diff = 0, mean_diff = 0, ref = 0;
    for (size_t i = 0; i < ye.size(); ++i) {
      const double d = std::fabs(static_cast<double>(yf[i]) - ye[i]);
      diff = std::max(diff, d), mean_diff += d, ref = std::max(ref, std::fabs(static_cast<double>(ye[i])));
    }
    mean_diff /= static_cast<double>(ye.size());
    std::printf("[ fast vs exact ] %-28s M=%-5lld K=%-5lld N=%-4lld max abs %.2e  mean abs %.2e  "
                "max rel %.2e\n", l.name, (long long)l.M, (long long)l.K, (long long)l.N, diff, mean_diff,
                diff / ref);
    EXPECT_LE(diff, (l.K + 1) * 0x1p-16);
  }
}

TEST(ShiftLinear, Speed) {
  ThreadPool pool(1);
  Rng rng(7);
  const int64_t M = 3136, N = 64, K = 64 * 4;
  std::vector<float> x = rnd(rng, M * K), bias = rnd(rng, N), y(M * N);
  std::vector<uint8_t> codes = random_codes(rng, N * K);
  ShiftLinearArgs a;
  a.M = M, a.N = N, a.K = K, a.x = x.data(), a.ldx = K, a.codes = codes.data(), a.ldw = K;
  a.bias = bias.data(), a.y = y.data(), a.ldy = N;
  pool.reserve_scratch(cpu::shift_linear_scratch_bytes(a));
  for (ShiftMode mode : {ShiftMode::Exact, ShiftMode::Fast}) {
    a.mode = mode;
    cpu::shift_linear(a, pool);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 5; ++i) cpu::shift_linear(a, pool);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / 5;
    std::printf("[ shift_linear %s %s 1 thr ] M=%lld N=%lld K=%lld: %.2f ms, %.2f Gweight-ops/s\n",
                cpu::simd_name(), mode == ShiftMode::Exact ? "exact" : "fast", (long long)M,
                (long long)N, (long long)K, ms, M * N * K / ms / 1e6);
  }
}

// ----- KSH -----------------------------------------------------------------------------------

struct KshShape {
  int64_t B, H, N, d, m, nbits;
};
const KshShape kKsh[] = {{1, 1, 1, 1, 1, 1},    {2, 2, 7, 8, 25, 16},  {1, 1, 3136, 32, 25, 16},
                         {2, 2, 784, 32, 25, 16}, {2, 5, 197, 17, 25, 16}, {1, 3, 50, 8, 7, 40},
                         {1, 2, 33, 16, 25, 64}};

void make_ksh(const KshShape& s, Rng& rng, std::vector<float>& qk, std::vector<float>& anc,
              std::vector<float>& mvec, std::vector<float>& A, KshArgs& a) {
  const int64_t C = s.H * s.d, ld = C + 3;
  qk = rnd(rng, s.B * s.N * ld);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t h = 0; h < s.H; ++h) {
        float* r = qk.data() + (b * s.N + n) * ld + h * s.d;
        double nn = 0;
        for (int64_t c = 0; c < s.d; ++c) nn += r[c] * r[c];
        for (int64_t c = 0; c < s.d; ++c) r[c] = static_cast<float>(r[c] / std::sqrt(nn));
      }
  anc = rnd(rng, s.H * s.m * s.d, 0.3f);
  mvec = rnd(rng, s.H * s.m, 0.5f);
  A = rnd(rng, s.H * s.nbits * s.m);
  a.B = s.B, a.H = s.H, a.N = s.N, a.d = s.d, a.m = s.m, a.nbits = s.nbits;
  a.qk = qk.data(), a.qk_ld = ld, a.qk_bstride = s.N * ld;
  a.anchors = anc.data(), a.mvec = mvec.data(), a.A = A.data();
}

TEST(KshHash, MatchesRef) {
  SimdGuard guard;
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
        const int64_t T = s.B * s.H * s.N;
        std::vector<float> pre(T * s.nbits, kNaN), pre_ref = pre;
        std::vector<uint64_t> c64(T, ~0ull), c64r = c64;
        std::vector<uint16_t> c16(T, 0xFFFF), c16r = c16;
        KshArgs ar = a;
        a.preact = pre.data(), ar.preact = pre_ref.data();
        a.codes = s.nbits <= 16 ? static_cast<void*>(c16.data()) : c64.data();
        ar.codes = s.nbits <= 16 ? static_cast<void*>(c16r.data()) : c64r.data();
        ref::ksh_hash(ar);
        pool.reserve_scratch(cpu::ksh_scratch_bytes(a));
        cpu::ksh_hash(a, pool);
        double maxref = 0;
        for (float v : pre_ref) maxref = std::max(maxref, (double)std::fabs(v));
        for (int64_t t = 0; t < T; ++t) {
          const uint64_t got = s.nbits <= 16 ? c16[t] : c64[t];
          const uint64_t want = s.nbits <= 16 ? c16r[t] : c64r[t];
          for (int64_t k = 0; k < s.nbits; ++k) {
            const float p = pre[t * s.nbits + k], pr = pre_ref[t * s.nbits + k];
            ASSERT_FALSE(std::isnan(p));
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
  SimdGuard guard;
  struct S {
    int64_t B, H, N, d, nbits;
  };
  const S shapes[] = {{1, 1, 1, 1, 16}, {2, 2, 7, 8, 16}, {1, 1, 3136, 32, 16}, {2, 2, 784, 32, 16},
                      {2, 5, 197, 17, 16}, {1, 3, 50, 8, 40}, {1, 1, 9, 3, 64}};
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

TEST(MoeRouting, RouterPlanGatherScatterCombine) {
  for (int threads : {1, 2}) {
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
        std::vector<float> g(M * K, kNaN), gr = g;
        for (int ex = 0; ex < 2; ++ex) {
          const int64_t b = ex ? cnt[0] : 0, en = ex ? M : cnt[0];
          ref::moe_gather(b, en, K, perm.data(), x.data(), ldx, gr.data() + b * K, K);
          cpu::moe_gather(b, en, K, perm.data(), x.data(), ldx, g.data() + b * K, K, pool);
        }
        ASSERT_EQ(std::memcmp(g.data(), gr.data(), g.size() * 4), 0);
        for (bool comb : {false, true}) {
          std::vector<float> y = rnd(rng, M * K, 40.0f);  // reaches the -36.04 floor and beyond
          if (comb) y[0] = 100.0f;                          // -> +inf
          std::vector<float> o(M * ldx, kNaN), orf = o;
          for (int ex = 0; ex < 2; ++ex) {
            const int64_t b = ex ? cnt[0] : 0, en = ex ? M : cnt[0];
            ref::moe_scatter(b, en, K, perm.data(), y.data() + b * K, K, orf.data(), ldx, comb);
            cpu::moe_scatter(b, en, K, perm.data(), y.data() + b * K, K, o.data(), ldx, comb, pool);
          }
          ASSERT_EQ(std::memcmp(o.data(), orf.data(), o.size() * 4), 0);
          for (int64_t i = 0; i < M; ++i)
            for (int64_t c = 0; c < K; ++c) {
              const float src = y[i * K + c], got = o[perm[i] * ldx + c];
              if (!comb) {
                ASSERT_EQ(got, src);
              } else if (src > 89.f) {
                ASSERT_TRUE(std::isinf(got));
              } else if (src < -40.f) {
                ASSERT_NEAR(got, -36.04, 0.01);
              } else if (src > -20.f) {
                ASSERT_NEAR(got, src, 1e-5 * std::max(1.f, std::fabs(src)));
              }
            }
        }
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
  float c[3] = {0.f, -50.f, 1.f}, cr[3];
  ref::moe_combine(3, c, cr);
  EXPECT_EQ(cr[0], 0.f);
  EXPECT_NEAR(cr[1], -36.0437f, 1e-3);
}

}  // namespace
}  // namespace shiftadd::kernels
