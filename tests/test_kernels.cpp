// Kernel harness: every kernel of a backend under test against the ref:: oracle, over a table
// of shapes, for several thread counts.
//
// - Inputs are random in +-[0.05, 1] (never zero, so a skipped term always shows).
// - Outputs, including the padding of strided outputs, are poisoned with NaN first, so an
//   element the kernel failed to write fails the comparison, and so does a write outside the
//   logical output (the padding must still be NaN afterwards). The exception is the GEMM
//   epilogue with residual == C, where C holds the residual on entry.
// - Error = max |out - ref| / max |ref| over the output. Bounds (all far above what correct
//   float kernels produce, far below what any indexing bug produces):
//     GEMM / conv2d (K = reduction length):  2e-6 * sqrt(K) + 2e-6
//     attention, layernorm:                  1e-5
//     gelu, add, embed_tokens:               2e-6 (gelu: relative to max(max |ref|, 1))
//     dwconv3x3:                             1e-5 (relative to max(max |ref|, 1): fused GELU)
//     mean_tokens:                           2e-6 * sqrt(N) + 2e-6
//
// Adding an op = adding its cases to case_table() (and a pointer to Backend). Adding a backend
// (e.g. CUDA) = adding a row to backends().
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "kernels/kernels.h"
#include "test_util.h"

namespace shiftadd::kernels {
namespace {

// ----- backends under test -------------------------------------------------------------------

struct Backend {
  std::string name;
  bool (*activate)();  // selects the backend; false if this machine cannot run it
  size_t (*gemm_scratch)();
  size_t (*attention_scratch)(const AttentionArgs&);
  size_t (*conv2d_scratch)(const Conv2dArgs&);
  void (*gemm)(const GemmArgs&, ThreadPool&);
  void (*layernorm)(const LayerNormArgs&, ThreadPool&);
  void (*gelu)(int64_t, const float*, float*, ThreadPool&);
  void (*attention)(const AttentionArgs&, ThreadPool&);
  void (*conv2d)(const Conv2dArgs&, ThreadPool&);
  void (*embed_tokens)(const EmbedTokensArgs&, ThreadPool&);
  void (*add)(int64_t, const float*, const float*, float, float*, ThreadPool&);
  void (*dwconv3x3)(const DwConv3x3Args&, ThreadPool&);
  void (*mean_tokens)(const MeanTokensArgs&, ThreadPool&);
};

// gtest prints test parameters on failure; a backend prints as its name.
void PrintTo(const Backend& b, std::ostream* os) { *os << b.name; }

template <const char* Simd>
Backend cpu_backend(std::string name) {
  return {std::move(name),
          [] { return cpu::set_simd(Simd); },
          cpu::gemm_scratch_bytes,
          cpu::attention_scratch_bytes,
          cpu::conv2d_scratch_bytes,
          cpu::gemm,
          cpu::layernorm,
          cpu::gelu,
          cpu::attention,
          cpu::conv2d,
          cpu::embed_tokens,
          cpu::add,
          cpu::dwconv3x3,
          cpu::mean_tokens};
}

constexpr char kAvx512[] = "avx512", kAvx2[] = "avx2", kScalar[] = "scalar";

std::vector<Backend> backends() {
  return {cpu_backend<kAvx512>("cpu_avx512"), cpu_backend<kAvx2>("cpu_avx2"),
          cpu_backend<kScalar>("cpu_scalar")};
}

// ----- buffers and comparison ----------------------------------------------------------------

using Rng = std::mt19937;
using test::kNaN;

std::vector<float> random_vec(Rng& rng, int64_t n, float scale = 1.0f) { return test::random_input(n, rng, scale); }

std::vector<float> poisoned(int64_t n) { return std::vector<float>(static_cast<size_t>(n), kNaN); }

// Max |out - ref| / max(max |ref|, floor) over a rows x cols matrix with row stride ld;
// infinity if any element in it is NaN, or if anything in the padding between rows (or after
// the last row, up to the buffer's end) is no longer NaN.
double rel_error(const std::vector<float>& out, const std::vector<float>& ref, int64_t rows,
                 int64_t cols, int64_t ld, double floor = 1e-30) {
  double max_diff = 0.0, max_ref = 0.0;
  for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i) {
    const int64_t r = i / ld, c = i % ld;
    if (r >= rows || c >= cols) {
      if (!std::isnan(out[i])) return INFINITY;
      continue;
    }
    if (std::isnan(out[i])) return INFINITY;
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(out[i]) - ref[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[i])));
  }
  return max_diff / std::max(max_ref, floor);
}

double gemm_tolerance(int64_t K) { return 2e-6 * std::sqrt(static_cast<double>(K)) + 2e-6; }

// ----- the case table ------------------------------------------------------------------------

struct CaseResult {
  double error, tolerance;
};

struct OpCase {
  std::string op, shape;
  std::function<CaseResult(const Backend&, ThreadPool&, Rng&)> run;
};

enum class Residual { None, Separate, InPlace };

struct GemmShape {
  int64_t M, N, K;
  bool b_is_nk;
  int64_t pad = 0;  // added to lda, ldb, ldc (and ldr + 1)
  float alpha = 1.0f;
  bool bias = false, gelu = false;
  Residual residual = Residual::None;
  bool codes = false;    // B as shift codes (shift layers' exact mode)
  bool scale = false;    // per-column output scale
  bool rows = false;     // A rows read and C rows written through a_rows = c_rows (odd rows of 2M, reversed)
  bool prepacked = false;  // B packed beforehand (cpu::gemm_pack_b); B itself then poisoned
};

OpCase gemm_case(GemmShape s) {
  char shape[200];
  std::snprintf(shape, sizeof shape, "M=%lld N=%lld K=%lld %s pad=%lld alpha=%g%s%s%s%s%s%s",
                (long long)s.M, (long long)s.N, (long long)s.K,
                s.codes ? "B=codes[N,K]" : s.b_is_nk ? "B[N,K]" : "B[K,N]", (long long)s.pad, s.alpha,
                s.scale ? " *scale" : "", s.bias ? " +bias" : "", s.gelu ? " gelu" : "",
                s.residual == Residual::Separate  ? " +residual"
                : s.residual == Residual::InPlace ? " +=C"
                                                  : "",
                s.rows ? " a_rows=c_rows" : "", s.prepacked ? " prepacked" : "");
  return {"gemm", shape, [s](const Backend& be, ThreadPool& pool, Rng& rng) {
            const int64_t lda = s.K + s.pad, ldb = (s.b_is_nk ? s.K : s.N) + s.pad;
            const int64_t ldc = s.N + s.pad, ldr = s.N + s.pad + 1;
            const int64_t crows = s.rows ? 2 * s.M : s.M;  // rows of the C buffer
            const std::vector<float> A = random_vec(rng, crows * lda);
            const std::vector<float> B = random_vec(rng, (s.b_is_nk ? s.N : s.K) * ldb);
            std::vector<uint8_t> codes(static_cast<size_t>(s.N * ldb));
            std::uniform_int_distribution<int> code(0, 31);
            for (uint8_t& c : codes) c = static_cast<uint8_t>(code(rng));
            const std::vector<float> bias = random_vec(rng, s.N), scale = random_vec(rng, s.N);
            const std::vector<float> res = random_vec(rng, crows * ldr);
            std::vector<int32_t> c_rows(static_cast<size_t>(s.M));
            for (int64_t m = 0; m < s.M; ++m) c_rows[m] = static_cast<int32_t>(2 * (s.M - 1 - m) + 1);
            auto row = [&](int64_t m) { return s.rows ? c_rows[m] : m; };
            std::vector<float> C = poisoned(crows * ldc);
            if (s.residual == Residual::InPlace)
              for (int64_t m = 0; m < s.M; ++m)
                std::copy_n(res.begin() + row(m) * ldr, s.N, C.begin() + row(m) * ldc);
            std::vector<float> C_ref = C;

            GemmArgs g;
            g.M = s.M, g.N = s.N, g.K = s.K;
            g.A = A.data(), g.lda = lda;
            g.B = s.codes ? nullptr : B.data(), g.ldb = ldb, g.b_is_nk = s.b_is_nk;
            g.B_codes = s.codes ? codes.data() : nullptr;
            g.ldc = ldc;
            g.a_rows = g.c_rows = s.rows ? c_rows.data() : nullptr;
            g.alpha = s.alpha;
            g.epi.scale = s.scale ? scale.data() : nullptr;
            g.epi.bias = s.bias ? bias.data() : nullptr;
            g.epi.gelu = s.gelu;
            GemmArgs g_ref = g;
            g.C = C.data(), g_ref.C = C_ref.data();
            if (s.residual == Residual::Separate) {
              g.epi.residual = g_ref.epi.residual = res.data();
              g.epi.ldr = g_ref.epi.ldr = ldr;
            } else if (s.residual == Residual::InPlace) {
              g.epi.residual = g.C, g_ref.epi.residual = g_ref.C;
              g.epi.ldr = g_ref.epi.ldr = ldc;
            }
            ref::gemm(g_ref);
            pool.reserve_scratch(be.gemm_scratch());
            // Prepacked: the kernels must read the panels only, so B is swapped for NaNs (or
            // other codes) once packed.
            Tensor panels;  // 64-byte aligned, as the packed kernels read it
            std::vector<float> poisoned_B;
            std::vector<uint8_t> other_codes;
            if (s.prepacked) {
              panels = Tensor::empty(DType::F32, {cpu::gemm_packed_b_floats(g)});
              g.B_packed_nr = cpu::gemm_pack_b(g, panels.data<float>());
              g.B_packed = panels.data<float>();
              poisoned_B = poisoned(static_cast<int64_t>(B.size()));
              other_codes.assign(codes.size(), 3);
              if (g.B) g.B = poisoned_B.data();
              if (g.B_codes) g.B_codes = other_codes.data();
            }
            be.gemm(g, pool);
            if (!s.rows) return CaseResult{rel_error(C, C_ref, s.M, s.N, ldc), gemm_tolerance(s.K)};
            // Scattered rows: the even rows must be untouched (NaN), the odd ones compared.
            std::vector<float> even, odd = poisoned(s.M * ldc), odd_ref = odd;
            for (int64_t r = 0; r < crows; ++r) {
              const auto src = C.begin() + r * ldc;
              if (r % 2 == 0) {
                even.insert(even.end(), src, src + ldc);
              } else {
                std::copy_n(src, ldc, odd.begin() + r / 2 * ldc);
                std::copy_n(C_ref.begin() + r * ldc, ldc, odd_ref.begin() + r / 2 * ldc);
              }
            }
            for (float v : even)
              if (!std::isnan(v)) return CaseResult{INFINITY, 0.0};
            return CaseResult{rel_error(odd, odd_ref, s.M, s.N, ldc), gemm_tolerance(s.K)};
          }};
}

OpCase layernorm_case(int64_t rows, int64_t cols, int64_t pad) {
  return {"layernorm",
          "rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) +
              " pad=" + std::to_string(pad),
          [=](const Backend& be, ThreadPool& pool, Rng& rng) {
            LayerNormArgs a;
            a.rows = rows, a.cols = cols, a.ldx = cols + pad, a.ldy = cols + 2 * pad;
            // An offset keeps the mean away from zero, as in real activations.
            std::vector<float> x = random_vec(rng, rows * a.ldx);
            for (float& v : x) v += 0.5f;
            const std::vector<float> g = random_vec(rng, cols), b = random_vec(rng, cols);
            std::vector<float> y = poisoned(rows * a.ldy), y_ref = y;
            a.x = x.data(), a.gamma = g.data(), a.beta = b.data(), a.eps = 1e-6f;
            LayerNormArgs a_ref = a;
            a.y = y.data(), a_ref.y = y_ref.data();
            ref::layernorm(a_ref);
            be.layernorm(a, pool);
            return CaseResult{rel_error(y, y_ref, rows, cols, a.ldy), 1e-5};
          }};
}

OpCase gelu_case(int64_t n, float scale) {
  return {"gelu", "n=" + std::to_string(n) + " range=+-" + std::to_string(scale),
          [=](const Backend& be, ThreadPool& pool, Rng& rng) {
            const std::vector<float> x = random_vec(rng, n, scale);
            std::vector<float> y = poisoned(n), y_ref = y;
            ref::gelu(n, x.data(), y_ref.data());
            be.gelu(n, x.data(), y.data(), pool);
            // GELU's tail for x << 0 is ~0, where only an absolute error is meaningful.
            return CaseResult{rel_error(y, y_ref, 1, n, n, 1.0), 2e-6};
          }};
}

OpCase add_case(int64_t n, float alpha) {
  return {"add", "n=" + std::to_string(n) + " alpha=" + std::to_string(alpha),
          [=](const Backend& be, ThreadPool& pool, Rng& rng) {
            const std::vector<float> a = random_vec(rng, n), b = random_vec(rng, n);
            std::vector<float> y = poisoned(n), y_ref = y;
            ref::add(n, a.data(), b.data(), alpha, y_ref.data());
            be.add(n, a.data(), b.data(), alpha, y.data(), pool);
            return CaseResult{rel_error(y, y_ref, 1, n, n), 2e-6};
          }};
}

OpCase embed_case(int64_t B, int64_t Np, int64_t P, int64_t C, bool pos) {
  char shape[96];
  std::snprintf(shape, sizeof shape, "B=%lld Np=%lld P=%lld C=%lld%s", (long long)B, (long long)Np,
                (long long)P, (long long)C, pos ? " +pos" : "");
  return {"embed_tokens", shape, [=](const Backend& be, ThreadPool& pool, Rng& rng) {
            const std::vector<float> patches = random_vec(rng, B * Np * C);
            const std::vector<float> prefix = random_vec(rng, P * C);
            const std::vector<float> posv = random_vec(rng, (P + Np) * C);
            std::vector<float> out = poisoned(B * (P + Np) * C), out_ref = out;
            EmbedTokensArgs a;
            a.B = B, a.Np = Np, a.P = P, a.C = C;
            a.patches = patches.data(), a.prefix = prefix.data(),
            a.pos = pos ? posv.data() : nullptr;
            EmbedTokensArgs a_ref = a;
            a.out = out.data(), a_ref.out = out_ref.data();
            ref::embed_tokens(a_ref);
            be.embed_tokens(a, pool);
            return CaseResult{rel_error(out, out_ref, B * (P + Np), C, C), 2e-6};
          }};
}

// Nq == Nkv: q, k, v interleaved in one [B, N, 3*H*d] buffer as a fused QKV projection leaves
// them; otherwise q and a [B, Nkv, 2*H*d] kv buffer (PVT's spatial-reduction attention).
OpCase attention_case(int64_t B, int64_t H, int64_t Nq, int64_t Nkv, int64_t d, float scale) {
  char shape[128];
  std::snprintf(shape, sizeof shape, "B=%lld H=%lld Nq=%lld Nkv=%lld d=%lld scale=%g", (long long)B,
                (long long)H, (long long)Nq, (long long)Nkv, (long long)d, scale);
  return {"attention", shape, [=](const Backend& be, ThreadPool& pool, Rng& rng) {
            const int64_t C = H * d, pad = 3;
            AttentionArgs a;
            a.B = B, a.H = H, a.Nq = Nq, a.Nkv = Nkv, a.d = d, a.scale = scale;
            std::vector<float> q, kv;
            if (Nq == Nkv) {
              q = random_vec(rng, B * Nq * (3 * C + pad));
              a.q = q.data(), a.q_ld = 3 * C + pad, a.q_bstride = Nq * a.q_ld;
              a.k = a.q + C, a.v = a.q + 2 * C;
              a.k_ld = a.v_ld = a.q_ld, a.k_bstride = a.v_bstride = a.q_bstride;
            } else {
              q = random_vec(rng, B * Nq * C);
              kv = random_vec(rng, B * Nkv * (2 * C + pad));
              a.q = q.data(), a.q_ld = C, a.q_bstride = Nq * C;
              a.k = kv.data(), a.v = kv.data() + C;
              a.k_ld = a.v_ld = 2 * C + pad, a.k_bstride = a.v_bstride = Nkv * a.k_ld;
            }
            a.o_ld = C + pad, a.o_bstride = Nq * a.o_ld;
            std::vector<float> out = poisoned(B * a.o_bstride), out_ref = out;
            AttentionArgs a_ref = a;
            a.out = out.data(), a_ref.out = out_ref.data();
            ref::attention(a_ref);
            pool.reserve_scratch(be.attention_scratch(a));
            be.attention(a, pool);
            return CaseResult{rel_error(out, out_ref, B * Nq, C, a.o_ld), 1e-5};
          }};
}

// channels_last: the input is token-major [B, H*W, Cin] (PVT's stage stems and sr convs).
OpCase conv_case(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t k,
                 int64_t stride, int64_t pad, bool bias, bool channels_last = false) {
  char shape[160];
  std::snprintf(shape, sizeof shape, "B=%lld Cin=%lld %lldx%lld Cout=%lld k=%lld s=%lld p=%lld%s%s",
                (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Cout,
                (long long)k, (long long)stride, (long long)pad, bias ? " +bias" : "",
                channels_last ? " tokens" : "");
  return {
      "conv2d", shape, [=](const Backend& be, ThreadPool& pool, Rng& rng) {
        Conv2dArgs a;
        a.B = B, a.Cin = Cin, a.H = H, a.W = W, a.Cout = Cout, a.kh = a.kw = k;
        a.stride = stride, a.pad = pad, a.channels_last = channels_last;
        const std::vector<float> x = random_vec(rng, B * Cin * H * W);
        const std::vector<float> w = random_vec(rng, Cout * Cin * k * k);
        const std::vector<float> b = random_vec(rng, Cout);
        const int64_t rows = B * a.OH() * a.OW();
        std::vector<float> out = poisoned(rows * Cout), out_ref = out;
        a.x = x.data(), a.w = w.data(), a.bias = bias ? b.data() : nullptr;
        Conv2dArgs a_ref = a;
        a.out = out.data(), a_ref.out = out_ref.data();
        ref::conv2d(a_ref);
        pool.reserve_scratch(be.conv2d_scratch(a));
        be.conv2d(a, pool);
        return CaseResult{rel_error(out, out_ref, rows, Cout, Cout), gemm_tolerance(Cin * k * k)};
      }};
}

OpCase dwconv_case(int64_t B, int64_t H, int64_t W, int64_t C, bool bias, bool gelu) {
  char shape[128];
  std::snprintf(shape, sizeof shape, "B=%lld %lldx%lld C=%lld%s%s", (long long)B, (long long)H,
                (long long)W, (long long)C, bias ? " +bias" : "", gelu ? " gelu" : "");
  return {"dwconv3x3", shape, [=](const Backend& be, ThreadPool& pool, Rng& rng) {
            const std::vector<float> x = random_vec(rng, B * H * W * C);
            const std::vector<float> w = random_vec(rng, 9 * C), b = random_vec(rng, C);
            std::vector<float> out = poisoned(B * H * W * C), out_ref = out;
            DwConv3x3Args a;
            a.B = B, a.H = H, a.W = W, a.C = C, a.gelu = gelu;
            a.x = x.data(), a.w = w.data(), a.bias = bias ? b.data() : nullptr;
            DwConv3x3Args a_ref = a;
            a.out = out.data(), a_ref.out = out_ref.data();
            ref::dwconv3x3(a_ref);
            be.dwconv3x3(a, pool);
            return CaseResult{rel_error(out, out_ref, B * H * W, C, C, 1.0), 1e-5};
          }};
}

OpCase mean_case(int64_t B, int64_t N, int64_t C) {
  char shape[96];
  std::snprintf(shape, sizeof shape, "B=%lld N=%lld C=%lld", (long long)B, (long long)N,
                (long long)C);
  return {"mean_tokens", shape, [=](const Backend& be, ThreadPool& pool, Rng& rng) {
            std::vector<float> x = random_vec(rng, B * N * C);
            for (float& v : x) v += 0.5f;  // keep the mean away from zero
            std::vector<float> out = poisoned(B * C), out_ref = out;
            MeanTokensArgs a;
            a.B = B, a.N = N, a.C = C, a.x = x.data();
            MeanTokensArgs a_ref = a;
            a.out = out.data(), a_ref.out = out_ref.data();
            ref::mean_tokens(a_ref);
            be.mean_tokens(a, pool);
            return CaseResult{rel_error(out, out_ref, B, C, C), gemm_tolerance(N)};
          }};
}

std::vector<OpCase> case_table() {
  std::vector<OpCase> t;
  // GEMM edges: every small M x N x K mix of 1, 7 and non-multiples of the vector widths,
  // cycling through layouts, strides, alpha and epilogues.
  int i = 0;
  for (int64_t M : {1, 2, 7, 15, 29})
    for (int64_t N : {1, 7, 16, 17, 33, 47})
      for (int64_t K : {1, 7, 16, 65}) {
        GemmShape s{M, N, K, i % 2 == 0};
        s.pad = i % 3 == 0 ? 0 : 5;
        s.alpha = i % 4 == 0 ? 0.75f : 1.0f;
        s.bias = i % 5 != 0, s.gelu = i % 3 == 1;
        s.residual = static_cast<Residual>(i % 3);
        t.push_back(gemm_case(s));
        ++i;
      }
  // Every epilogue combination, with one K block and with several (K > 256), N > one NC block.
  for (int64_t K : {40, 530})
    for (bool nk : {true, false})
      for (bool bias : {false, true})
        for (bool gelu : {false, true})
          for (Residual r : {Residual::None, Residual::Separate, Residual::InPlace}) {
            GemmShape s{70, 530, K, nk, 3, 1.0f, bias, gelu, r};
            t.push_back(gemm_case(s));
          }
  // DeiT-Tiny's linears, with the epilogues the model uses (qkv, proj += x, fc1 gelu, fc2 += x).
  for (bool nk : {true, false}) {
    t.push_back(gemm_case({197, 576, 192, nk, 0, 1.0f, true, false, Residual::None}));
    t.push_back(gemm_case({197, 192, 192, nk, 0, 1.0f, true, false, Residual::InPlace}));
    t.push_back(gemm_case({197, 768, 192, nk, 0, 1.0f, true, true, Residual::None}));
    t.push_back(gemm_case({197, 192, 768, nk, 0, 1.0f, true, false, Residual::InPlace}));
  }
  t.push_back(gemm_case({3136, 64, 64, true, 0, 1.0f, true, true, Residual::Separate}));
  // Shift layers' exact mode (B decoded from codes, output scale) and the MoE dense expert's rows
  // read and written in place (a_rows, c_rows).
  for (bool rows : {false, true}) {
    t.push_back(gemm_case({197, 192, 768, true, 0, 1.0f, true, false, Residual::None, true, true, rows}));
    t.push_back(gemm_case({33, 70, 300, true, 3, 1.0f, true, true, Residual::None, true, false, rows}));
    t.push_back(gemm_case({5, 17, 9, true, 1, 0.5f, false, false, Residual::Separate, true, true, rows}));
    t.push_back(gemm_case({97, 40, 500, true, 0, 1.0f, true, true, Residual::InPlace, false, true, rows}));
    t.push_back(gemm_case({64, 33, 200, true, 2, 1.0f, true, false, Residual::InPlace, true, false, rows}));
  }
  t.push_back(gemm_case({3136, 7, 300, true, 9, 0.5f, true, false, Residual::None}));
  t.push_back(gemm_case({1, 1000, 192, true, 0, 1.0f, true, false, Residual::None}));
  t.push_back(gemm_case({7, 1100, 100, false, 1, 1.0f, false, false, Residual::None}));
  // B packed once per layer (the CPU backend at planning): one and several K blocks, N beyond
  // one NC block and off the panel width, both B layouts, codes, rows, every epilogue kind.
  for (GemmShape s : {GemmShape{1, 1000, 192, true, 0, 1.0f, true, false, Residual::None},
                      GemmShape{70, 530, 530, true, 3, 1.0f, true, true, Residual::InPlace},
                      GemmShape{70, 530, 530, false, 3, 0.75f, false, false, Residual::Separate},
                      GemmShape{29, 47, 65, true, 5, 1.0f, true, false, Residual::InPlace},
                      GemmShape{197, 192, 768, true, 0, 1.0f, true, false, Residual::None, true, true, true},
                      GemmShape{33, 70, 300, true, 3, 1.0f, true, true, Residual::None, true, false, false},
                      GemmShape{5, 17, 9, true, 1, 0.5f, false, false, Residual::Separate, false, true, true},
                      GemmShape{3136, 7, 300, true, 9, 0.5f, true, false, Residual::None}}) {
    s.prepacked = true;
    t.push_back(gemm_case(s));
  }

  for (int64_t rows : {1, 7, 16, 33, 197, 3136})
    for (int64_t cols : {1, 7, 17, 32, 64, 128, 129, 192, 768})
      if (rows * cols <= 3136 * 192) t.push_back(layernorm_case(rows, cols, cols % 2 ? 3 : 0));

  for (int64_t n : {1, 7, 16, 17, 1000, 197 * 768}) {
    t.push_back(gelu_case(n, 1.0f));
    t.push_back(gelu_case(n, 6.0f));
  }
  for (int64_t n : {1, 7, 17, 1000, 197 * 192}) t.push_back(add_case(n, n % 2 ? 1.0f : 0.5f));

  for (bool pos : {false, true}) {
    t.push_back(embed_case(1, 196, 1, 192, pos));
    t.push_back(embed_case(2, 7, 2, 7, pos));
    t.push_back(embed_case(3, 1, 1, 1, pos));
  }

  t.push_back(attention_case(1, 3, 197, 197, 64, 0.125f));
  t.push_back(attention_case(2, 2, 7, 7, 8, 4.0f));  // large scale: softmax must subtract max
  t.push_back(attention_case(1, 1, 1, 1, 1, 1.0f));
  t.push_back(attention_case(2, 2, 70, 49, 32, 0.2f));
  t.push_back(attention_case(1, 1, 3136, 49, 64, 0.125f));
  t.push_back(attention_case(1, 5, 130, 300, 17, 0.3f));

  t.push_back(conv_case(1, 3, 224, 224, 192, 16, 16, 0, true));  // ViT patch embedding
  t.push_back(conv_case(1, 3, 224, 224, 64, 7, 4, 3, true));     // PVTv2 stage-1 stem
  t.push_back(conv_case(1, 64, 56, 56, 128, 3, 2, 1, true));     // PVTv2 stage-2 stem
  t.push_back(conv_case(2, 3, 11, 13, 5, 3, 2, 1, false));
  t.push_back(conv_case(1, 2, 7, 7, 3, 7, 4, 3, true));
  t.push_back(conv_case(2, 1, 5, 5, 1, 1, 1, 0, true));
  t.push_back(conv_case(1, 4, 33, 31, 17, 4, 4, 0, true));  // kernel == stride, ragged edge
  // Token-major input: PVTv2-b0 stage stems (k3 s2 p1) and spatial-reduction convs (k = s = sr).
  t.push_back(conv_case(1, 32, 56, 56, 64, 3, 2, 1, true, true));
  t.push_back(conv_case(2, 64, 28, 28, 160, 3, 2, 1, true, true));
  t.push_back(conv_case(1, 32, 56, 56, 32, 8, 8, 0, true, true));
  t.push_back(conv_case(2, 64, 28, 28, 64, 4, 4, 0, true, true));
  t.push_back(conv_case(2, 5, 11, 13, 7, 3, 2, 1, false, true));
  t.push_back(conv_case(1, 3, 9, 7, 2, 2, 2, 0, true, true));
  t.push_back(conv_case(1, 1, 1, 1, 1, 3, 2, 1, true, true));

  // PVTv2 MLP DWConv (b0 hidden sizes), with and without GELU; odd sizes and tiny grids.
  t.push_back(dwconv_case(1, 56, 56, 256, true, true));
  t.push_back(dwconv_case(2, 14, 14, 640, true, true));
  t.push_back(dwconv_case(2, 7, 7, 1024, true, false));
  t.push_back(dwconv_case(3, 5, 3, 17, false, true));
  t.push_back(dwconv_case(1, 1, 1, 7, true, false));
  t.push_back(dwconv_case(2, 1, 9, 33, true, true));
  t.push_back(dwconv_case(1, 8, 1, 8, false, false));
  t.push_back(dwconv_case(2, 9, 19, 33, true, true));  // rows of several 8-token sweeps, a 1-lane tail

  for (int64_t B : {1, 3})
    for (int64_t N : {1, 7, 49, 3136})
      for (int64_t C : {1, 17, 256}) t.push_back(mean_case(B, N, C));
  return t;
}

// ----- the test ------------------------------------------------------------------------------

const std::vector<OpCase>& cases() {
  static const std::vector<OpCase> table = case_table();
  return table;
}

using Param = std::tuple<Backend, int, std::string>;  // backend, threads, op

class KernelTest : public ::testing::TestWithParam<Param> {};

TEST_P(KernelTest, MatchesReference) {
  const auto& [backend, threads, op] = GetParam();
  // Backends select a CPU SIMD path process-wide; put back the default for the tests after us.
  test::SimdGuard restore;
  if (!backend.activate()) GTEST_SKIP() << backend.name << " is not supported here";
  ThreadPool pool(threads);
  double worst = 0.0, worst_ratio = 0.0;
  std::string worst_shape;
  int n = 0;
  for (size_t i = 0; i < cases().size(); ++i) {
    const OpCase& c = cases()[i];
    if (c.op != op) continue;
    Rng rng(static_cast<unsigned>(1000 + i));
    const CaseResult r = c.run(backend, pool, rng);
    EXPECT_LE(r.error, r.tolerance) << op << " " << c.shape;
    const double ratio = r.error / r.tolerance;
    if (ratio >= worst_ratio) worst = r.error, worst_ratio = ratio, worst_shape = c.shape;
    ++n;
  }
  ASSERT_GT(n, 0) << "no cases for " << op;
  RecordProperty("max_rel_error", std::to_string(worst));
  std::printf("[ %-10s %d thr %-12s ] %3d cases, max rel error %.2e (%.0f%% of bound, at %s)\n",
              backend.name.c_str(), threads, op.c_str(), n, worst, 100 * worst_ratio,
              worst_shape.c_str());
}

// A row's LayerNorm is the same bits whichever rows run with it (batch, thread split, block of
// 16 or tail): a model's output for an image must not depend on the batch it came in.
TEST(LayerNorm, RowResultDoesNotDependOnTheRowsAroundIt) {
  test::SimdGuard restore;
  for (const Backend& be : backends()) {
    if (!be.activate()) continue;
    for (int64_t cols : {32, 64, 192}) {
      constexpr int64_t kRows = 41;
      Rng rng(static_cast<unsigned>(cols));
      const std::vector<float> x = random_vec(rng, kRows * cols), g = random_vec(rng, cols), b = random_vec(rng, cols);
      auto run = [&](int64_t r0, int64_t rows, int threads) {
        ThreadPool pool(threads);
        std::vector<float> y(static_cast<size_t>(rows * cols));
        LayerNormArgs a;
        a.rows = rows, a.cols = cols, a.x = x.data() + r0 * cols, a.ldx = cols;
        a.gamma = g.data(), a.beta = b.data(), a.eps = 1e-6f, a.y = y.data(), a.ldy = cols;
        be.layernorm(a, pool);
        return y;
      };
      const std::vector<float> all = run(0, kRows, 1);
      for (auto [r0, rows, threads] : {std::tuple<int64_t, int64_t, int>{0, kRows, 2}, {1, 3, 1}, {5, 17, 2},
                                       {16, 16, 1}, {17, 24, 3}, {40, 1, 1}}) {
        const std::vector<float> part = run(r0, rows, threads);
        ASSERT_EQ(0, std::memcmp(part.data(), all.data() + r0 * cols, part.size() * sizeof(float)))
            << be.name << " cols " << cols << " rows [" << r0 << ", " << r0 + rows << ") on " << threads << " threads";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Kernels, KernelTest,
    ::testing::Combine(::testing::ValuesIn(backends()), ::testing::Values(1, 2, 3),
                       ::testing::Values("gemm", "layernorm", "gelu", "add", "embed_tokens",
                                         "attention", "conv2d", "dwconv3x3", "mean_tokens")),
    [](const ::testing::TestParamInfo<Param>& info) {
      return std::get<0>(info.param).name + "_" + std::to_string(std::get<1>(info.param)) +
             "threads_" + std::get<2>(info.param);
    });

}  // namespace
}  // namespace shiftadd::kernels
