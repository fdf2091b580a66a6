#pragma once
// Helpers shared by the test files: running the `shiftadd` command, comparing outputs, random
// (never zero) weights and inputs, small graphs covering every op, and running a graph on a
// backend against the reference backend.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "engine/backend.h"
#include "engine/executor.h"
#include "engine/graph.h"
#include "kernels/kernels.h"

namespace shiftadd::test {

struct CliResult {
  int code = -1;
  std::string out;  // stdout and stderr together
};

// Runs a shell command line; stderr is merged into `out`.
inline CliResult run_shell(const std::string& cmd) {
  CliResult r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// `shiftadd ARGS` (the CLI built with the tests).
inline CliResult run_cli(const std::string& args) { return run_shell(std::string(SHIFTADD_CLI) + " " + args); }

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Restores the CPU kernels' SIMD path when it goes out of scope (tests switch paths with
// kernels::cpu::set_simd).
struct SimdGuard {
  std::string name = kernels::cpu::simd_name();
  ~SimdGuard() { kernels::cpu::set_simd(name.c_str()); }
};

// max |a - b| / max |b|: the relative error used for every golden and backend comparison. A
// non-finite value where the reference is finite, or a size mismatch, is an infinite error.
inline double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, ref = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i]) && std::isfinite(b[i])) return INFINITY;
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    ref = std::max(ref, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(ref, 1e-12);
}

// ----- random data: values in +-[0.05, 1] * scale + offset, never zero ----------------------------

inline float random_value(std::mt19937& rng, float scale, float offset = 0.0f) {
  std::uniform_real_distribution<float> mag(0.05f, 1.0f);
  std::bernoulli_distribution neg(0.5);
  return offset + scale * (neg(rng) ? -mag(rng) : mag(rng));
}

inline Tensor random_tensor(Shape s, std::mt19937& rng, float scale, float offset = 0.0f) {
  Tensor t = Tensor::empty(DType::F32, std::move(s));
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = random_value(rng, scale, offset);
  return t;
}

inline std::vector<float> random_input(int64_t n, std::mt19937& rng, float scale = 1.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = random_value(rng, scale);
  return v;
}

// KSH anchors with unit rows, shaped {lead..., H, m, d} as `shape` says (the last dim is d).
inline Tensor unit_anchors(std::mt19937& rng, Shape shape) {
  Tensor anchor = random_tensor(shape, rng, 1.0f);
  const int64_t d = shape.back();
  for (int64_t r = 0; r < anchor.numel() / d; ++r) {
    float* a = anchor.data<float>() + r * d;
    float ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += a[c] * a[c];
    for (int64_t c = 0; c < d; ++c) a[c] /= std::sqrt(ss);
  }
  return anchor;
}

// A shift linear's weights from random upstream shift (exponents around -4) and sign tensors,
// with an optional random per-output scale.
inline ShiftWeights random_shift_weights(std::mt19937& rng, int64_t out, int64_t in, const std::string& name,
                                         bool scaled) {
  ShiftWeights w = ShiftWeights::from_raw(name, random_tensor({out, in}, rng, 3.0f, -4.0f),
                                          random_tensor({out, in}, rng, 1.2f), random_tensor({out}, rng, 0.1f));
  if (scaled) w.scale = random_tensor({out}, rng, 0.5f, 1.0f);
  return w;
}

// ----- small graphs covering every op --------------------------------------------------------------

// ViT blocks: conv (NCHW), embed, layernorm, linear (+GELU, +residual), attention (packed),
// take tokens, add.
inline Graph vit_graph(std::mt19937& rng, int64_t C, int64_t heads, int64_t img, int64_t p, int blocks = 1) {
  Graph g;
  const int64_t T = 1 + (img / p) * (img / p);
  const float ws = 1.0f / std::sqrt(static_cast<float>(C));
  int x = g.input({3, img, img});
  x = g.conv2d(x, random_tensor({C, 3, p, p}, rng, 0.1f), random_tensor({C}, rng, 0.1f), p, 0, "patch");
  x = g.embed_tokens(x, random_tensor({1, C}, rng, 0.5f), random_tensor({T, C}, rng, 0.2f), "embed");
  for (int b = 0; b < blocks; ++b) {
    const std::string n = "blocks." + std::to_string(b) + ".";
    int h = g.layernorm(x, random_tensor({C}, rng, 0.1f, 1.0f), random_tensor({C}, rng, 0.1f), 1e-6f, n + "norm1");
    h = g.linear(h, random_tensor({3 * C, C}, rng, ws), random_tensor({3 * C}, rng, 0.1f), n + "qkv");
    h = g.attention(h, heads, 1.0f / std::sqrt(static_cast<float>(C / heads)), n + "attn");
    x = g.linear(h, random_tensor({C, C}, rng, ws), random_tensor({C}, rng, 0.1f), n + "proj", false, x);
    h = g.layernorm(x, random_tensor({C}, rng, 0.1f, 1.0f), random_tensor({C}, rng, 0.1f), 1e-6f, n + "norm2");
    h = g.linear(h, random_tensor({2 * C, C}, rng, ws), random_tensor({2 * C}, rng, 0.1f), n + "fc1", true);
    x = g.linear(h, random_tensor({C, 2 * C}, rng, ws), random_tensor({C}, rng, 0.1f), n + "fc2", false, x);
  }
  x = g.take_tokens(x, 0, 1, "cls");
  const int a = g.linear(x, random_tensor({5, C}, rng, ws), random_tensor({5}, rng, 0.1f), "head");
  const int b = g.linear(x, random_tensor({5, C}, rng, ws), random_tensor({5}, rng, 0.1f), "head2");
  g.set_output(g.add(a, b, 0.5f, "mean"));
  return g;
}

// PVT ops: stem conv with padding, conv on the token grid (spatial reduction), q / kv
// attention, depthwise 3x3 (+GELU), mean over tokens.
inline Graph pvt_graph(std::mt19937& rng, int64_t C, int64_t heads, int64_t img, int64_t sr) {
  Graph g;
  const float ws = 1.0f / std::sqrt(static_cast<float>(C));
  const int64_t grid = img / 4;
  int x = g.input({3, img, img});
  x = g.conv2d(x, random_tensor({C, 3, 7, 7}, rng, 0.05f), random_tensor({C}, rng, 0.1f), 4, 3, "stem");
  const int q = g.linear(x, random_tensor({C, C}, rng, ws), random_tensor({C}, rng, 0.1f), "q");
  int kv = g.conv2d_tokens(x, grid, grid, random_tensor({C, C, sr, sr}, rng, 0.05f), random_tensor({C}, rng, 0.1f),
                           sr, 0, "sr");
  kv = g.linear(kv, random_tensor({2 * C, C}, rng, ws), random_tensor({2 * C}, rng, 0.1f), "kv");
  int h = g.attention(q, kv, heads, 1.0f / std::sqrt(static_cast<float>(C / heads)), "attn");
  x = g.add(x, h, 1.0f, "res");
  h = g.dwconv3x3(x, grid, grid, random_tensor({C, 1, 3, 3}, rng, 0.3f), random_tensor({C}, rng, 0.1f), true, "dw");
  h = g.dwconv3x3(h, grid, grid, random_tensor({C, 1, 3, 3}, rng, 0.3f), random_tensor({C}, rng, 0.1f), false, "dw2");
  x = g.conv2d_tokens(h, grid, grid, random_tensor({2 * C, C, 3, 3}, rng, 0.05f), random_tensor({2 * C}, rng, 0.1f),
                      2, 1, "down");
  x = g.mean_tokens(x, "pool");
  g.set_output(g.linear(x, random_tensor({7, 2 * C}, rng, ws), random_tensor({7}, rng, 0.1f), "head"));
  return g;
}

// ShiftAddViT (PVT form) ops: MoE to_qk, shift to_v, KSH attention from qk and v, MoE proj.
inline Graph shiftadd_graph(std::mt19937& rng, int64_t C, int64_t heads, int64_t img, int64_t nbits) {
  Graph g;
  const int64_t p = 4, H = heads, d = C / heads, m = 25;
  const float ws = 1.0f / std::sqrt(static_cast<float>(C));
  auto shift = [&](Shape s) { return random_tensor(std::move(s), rng, 3.0f, -4.0f); };
  auto sign = [&](Shape s) { return random_tensor(std::move(s), rng, 1.2f); };
  auto moe = [&](int x, const std::string& name) {
    return g.moe_linear(x, random_tensor({2, C}, rng, 1.0f), random_tensor({2}, rng, 0.1f),
                        random_tensor({C, C}, rng, ws), random_tensor({C}, rng, 0.1f), shift({C, C}), sign({C, C}),
                        random_tensor({C}, rng, 0.1f), name);
  };
  int x = g.input({3, img, img});
  x = g.conv2d(x, random_tensor({C, 3, p, p}, rng, 0.1f), random_tensor({C}, rng, 0.1f), p, 0, "patch");
  const int qk = moe(x, "attn.to_qk");
  const int v = g.shift_linear(x, shift({C, C}), sign({C, C}), random_tensor({C}, rng, 0.1f), "attn.to_v");
  int h = g.ksh_attention(qk, v, H, unit_anchors(rng, {1, H, m, d}), random_tensor({1, H, 1, m}, rng, 0.1f, 0.5f),
                          random_tensor({H, nbits, m}, rng, 1.0f), random_tensor({H, 1, 9, 1}, rng, 0.3f), "attn");
  h = moe(h, "attn.proj");
  x = g.add(x, h, 1.0f, "residual");
  x = g.mean_tokens(x, "pool");
  g.set_output(g.linear(x, random_tensor({5, C}, rng, ws), random_tensor({5}, rng, 0.1f), "head"));
  return g;
}

// The ViT-side ShiftAdd forms: KSH attention from a packed q|k|v (q and k hashed apart), shift
// linear with per-output scale and GELU, MoE with a scaled shift expert, without the log-exp
// combine and with GELU.
inline Graph shiftadd_vit_graph(std::mt19937& rng, int64_t C, int64_t heads, int64_t img, int64_t nbits) {
  Graph g;
  const int64_t p = 4, H = heads, d = C / heads, m = 20;
  const float ws = 1.0f / std::sqrt(static_cast<float>(C));
  int x = g.input({3, img, img});
  x = g.conv2d(x, random_tensor({C, 3, p, p}, rng, 0.1f), random_tensor({C}, rng, 0.1f), p, 0, "patch");
  const int qkv = g.linear(x, random_tensor({3 * C, C}, rng, ws), random_tensor({3 * C}, rng, 0.1f), "qkv");
  int h = g.ksh_attention_qkv(qkv, H, unit_anchors(rng, {H, m, d}), random_tensor({H, m}, rng, 0.1f, 0.5f),
                              random_tensor({H, nbits, m}, rng, 1.0f), random_tensor({H, 9}, rng, 0.3f), "attn");
  h = g.shift_linear(h, random_shift_weights(rng, C, C, "proj", true), "proj", /*gelu=*/true);
  h = g.moe_linear(h, random_tensor({2, C}, rng, 1.0f), random_tensor({2}, rng, 0.1f), random_tensor({C, C}, rng, ws),
                   random_tensor({C}, rng, 0.1f), random_shift_weights(rng, C, C, "fc", true), "fc",
                   /*log_exp_combine=*/false, /*gelu=*/true);
  x = g.add(x, h, 1.0f, "residual");
  x = g.mean_tokens(x, "pool");
  g.set_output(g.linear(x, random_tensor({5, C}, rng, ws), random_tensor({5}, rng, 0.1f), "head"));
  return g;
}

// ----- running graphs ---------------------------------------------------------------------------

inline int64_t input_numel(const Graph& g, int64_t batch) { return batch * shape_numel(g.sample_shape(g.input_value())); }
inline int64_t output_numel(const Graph& g, int64_t batch) {
  return batch * shape_numel(g.sample_shape(g.output_value()));
}

// One run of g on a fresh executor; the output starts as NaN, so an unwritten element shows.
inline std::vector<float> run_graph(const Graph& g, Backend& backend, int64_t batch, const std::vector<float>& x) {
  Executor e(g, backend);
  std::vector<float> y(static_cast<size_t>(output_numel(g, batch)), kNaN);
  e.run(batch, x.data(), y.data());
  return y;
}

// A random input for g at this batch size whose discrete decisions (KSH hash bits, MoE expert
// choices) are well posed: no hash pre-activation within 2e-5 of 0 and no router logit pair
// within 1e-4, so fp32 kernels and the reference's double arithmetic cannot resolve one
// differently. Returns the input and the reference backend's output for it.
struct RefRun {
  std::vector<float> x, want;
};
inline RefRun well_posed_reference_run(const Graph& g, Backend& refb, int64_t batch, std::mt19937& rng) {
  for (int attempt = 0; attempt < 200; ++attempt) {
    RefRun r;
    r.x = random_input(input_numel(g, batch), rng);
    DecisionProbe probe;
    refb.set_decision_probe(&probe);
    r.want = run_graph(g, refb, batch, r.x);
    refb.set_decision_probe(nullptr);
    bool ok = true;
    for (const auto& [node, pre] : probe.ksh_preact)
      for (float y : pre) ok = ok && std::abs(y) >= 2e-5f;
    for (const auto& [node, l] : probe.router_logits)
      for (size_t i = 0; i + 1 < l.size(); i += 2) ok = ok && std::abs(l[i + 1] - l[i]) >= 1e-4f;
    if (ok) return r;
  }
  return {};  // empty: the caller fails with "no well-posed input"
}


// Runs g through `backend` and through the reference backend in shift mode `mode` at each batch
// size, `rounds` times each with fresh inputs on one executor (for a device backend: eager,
// captured, replayed), and expects every output within `tol` relative of the reference's
// (tol 0: bit for bit) and the same tokens per expert at every MoE node.
inline void expect_matches_reference(const Graph& g, Backend& backend, kernels::ShiftMode mode, double tol,
                                     std::mt19937& rng, const std::vector<int64_t>& batches = {1, 3},
                                     int rounds = 2) {
  auto refb = make_ref_backend(mode);
  check_supported(g, backend);
  Executor e(g, backend);
  for (int round = 0; round < rounds; ++round)
    for (int64_t batch : batches) {
      const RefRun r = well_posed_reference_run(g, *refb, batch, rng);
      ASSERT_FALSE(r.x.empty()) << "no well-posed input found";
      std::vector<float> got(r.want.size(), kNaN);
      e.run(batch, r.x.data(), got.data());
      EXPECT_LE(rel_error(got, r.want), tol) << backend.name() << " batch " << batch << " round " << round;
      if (tol == 0.0) {
        EXPECT_EQ(got, r.want) << backend.name() << " batch " << batch << " round " << round;
      }
      for (size_t i = 0; i < g.nodes().size(); ++i)
        if (g.nodes()[i].op == OpKind::MoeLinear) {
          EXPECT_EQ(backend.expert_tokens(i), refb->expert_tokens(i)) << "MoE node " << g.nodes()[i].name;
        }
    }
}

}  // namespace shiftadd::test
