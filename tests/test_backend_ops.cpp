// The backend-ops harness: every op kind as a single-node graph (plus the one or two producer
// nodes an op needs for a second input), over a table of shapes and options, through every
// backend and SIMD path, against the reference backend (the plain kernels in kernels/ref/), in
// both shift modes. Small ViT / PVT / ShiftAddViT blocks check the ops together.
//
// - Backends: the CPU backend on each SIMD path this machine has (avx512vnni, avx512, avx2,
//   scalar; a path the CPU lacks is skipped, visibly), with 3 threads so work splits unevenly;
//   the CUDA backend with and without CUDA graphs when a GPU (or cudasim) is present.
// - A case a backend does not support (supports_op false) is skipped and listed, not failed.
// - Inputs and weights are random in +-[0.05, 1] (never zero); outputs start as NaN, so an
//   element a kernel failed to write fails the comparison. Inputs whose discrete decisions (KSH
//   hash bits, MoE expert choices) sit on a boundary are redrawn (test_util.h).
// - Error = max |out - ref| / max |ref|; each case has its bound (all far above what correct
//   float kernels produce, far below what any indexing bug produces).
//
// Adding an op = adding its cases to op_cases(); CoversEveryOp fails until it has one.
// Adding a backend = a row in backends(). Bit-exact checks of the integer shift kernels stay in
// test_shift_kernels.cpp (CPU paths) and test_cuda_backend.cpp (CUDA).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/graph.h"
#include "kernels/kernels.h"
#include "test_util.h"

namespace shiftadd {
namespace {

using namespace test;
using kernels::ShiftMode;

// ----- backends under test -------------------------------------------------------------------

struct BackendUnderTest {
  std::string name;
  // Makes the backend for a shift mode; null (with the reason in *why) when this machine
  // cannot run it.
  std::function<std::unique_ptr<Backend>(ShiftMode, std::string* why)> make;
  bool device = false;  // captured forwards: run three rounds (eager, capture, replay)
};
void PrintTo(const BackendUnderTest& b, std::ostream* os) { *os << b.name; }

BackendUnderTest cpu_path(const char* simd) {
  return {std::string("cpu_") + simd, [simd](ShiftMode mode, std::string* why) -> std::unique_ptr<Backend> {
            if (!kernels::cpu::set_simd(simd)) {
              *why = std::string("this CPU has no ") + simd;
              return nullptr;
            }
            return make_cpu_backend(3, mode);
          }};
}

#ifdef SHIFTADD_HAS_CUDA
BackendUnderTest cuda(bool graphs) {
  return {graphs ? "cuda" : "cuda_eager",
          [graphs](ShiftMode mode, std::string* why) -> std::unique_ptr<Backend> {
            if (!cuda_device_available(why)) return nullptr;
            CudaOptions o;
            o.shift_mode = mode;
            o.graphs = graphs;
            return make_cuda_backend(o);
          },
          true};
}
#endif

std::vector<BackendUnderTest> backends() {
  std::vector<BackendUnderTest> b{cpu_path("avx512vnni"), cpu_path("avx512"), cpu_path("avx2"),
                                  cpu_path("scalar")};
#ifdef SHIFTADD_HAS_CUDA
  b.push_back(cuda(true));
  b.push_back(cuda(false));
#endif
  return b;
}

// ----- op cases ------------------------------------------------------------------------------

struct OpCase {
  OpKind op;         // the op under test (CoversEveryOp)
  std::string name;  // shapes and options, for failure messages
  std::function<Graph(std::mt19937&)> build;
  double tol;
  double tol_fast = -1;  // bound in fast shift mode; < 0: same as tol
};

float inv_sqrt(int64_t n) { return 1.0f / std::sqrt(static_cast<float>(n)); }

std::vector<OpCase> op_cases() {
  std::vector<OpCase> cases;
  auto add = [&](OpKind op, std::string name, std::function<Graph(std::mt19937&)> build, double tol,
                 double tol_fast = -1) { cases.push_back({op, std::move(name), std::move(build), tol, tol_fast}); };

  // Conv2d: NCHW patch embedding and stem (padding), and on the token grid (spatial reduction,
  // downsampling).
  struct ConvShape {
    int64_t cin, h, w, cout, k, stride, pad;
  };
  for (ConvShape s : {ConvShape{3, 16, 16, 24, 4, 4, 0}, ConvShape{3, 20, 20, 16, 7, 4, 3},
                      ConvShape{5, 9, 11, 7, 3, 2, 1}, ConvShape{3, 32, 32, 64, 16, 16, 0}})
    add(OpKind::Conv2d, "conv2d " + std::to_string(s.cin) + "x" + std::to_string(s.h) + "x" + std::to_string(s.w) +
                            " k" + std::to_string(s.k) + " s" + std::to_string(s.stride) + " p" + std::to_string(s.pad),
        [s](std::mt19937& rng) {
          Graph g;
          const int x = g.input({s.cin, s.h, s.w});
          g.set_output(g.conv2d(x, random_tensor({s.cout, s.cin, s.k, s.k}, rng, 0.1f),
                                random_tensor({s.cout}, rng, 0.1f), s.stride, s.pad, "conv"));
          return g;
        },
        2e-5);
  for (ConvShape s : {ConvShape{8, 6, 6, 12, 2, 2, 0}, ConvShape{16, 8, 8, 32, 3, 2, 1}, ConvShape{6, 5, 7, 6, 3, 1, 1}})
    add(OpKind::Conv2d, "conv2d on tokens " + std::to_string(s.h) + "x" + std::to_string(s.w) + " k" +
                            std::to_string(s.k) + " s" + std::to_string(s.stride),
        [s](std::mt19937& rng) {
          Graph g;
          const int x = g.input({s.h * s.w, s.cin});
          g.set_output(g.conv2d_tokens(x, s.h, s.w, random_tensor({s.cout, s.cin, s.k, s.k}, rng, 0.1f),
                                       random_tensor({s.cout}, rng, 0.1f), s.stride, s.pad, "conv"));
          return g;
        },
        2e-5);

  // EmbedTokens: cls, cls + dist, no prefix.
  for (int64_t P : {1, 2, 0})
    add(OpKind::EmbedTokens, "embed_tokens prefix " + std::to_string(P),
        [P](std::mt19937& rng) {
          Graph g;
          const int64_t N = 16, C = 24;
          const int x = g.input({N, C});
          g.set_output(g.embed_tokens(x, P ? random_tensor({P, C}, rng, 0.5f) : Tensor(),
                                      random_tensor({P + N, C}, rng, 0.2f), "embed"));
          return g;
        },
        2e-6);

  // LayerNorm over widths that hit full vectors, tails and a row shorter than a vector.
  for (auto [N, C] : std::initializer_list<std::pair<int64_t, int64_t>>{{1, 5}, {7, 24}, {50, 100}, {3, 768}})
    add(OpKind::LayerNorm, "layernorm " + std::to_string(N) + "x" + std::to_string(C),
        [N, C](std::mt19937& rng) {
          Graph g;
          const int x = g.input({N, C});
          g.set_output(g.layernorm(x, random_tensor({C}, rng, 0.1f, 1.0f), random_tensor({C}, rng, 0.1f), 1e-6f, "ln"));
          return g;
        },
        1e-5);

  // Linear: register-tile edges, GELU, residual, no bias.
  struct LinShape {
    int64_t n, k, out;
    bool gelu, residual, bias;
  };
  for (LinShape s : {LinShape{1, 1, 1, false, false, true}, LinShape{7, 33, 65, false, false, true},
                     LinShape{50, 64, 192, true, false, true}, LinShape{17, 100, 37, false, false, false},
                     LinShape{29, 48, 48, false, true, true}, LinShape{3, 300, 300, true, true, true}})
    add(OpKind::Linear, "linear " + std::to_string(s.n) + "x" + std::to_string(s.k) + "->" + std::to_string(s.out) +
                            (s.gelu ? " gelu" : "") + (s.residual ? " residual" : "") + (s.bias ? "" : " no bias"),
        [s](std::mt19937& rng) {
          Graph g;
          const int x = g.input({s.n, s.k});
          g.set_output(g.linear(x, random_tensor({s.out, s.k}, rng, inv_sqrt(s.k)),
                                s.bias ? random_tensor({s.out}, rng, 0.1f) : Tensor(), "fc", s.gelu,
                                s.residual ? x : -1));
          return g;
        },
        2e-6 * std::sqrt(static_cast<double>(s.k)) + 2e-6);

  // Attention from packed q|k|v: head dims 8 to 128, token counts around tile edges.
  struct AttnShape {
    int64_t n, c, heads;
  };
  for (AttnShape s : {AttnShape{5, 24, 3}, AttnShape{65, 40, 5}, AttnShape{17, 64, 1}, AttnShape{10, 256, 2},
                      AttnShape{197, 64, 2}})
    add(OpKind::Attention, "attention packed N" + std::to_string(s.n) + " C" + std::to_string(s.c) + " H" +
                               std::to_string(s.heads),
        [s](std::mt19937& rng) {
          Graph g;
          const int x = g.input({s.n, 3 * s.c});
          g.set_output(g.attention(x, s.heads, inv_sqrt(s.c / s.heads), "attn"));
          return g;
        },
        1e-5);
  // Attention with queries [Nq, C] and keys|values from a spatial reduction of them (PVT).
  for (auto [grid, sr, C, heads] :
       std::initializer_list<std::tuple<int64_t, int64_t, int64_t, int64_t>>{{8, 2, 32, 1}, {8, 4, 40, 5}, {6, 1, 16, 2}})
    add(OpKind::Attention, "attention q/kv grid " + std::to_string(grid) + " sr" + std::to_string(sr) + " H" +
                               std::to_string(heads),
        [=](std::mt19937& rng) {
          Graph g;
          const int q = g.input({grid * grid, C});
          const int kv = g.conv2d_tokens(q, grid, grid, random_tensor({2 * C, C, sr, sr}, rng, 0.1f),
                                         random_tensor({2 * C}, rng, 0.1f), sr, 0, "sr");
          g.set_output(g.attention(q, kv, heads, inv_sqrt(C / heads), "attn"));
          return g;
        },
        1e-5);

  // Add, TakeTokens, MeanTokens.
  for (float alpha : {1.0f, 0.5f})
    add(OpKind::Add, "add alpha " + std::to_string(alpha),
        [alpha](std::mt19937& rng) {
          Graph g;
          const int x = g.input({13, 37});
          const int y = g.linear(x, random_tensor({37, 37}, rng, inv_sqrt(37)), random_tensor({37}, rng, 0.1f), "fc");
          g.set_output(g.add(x, y, alpha, "add"));
          return g;
        },
        2e-6);
  for (auto [first, count] : std::initializer_list<std::pair<int64_t, int64_t>>{{0, 1}, {1, 16}, {3, 5}})
    add(OpKind::TakeTokens, "take_tokens " + std::to_string(first) + "+" + std::to_string(count),
        [first, count](std::mt19937&) {
          Graph g;
          g.set_output(g.take_tokens(g.input({17, 24}), first, count, "take"));
          return g;
        },
        0.0);
  for (auto [N, C] : std::initializer_list<std::pair<int64_t, int64_t>>{{1, 8}, {49, 64}, {197, 100}})
    add(OpKind::MeanTokens, "mean_tokens " + std::to_string(N) + "x" + std::to_string(C),
        [N, C](std::mt19937&) {
          Graph g;
          g.set_output(g.mean_tokens(g.input({N, C}), "pool"));
          return g;
        },
        2e-6 * std::sqrt(static_cast<double>(N)) + 2e-6);

  // DwConv3x3: square and oblong grids, GELU, no bias.
  for (auto [h, w, C, gelu, bias] : std::initializer_list<std::tuple<int64_t, int64_t, int64_t, bool, bool>>{
           {8, 8, 32, true, true}, {5, 7, 20, false, true}, {1, 1, 16, true, false}, {14, 14, 64, false, true}})
    add(OpKind::DwConv3x3, "dwconv3x3 " + std::to_string(h) + "x" + std::to_string(w) + " C" + std::to_string(C) +
                               (gelu ? " gelu" : "") + (bias ? "" : " no bias"),
        [=](std::mt19937& rng) {
          Graph g;
          const int x = g.input({h * w, C});
          g.set_output(g.dwconv3x3(x, h, w, random_tensor({C, 1, 3, 3}, rng, 0.3f),
                                   bias ? random_tensor({C}, rng, 0.1f) : Tensor(), gelu, "dw"));
          return g;
        },
        1e-5);

  // ShiftLinear: upstream raw weights (no scale), a per-output scale, GELU, residual; K across
  // the int8 kernels' strips and panels.
  struct ShiftShape {
    int64_t n, k, out;
    bool scaled, gelu, residual;
  };
  for (ShiftShape s : {ShiftShape{1, 1, 1, false, false, false}, ShiftShape{7, 33, 65, false, false, false},
                       ShiftShape{64, 64, 64, true, false, false}, ShiftShape{100, 256, 96, true, true, false},
                       ShiftShape{3, 1280, 70, false, false, false}, ShiftShape{30, 48, 48, true, true, true}})
    add(OpKind::ShiftLinear, "shift_linear " + std::to_string(s.n) + "x" + std::to_string(s.k) + "->" +
                                 std::to_string(s.out) + (s.scaled ? " scaled" : "") + (s.gelu ? " gelu" : "") +
                                 (s.residual ? " residual" : ""),
        [s](std::mt19937& rng) {
          Graph g;
          const int x = g.input({s.n, s.k});
          g.set_output(g.shift_linear(x, random_shift_weights(rng, s.out, s.k, "shift", s.scaled), "shift", s.gelu,
                                      s.residual ? x : -1));
          return g;
        },
        1e-5);

  // MoeLinear: upstream (log-exp combine), ViT form (scaled shift expert, plain combine, GELU),
  // residual; token counts that leave an expert with few rows, and enough rows for the CPU's
  // fused path in fast mode (small weights): one task per column slice below 2 row blocks, else
  // row blocks (512 rows at K <= 256, fewer at larger K), several per thread.
  struct MoeShape {
    int64_t n, c, out;
    bool log_exp, gelu, residual;
  };
  for (MoeShape s : {MoeShape{64, 32, 32, true, false, false}, MoeShape{5, 40, 24, true, false, false},
                     MoeShape{50, 48, 96, false, true, false}, MoeShape{33, 64, 64, false, false, true},
                     MoeShape{784, 32, 32, true, false, false}, MoeShape{600, 64, 64, false, true, true},
                     MoeShape{1100, 40, 40, false, false, true}, MoeShape{530, 48, 160, false, true, false},
                     MoeShape{2300, 32, 64, true, false, false}, MoeShape{700, 512, 48, false, true, false}})
    add(OpKind::MoeLinear, "moe_linear " + std::to_string(s.n) + "x" + std::to_string(s.c) + "->" +
                               std::to_string(s.out) + (s.log_exp ? " log-exp" : "") + (s.gelu ? " gelu" : "") +
                               (s.residual ? " residual" : ""),
        [s](std::mt19937& rng) {
          Graph g;
          const int x = g.input({s.n, s.c});
          g.set_output(g.moe_linear(x, random_tensor({2, s.c}, rng, 1.0f), random_tensor({2}, rng, 0.1f),
                                    random_tensor({s.out, s.c}, rng, inv_sqrt(s.c)), random_tensor({s.out}, rng, 0.1f),
                                    random_shift_weights(rng, s.out, s.c, "moe", !s.log_exp), "moe", s.log_exp,
                                    s.gelu, s.residual ? x : -1));
          return g;
        },
        1e-4);

  // KshAttention: upstream form (qk and v) and ViT form (packed q|k|v); 8 to 64 hash bits.
  for (auto [N, C, H, nbits] : std::initializer_list<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {64, 32, 2, 16}, {49, 64, 4, 64}, {100, 40, 1, 8}, {7, 16, 2, 32}})
    add(OpKind::KshAttention, "ksh_attention qk/v N" + std::to_string(N) + " C" + std::to_string(C) + " H" +
                                  std::to_string(H) + " bits" + std::to_string(nbits),
        [=](std::mt19937& rng) {
          Graph g;
          const int64_t d = C / H, m = 25;
          const int qk = g.input({N, C});
          const int v = g.linear(qk, random_tensor({C, C}, rng, inv_sqrt(C)), random_tensor({C}, rng, 0.1f), "to_v");
          g.set_output(g.ksh_attention(qk, v, H, unit_anchors(rng, {1, H, m, d}),
                                       random_tensor({1, H, 1, m}, rng, 0.1f, 0.5f), random_tensor({H, nbits, m}, rng, 1.0f),
                                       random_tensor({H, 1, 9, 1}, rng, 0.3f), "ksh"));
          return g;
        },
        1e-4);
  for (auto [N, C, H, nbits] : std::initializer_list<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {65, 32, 2, 16}, {40, 48, 3, 64}, {10, 64, 1, 32}})
    add(OpKind::KshAttention, "ksh_attention qkv N" + std::to_string(N) + " C" + std::to_string(C) + " H" +
                                  std::to_string(H) + " bits" + std::to_string(nbits),
        [=](std::mt19937& rng) {
          Graph g;
          const int64_t d = C / H, m = 20;
          const int qkv = g.input({N, 3 * C});
          g.set_output(g.ksh_attention_qkv(qkv, H, unit_anchors(rng, {H, m, d}), random_tensor({H, m}, rng, 0.1f, 0.5f),
                                           random_tensor({H, nbits, m}, rng, 1.0f), random_tensor({H, 9}, rng, 0.3f),
                                           "ksh"));
          return g;
        },
        1e-4);

  // Blocks (listed under Input: the graph as a whole): the ops together as models use them. In fast mode an upstream fp32 difference of
  // ~1e-7 can move an activation across an int8 rounding step, hence the looser bound there.
  add(OpKind::Input, "vit block C48 H3", [](std::mt19937& rng) { return vit_graph(rng, 48, 3, 32, 8); }, 2e-5);
  add(OpKind::Input, "vit block C40 H5 65 tokens", [](std::mt19937& rng) { return vit_graph(rng, 40, 5, 64, 8); }, 2e-5);
  add(OpKind::Input, "pvt stage C32 sr2", [](std::mt19937& rng) { return pvt_graph(rng, 32, 1, 32, 2); }, 2e-5);
  add(OpKind::Input, "pvt stage C40 H5 sr4", [](std::mt19937& rng) { return pvt_graph(rng, 40, 5, 32, 4); }, 2e-5);
  add(OpKind::Input, "shiftadd pvt block C32 bits16",
      [](std::mt19937& rng) { return shiftadd_graph(rng, 32, 2, 32, 16); }, 1e-4, 1e-2);
  add(OpKind::Input, "shiftadd pvt block C64 bits64",
      [](std::mt19937& rng) { return shiftadd_graph(rng, 64, 4, 32, 64); }, 1e-4, 1e-2);
  add(OpKind::Input, "shiftadd vit block C32 bits16",
      [](std::mt19937& rng) { return shiftadd_vit_graph(rng, 32, 2, 32, 16); }, 1e-4, 1e-2);
  return cases;
}

// ----- the harness ---------------------------------------------------------------------------

class BackendOps : public ::testing::TestWithParam<BackendUnderTest> {};

TEST_P(BackendOps, EveryOpMatchesReference) {
  const BackendUnderTest& b = GetParam();
  test::SimdGuard simd;
  std::string skipped;
  const std::vector<OpCase> cases = op_cases();
  for (ShiftMode mode : {ShiftMode::Exact, ShiftMode::Fast}) {
    for (size_t c = 0; c < cases.size(); ++c) {
      const OpCase& oc = cases[c];
      // One backend per graph, as in a session (the CUDA backend finds uploaded weights by
      // their host address, which a later graph may reuse).
      std::string why;
      auto backend = b.make(mode, &why);
      if (!backend) GTEST_SKIP() << b.name << ": " << why;
      std::mt19937 rng(static_cast<unsigned>(1000 + c));
      const Graph g = oc.build(rng);
      std::string no;
      bool supported = true;
      for (const Node& n : g.nodes()) supported = supported && backend->supports_op(g, n, &no);
      const std::string what = oc.name + (mode == ShiftMode::Fast ? " (fast)" : " (exact)");
      if (!supported) {
        skipped += "\n  " + what + ": " + no;
        continue;
      }
      SCOPED_TRACE(what);
      const double tol = mode == ShiftMode::Fast && oc.tol_fast >= 0 ? oc.tol_fast : oc.tol;
      expect_matches_reference(g, *backend, mode, tol, rng, {1, 3}, b.device ? 3 : 2);
    }
  }
  if (!skipped.empty()) std::printf("[ skipped  ] %s does not support:%s\n", b.name.c_str(), skipped.c_str());
}

INSTANTIATE_TEST_SUITE_P(AllBackends, BackendOps, ::testing::ValuesIn(backends()),
                         [](const ::testing::TestParamInfo<BackendUnderTest>& info) { return info.param.name; });

// Every op kind has cases: a new op cannot land without its row here.
TEST(BackendOpsTable, CoversEveryOp) {
  std::set<OpKind> covered;
  for (const OpCase& c : op_cases()) covered.insert(c.op);
  for (int k = 0; k < static_cast<int>(OpKind::Count); ++k) {
    const auto op = static_cast<OpKind>(k);
    EXPECT_TRUE(covered.count(op)) << "no backend-ops case for op " << op_traits(op).name;
  }
}

}  // namespace
}  // namespace shiftadd
