// shiftadd_bench_kernels: the ShiftAdd kernels against the dense ones they replace, in one
// process on the same data, printing median times and ratios (docs/benchmarks.md).
//
//   shiftadd_bench_kernels [--threads N] [--runs R] [--only linear|attention|moe|dwconv] [--tokens N] [--batch B]
//                          [--layer TEXT]
//
// - linear: the fp32 GEMM of a dense Linear vs the shift linear in exact mode (fp32 GEMM of q(x)
//   against the decoded codes) and fast mode (int8 on the integer dot-product units), at the
//   DeiT-Tiny / DeiT-Small / PVTv2-b0 layer shapes, batch 1 and 8.
// - moe: an MoE linear (router, both experts, about half the tokens each) vs the dense linear.
// - dwconv: the PVTv2 MLP's depthwise 3x3 conv + GELU against a copy of its input.
// - attention: softmax attention vs KSH attention (normalise, hash q and k, additive attention,
//   dconv) on the same packed q|k|v, DeiT-Tiny heads (3 x 64), at token counts 64 .. 3136.
// Timings only; correctness is the tests' job (tests/test_shift_kernels.cpp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/executor.h"
#include "engine/graph.h"
#include "core/shift_codes.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/shift_kernels.h"

namespace {

using namespace shiftadd;
using namespace shiftadd::kernels;

int g_runs = 30;
int64_t g_tokens = 0;  // attention: only this token count (0: all)
int64_t g_batch = 1;   // attention: images per run
std::string g_layer;   // linear, moe: only layers whose name contains this

double median_ms(const std::function<void()>& fn) {
  for (int i = 0; i < 3; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < g_runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::vector<float> normal(std::mt19937& rng, size_t n, float sd) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

void bench_linear(int threads) {
  struct L {
    const char* name;
    int64_t M, K, N;
  };
  const L layers[] = {{"DeiT-Tiny qkv   b1", 197, 192, 576},   {"DeiT-Tiny proj  b1", 197, 192, 192},
                      {"DeiT-Tiny fc1   b1", 197, 192, 768},   {"DeiT-Tiny fc2   b1", 197, 768, 192},
                      {"DeiT-Tiny fc1   b8", 1576, 192, 768},  {"DeiT-Tiny fc2   b8", 1576, 768, 192},
                      {"DeiT-Small qkv  b1", 197, 384, 1152},  {"DeiT-Small fc2  b8", 1576, 1536, 384},
                      {"PVTv2-b0 s1 fc1 b1", 3136, 32, 256},   {"PVTv2-b0 s1 fc2 b1", 3136, 256, 32},
                      {"PVTv2-b0 s1 proj b1", 3136, 32, 32},   {"PVTv2-b0 s3 fc1 b1", 196, 160, 640}};
  std::printf("\n## shift linear vs dense linear (%d threads, median of %d runs)\n\n", threads, g_runs);
  std::printf("| layer (M tokens, K -> N) | dense fp32 ms | shift exact ms | shift fast ms | exact / dense | fast / dense | fast GMAC/s |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  ThreadPool pool(threads);
  std::mt19937 rng(1);
  for (const L& l : layers) {
    if (std::string(l.name).find(g_layer) == std::string::npos) continue;
    const std::vector<float> x = normal(rng, l.M * l.K, 1.0f), w = normal(rng, l.N * l.K, 1.0f / std::sqrt(float(l.K)));
    const std::vector<float> bias = normal(rng, l.N, 0.1f);
    std::vector<uint8_t> codes(w.size());
    for (size_t i = 0; i < w.size(); ++i) codes[i] = pack_shift_weight(std::log2(std::fabs(w[i])), w[i] > 0 ? 1.0f : -1.0f);
    std::vector<int8_t> panel(cpu::shift_panel_bytes(l.N, l.K));
    std::vector<int32_t> colsum(l.N);
    std::vector<float> row_scale(l.N), y(l.M * l.N);
    cpu::pack_shift_panel(codes.data(), l.N, l.K, l.K, panel.data(), colsum.data(), row_scale.data());
    GemmArgs g;
    g.M = l.M, g.N = l.N, g.K = l.K, g.A = x.data(), g.lda = l.K, g.B = w.data(), g.ldb = l.K, g.C = y.data();
    g.ldc = l.N, g.epi.bias = bias.data();
    ShiftLinearArgs s;
    s.M = l.M, s.N = l.N, s.K = l.K, s.x = x.data(), s.ldx = l.K, s.codes = codes.data(), s.ldw = l.K;
    s.bias = bias.data(), s.y = y.data(), s.ldy = l.N;
    s.panel.w = panel.data(), s.panel.colsum = colsum.data(), s.panel.row_scale = row_scale.data();
    std::vector<uint8_t> work;
    double ms[3];
    pool.reserve_scratch(cpu::gemm_scratch_bytes());
    ms[0] = median_ms([&] { cpu::gemm(g, pool); });
    for (ShiftMode mode : {ShiftMode::Exact, ShiftMode::Fast}) {
      s.mode = mode;
      work.resize(cpu::shift_linear_work_bytes(s));
      s.work = work.data();
      pool.reserve_scratch(cpu::shift_linear_scratch_bytes(s));
      ms[mode == ShiftMode::Exact ? 1 : 2] = median_ms([&] { cpu::shift_linear(s, pool); });
    }
    std::printf("| %s (%lld, %lld -> %lld) | %.3f | %.3f | %.3f | %.2fx | %.2fx | %.0f |\n", l.name, (long long)l.M,
                (long long)l.K, (long long)l.N, ms[0], ms[1], ms[2], ms[1] / ms[0], ms[2] / ms[0],
                double(l.M) * l.N * l.K / ms[2] / 1e6);
  }
}

// One KshAttention or Attention node on a packed q|k|v, run by the CPU backend.
void bench_attention(int threads) {
  const int64_t H = 3, d = 64, C = H * d, m = 25, nbits = 16;
  std::printf("\n## KSH attention vs softmax attention, %lld heads x %lld, packed q|k|v, batch %lld (%d threads, median of %d runs)\n\n",
              (long long)H, (long long)d, (long long)g_batch, threads, g_runs);
  std::printf("| tokens | softmax ms | KSH ms | KSH / softmax |\n|---|---|---|---|\n");
  std::mt19937 rng(2);
  const std::vector<float> anchor = normal(rng, H * m * d, 0.2f), mvec = normal(rng, H * m, 0.3f);
  const std::vector<float> A = normal(rng, H * nbits * m, 1.0f), taps = normal(rng, H * 9, 0.3f);
  auto f32 = [](const std::vector<float>& v, Shape s) {
    Tensor t = Tensor::empty(DType::F32, std::move(s));
    std::copy(v.begin(), v.end(), t.data<float>());
    return t;
  };
  for (int64_t N : {64, 128, 197, 256, 512, 785, 1024, 3136}) {
    if (g_tokens && N != g_tokens) continue;
    const std::vector<float> qkv = normal(rng, g_batch * N * 3 * C, 1.0f);
    std::vector<float> out(g_batch * N * C);
    double ms[2];
    for (int ksh = 0; ksh < 2; ++ksh) {
      Graph gr;
      const int x = gr.input({N, 3 * C});
      gr.set_output(ksh ? gr.ksh_attention_qkv(x, H, f32(anchor, {H, m, d}), f32(mvec, {H, m}),
                                               f32(A, {H, nbits, m}), f32(taps, {H, 9}), "attn")
                        : gr.attention(x, H, 1.0f / std::sqrt(float(d)), "attn"));
      auto backend = make_cpu_backend(threads, ShiftMode::Fast);
      Executor ex(gr, *backend);
      ex.set_min_pass_bytes(Executor::kOnePass);  // the kernel over the whole batch
      ms[ksh] = median_ms([&] { ex.run(g_batch, qkv.data(), out.data()); });
    }
    std::printf("| %lld | %.3f | %.3f | %.2fx |\n", (long long)N, ms[0], ms[1], ms[1] / ms[0]);
  }
  // Upstream's form (shared qk, separate v) at the PVTv2-b0 stage shapes (timings only).
  if (g_tokens) return;
  std::printf("\n| PVTv2-b0 KSH attention (qk, v) | tokens | heads x dim | ms |\n|---|---|---|---|\n");
  struct P {
    const char* name;
    int64_t N, H, d;
  };
  for (const P& p : {P{"stage 1", 3136, 1, 32}, P{"stage 2", 784, 2, 32}, P{"stage 3", 196, 5, 32}}) {
    const std::vector<float> qk = normal(rng, g_batch * p.N * p.H * p.d, 1.0f);  // qk = v here
    std::vector<float> out(qk.size());
    const std::vector<float> anc = normal(rng, p.H * m * p.d, 0.2f), mv = normal(rng, p.H * m, 0.3f);
    const std::vector<float> Ab = normal(rng, p.H * nbits * m, 1.0f), dc = normal(rng, p.H * 9, 0.3f);
    Graph g2;
    const int a = g2.input({p.N, p.H * p.d});
    g2.set_output(g2.ksh_attention(a, a, p.H, f32(anc, {1, p.H, m, p.d}), f32(mv, {1, p.H, 1, m}),
                                   f32(Ab, {p.H, nbits, m}), f32(dc, {p.H, 1, 9, 1}), "ksh"));
    auto backend = make_cpu_backend(threads, ShiftMode::Fast);
    Executor ex(g2, *backend);
    ex.set_min_pass_bytes(Executor::kOnePass);
    const double t = median_ms([&] { ex.run(g_batch, qk.data(), out.data()); });
    std::printf("| %s | %lld | %lld x %lld | %.3f |\n", p.name, (long long)p.N, (long long)p.H, (long long)p.d, t);
  }
}

// One MoeLinear node (router sending about half the tokens to each expert) against one Linear
// node of the same shape, run by the CPU backend in fast mode; --batch multiplies the tokens.
void bench_moe(int threads) {
  struct L {
    const char* name;
    int64_t M, K, N;
    bool gelu;
  };
  const L layers[] = {{"PVTv2-b0 s1 to_qk", 3136, 32, 32, false}, {"PVTv2-b0 s1 fc1", 3136, 32, 256, false},
                      {"PVTv2-b0 s1 fc2", 3136, 256, 32, false},  {"PVTv2-b0 s2 fc1", 784, 64, 512, false},
                      {"PVTv2-b0 s3 fc1", 196, 160, 640, false},  {"PVTv2-b0 s3 fc2", 196, 640, 160, false},
                      {"PVTv2-b0 s3 proj", 196, 160, 160, false}, {"PVTv2-b0 s4 fc1", 49, 256, 1024, false},
                      {"PVTv2-b0 s4 fc2", 49, 1024, 256, false},
                      {"DeiT-Tiny fc1 b1", 197, 192, 768, true}};
  std::printf("\n## MoE linear (half the tokens to each expert) vs dense linear (%d threads, fast mode, median of %d runs)\n\n",
              threads, g_runs);
  std::printf("| layer (M tokens, K -> N) | dense ms | MoE ms | MoE / dense |\n|---|---|---|---|\n");
  std::mt19937 rng(3);
  auto f32 = [](const std::vector<float>& v, Shape s) {
    Tensor t = Tensor::empty(DType::F32, std::move(s));
    std::copy(v.begin(), v.end(), t.data<float>());
    return t;
  };
  for (const L& l : layers) {
    if (std::string(l.name).find(g_layer) == std::string::npos) continue;
    const int64_t M = l.M * g_batch;
    const std::vector<float> x = normal(rng, M * l.K, 1.0f), w = normal(rng, l.N * l.K, 1.0f / std::sqrt(float(l.K)));
    const std::vector<float> b = normal(rng, l.N, 0.1f);
    std::vector<float> wg = normal(rng, 2 * l.K, 1.0f), bg = {0.0f, 0.0f};
    Tensor codes = Tensor::empty(DType::U8, {l.N, l.K});
    for (int64_t i = 0; i < l.N * l.K; ++i)
      codes.data<uint8_t>()[i] = pack_shift_weight(std::log2(std::fabs(w[i])), w[i] > 0 ? 1.0f : -1.0f);
    std::vector<float> y(M * l.N);
    double ms[2];
    for (int moe = 0; moe < 2; ++moe) {
      Graph g;
      const int in = g.input({l.K});
      if (moe) {
        ShiftWeights sw{codes, f32(b, {l.N}), Tensor()};
        g.set_output(g.moe_linear(in, f32(wg, {2, l.K}), f32(bg, {2}), f32(w, {l.N, l.K}), f32(b, {l.N}), sw, "moe",
                                  true, l.gelu));
      } else {
        g.set_output(g.linear(in, f32(w, {l.N, l.K}), f32(b, {l.N}), "dense", l.gelu));
      }
      auto backend = make_cpu_backend(threads, ShiftMode::Fast);
      Executor ex(g, *backend);
      ex.set_min_pass_bytes(Executor::kOnePass);  // every token in one kernel call
      ms[moe] = median_ms([&] { ex.run(M, x.data(), y.data()); });
    }
    std::printf("| %s (%lld, %lld -> %lld) | %.3f | %.3f | %.2fx |\n", l.name, (long long)M, (long long)l.K,
                (long long)l.N, ms[0], ms[1], ms[1] / ms[0]);
  }
}

// The PVTv2 MLP's depthwise 3x3 conv + GELU at the PVTv2-b0 stage shapes (--batch images), and
// a copy of the same tensor for scale: a ratio near 1 would mean the conv runs at memory speed.
void bench_dwconv(int threads) {
  struct S {
    const char* name;
    int64_t H, C;
  };
  const S stages[] = {{"PVTv2-b0 s1", 56, 256}, {"PVTv2-b0 s2", 28, 512}, {"PVTv2-b0 s3", 14, 640}, {"PVTv2-b0 s4", 7, 1024}};
  std::printf("\n## depthwise 3x3 conv + GELU (%d threads, batch %lld, median of %d runs)\n\n", threads,
              (long long)g_batch, g_runs);
  std::printf("| stage (H x W, C) | dwconv+GELU ms | copy of x ms | dwconv / copy |\n|---|---|---|---|\n");
  ThreadPool pool(threads);
  std::mt19937 rng(1);
  for (const S& s : stages) {
    if (std::string(s.name).find(g_layer) == std::string::npos) continue;
    const int64_t n = g_batch * s.H * s.H * s.C;
    const std::vector<float> x = normal(rng, n, 1.0f), w = normal(rng, 9 * s.C, 0.3f), b = normal(rng, s.C, 0.1f);
    std::vector<float> y(n);
    DwConv3x3Args a;
    a.B = g_batch, a.H = a.W = s.H, a.C = s.C, a.x = x.data(), a.w = w.data(), a.bias = b.data(), a.gelu = true;
    a.out = y.data();
    const double conv = median_ms([&] { cpu::dwconv3x3(a, pool); });
    const double copy = median_ms([&] {  // over all threads (take_tokens splits by image only)
      pool.parallel_for(n / 4096 + 1, [&](int, int64_t b0, int64_t b1) {
        const int64_t e0 = std::min(n, b0 * 4096), e1 = std::min(n, b1 * 4096);
        std::memcpy(y.data() + e0, x.data() + e0, sizeof(float) * (e1 - e0));
      });
    });
    std::printf("| %s (%lld x %lld, %lld) | %.3f | %.3f | %.2fx |\n", s.name, (long long)s.H, (long long)s.H,
                (long long)s.C, conv, copy, conv / copy);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--runs" && i + 1 < argc) g_runs = std::max(1, std::atoi(argv[++i]));
    else if (a == "--only" && i + 1 < argc) only = argv[++i];
    else if (a == "--tokens" && i + 1 < argc) g_tokens = std::atoll(argv[++i]);
    else if (a == "--batch" && i + 1 < argc) g_batch = std::max<int64_t>(1, std::atoll(argv[++i]));
    else if (a == "--layer" && i + 1 < argc) g_layer = argv[++i];
    else {
      std::fprintf(stderr,
                   "usage: %s [--threads N] [--runs R] [--only linear|attention|moe|dwconv] [--tokens N] [--batch B] "
                   "[--layer TEXT]\n",
                   argv[0]);
      return a == "-h" || a == "--help" ? 0 : 2;
    }
  }
  std::printf("shiftadd kernel benchmark: %s kernels, %d threads\n", cpu::simd_name(), threads);
  if (only.empty() || only == "linear") bench_linear(threads);
  if (only.empty() || only == "attention") bench_attention(threads);
  if (only.empty() || only == "moe") bench_moe(threads);
  if (only.empty() || only == "dwconv") bench_dwconv(threads);
  return 0;
}
