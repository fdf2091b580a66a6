// Planner and executor: memory plan validity, no allocation per run, supports-op check at load,
// and the optimized CPU backend against the reference backend on a whole random ViT graph.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <new>
#include <random>

#include "engine/backend.h"
#include "engine/executor.h"
#include "engine/graph.h"
#include "shiftadd/error.h"
#include "test_util.h"

// Counts heap allocations made by this process while `g_counting` is set. (GCC cannot see that
// the replaced new and delete pair malloc with free.)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<bool> g_counting{false};
static std::atomic<long> g_allocs{0};
static void* counted_alloc(size_t n) noexcept {
  if (g_counting) ++g_allocs;
  return std::malloc(n ? n : 1);
}
// The whole non-aligned family is replaced so every new is paired with a matching delete.
void* operator new(size_t n) {
  if (void* p = counted_alloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) { return operator new(n); }
void* operator new(size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace shiftadd {
namespace {

using namespace test;

// A two-block ViT with random weights, built straight from the op builders.
Graph tiny_vit(std::mt19937& rng) { return vit_graph(rng, 48, 3, 32, 8, /*blocks=*/2); }

TEST(Planner, LiveValuesNeverOverlapAndMemoryIsReused) {
  std::mt19937 rng(1);
  const Graph g = tiny_vit(rng);
  const Plan p = make_plan(g, 3);
  const auto& nodes = g.nodes();
  std::vector<int> last(g.values().size(), -1);
  for (size_t i = 0; i < nodes.size(); ++i)
    for (int v : nodes[i].inputs) last[v] = static_cast<int>(i);
  last[g.output_value()] = static_cast<int>(nodes.size());
  int64_t total = 0;
  for (size_t v = 0; v < g.values().size(); ++v) {
    if (static_cast<int>(v) == g.input_value()) continue;
    total += 3 * shape_numel(g.sample_shape(v));
    for (size_t u = v + 1; u < g.values().size(); ++u) {
      if (static_cast<int>(u) == g.input_value()) continue;
      const int vb = g.values()[v].producer, ve = last[v], ub = g.values()[u].producer, ue = last[u];
      if (ve < ub || ue < vb) continue;  // lifetimes disjoint
      const int64_t vs = p.offset[v], vn = 3 * shape_numel(g.sample_shape(v));
      const int64_t us = p.offset[u], un = 3 * shape_numel(g.sample_shape(u));
      EXPECT_TRUE(vs + vn <= us || us + un <= vs) << "values " << v << " and " << u << " overlap";
    }
  }
  EXPECT_LT(p.arena_floats, total) << "no buffer was reused";
}

// Runs `g` on random inputs at batch sizes 1 and 3 through the reference backend (calling
// `on_reference(batch, backend)` after each), plans `cpub` for both, then runs it alternating the
// batch sizes three times while counting heap allocations (none allowed) and compares every
// output with the reference's (1e-5 relative). The last CPU run has batch 3.
void expect_matches_reference_without_allocations(
    const Graph& g, Backend& cpub, std::mt19937& rng,
    const std::function<void(int64_t, Backend&)>& on_reference = {}) {
  Executor cpu(g, cpub);
  const std::vector<int64_t> batches{1, 3};
  const int64_t in = shape_numel(g.sample_shape(g.input_value()));
  const int64_t out = shape_numel(g.sample_shape(g.output_value()));
  std::vector<std::vector<float>> x, want, got;
  for (int64_t batch : batches) {
    std::normal_distribution<float> nd;
    x.emplace_back(static_cast<size_t>(batch * in));
    for (float& v : x.back()) v = nd(rng);
    want.emplace_back(batch * out);
    got.emplace_back(batch * out, NAN);
    auto refb = make_ref_backend();
    Executor ref(g, *refb);
    ref.run(batch, x.back().data(), want.back().data());
    if (on_reference) on_reference(batch, *refb);
    cpu.prepare(batch);
  }
  // Alternating batch sizes, each planned once: no heap allocation at all.
  g_allocs = 0;
  g_counting = true;
  for (int r = 0; r < 3; ++r)
    for (size_t i = 0; i < batches.size(); ++i) cpu.run(batches[i], x[i].data(), got[i].data());
  g_counting = false;
  EXPECT_EQ(g_allocs.load(), 0) << "heap allocations during planned runs";
  for (size_t b = 0; b < batches.size(); ++b) EXPECT_LE(rel_error(got[b], want[b]), 1e-5) << "batch " << batches[b];
}

TEST(Executor, CpuMatchesReferenceAndAllocatesNothingPerRun) {
  std::mt19937 rng(2);
  const Graph g = tiny_vit(rng);
  auto cpub = make_cpu_backend(2);
  expect_matches_reference_without_allocations(g, *cpub, rng);
}

// The CPU backend packs GEMM weights when it plans, for the SIMD path of that moment; a run on
// another path (tests and benchmarks switch) must still be right: the panels are used only
// when their width matches the running kernels' (AVX-512 32 columns; AVX2 and scalar 16).
TEST(Executor, WeightsPackedForOneSimdPathRunOnAnother) {
  test::SimdGuard simd;
  std::mt19937 rng(3);
  const Graph g = tiny_vit(rng);
  const int64_t in = shape_numel(g.sample_shape(g.input_value()));
  const int64_t out = shape_numel(g.sample_shape(g.output_value()));
  std::vector<float> x(static_cast<size_t>(2 * in)), want(2 * out), got(2 * out, NAN);
  std::normal_distribution<float> nd;
  for (float& v : x) v = nd(rng);
  auto refb = make_ref_backend();
  Executor(g, *refb).run(2, x.data(), want.data());
  for (const char* run_on : {"scalar", "avx2"}) {
    auto cpub = make_cpu_backend(2);
    Executor cpu(g, *cpub);
    cpu.prepare(2);  // packs for the best path here
    if (!kernels::cpu::set_simd(run_on)) continue;
    cpu.run(2, x.data(), got.data());
    EXPECT_LE(rel_error(got, want), 1e-5) << "planned on " << simd.name << ", run on " << run_on;
    kernels::cpu::set_simd(simd.name.c_str());
  }
}

// A one-block LinAngular graph with every ShiftAddViT op: MoE to_qk, shift to_v, KSH
// attention, MoE proj, built straight from the op builders.
Graph tiny_shiftadd(std::mt19937& rng) { return shiftadd_graph(rng, 32, 2, 32, 16); }

TEST(Executor, ShiftAddOpsMatchReferenceAndAllocateNothing) {
  std::mt19937 rng(7);
  const Graph g = tiny_shiftadd(rng);
  EXPECT_STREQ(op_traits(OpKind::ShiftLinear).kind, "shift linear");
  EXPECT_STREQ(op_traits(OpKind::MoeLinear).kind, "MoE linear");
  EXPECT_STREQ(op_traits(OpKind::KshAttention).kind, "KSH attention");
  auto cpub = make_cpu_backend(2);
  size_t moe_node = 0;
  while (g.nodes()[moe_node].op != OpKind::MoeLinear) ++moe_node;
  expect_matches_reference_without_allocations(g, *cpub, rng, [&](int64_t batch, Backend& refb) {
    const auto counts = refb.expert_tokens(moe_node);
    EXPECT_EQ(counts[0] + counts[1], batch * 64);
  });
  const auto counts = cpub->expert_tokens(moe_node);
  EXPECT_EQ(counts[0] + counts[1], 3 * 64);  // the last run had batch 3
  EXPECT_GT(counts[0], 0);
  EXPECT_GT(counts[1], 0);
}

// Host backends run a batch as passes of a multiple of their thread count holding at least
// the minimum pass bytes, evened out; device backends and probed runs take the whole batch.
TEST(Executor, PassSizesFollowThreadsAndActivationBytes) {
  std::mt19937 rng(9);
  const Graph g = tiny_vit(rng);
  const int64_t sample_bytes = make_plan(g, 1).arena_floats * 4;
  auto cpub = make_cpu_backend(2);
  Executor ex(g, *cpub);
  EXPECT_EQ(ex.pass_batch(8), 8) << "a small model's batch stays one pass";
  ex.set_min_pass_bytes(1);
  EXPECT_EQ(ex.pass_batch(1), 1);
  EXPECT_EQ(ex.pass_batch(2), 2);
  EXPECT_EQ(ex.pass_batch(8), 2) << "one image per thread";
  EXPECT_EQ(ex.pass_batch(7), 2) << "2 + 2 + 2 + 1";
  ex.set_min_pass_bytes(3 * sample_bytes);  // 3 samples, rounded up to 4 (2 threads)
  EXPECT_EQ(ex.pass_batch(8), 4);
  EXPECT_EQ(ex.pass_batch(10), 4) << "4 + 4 + 2";
  EXPECT_EQ(ex.pass_batch(12), 4);
  EXPECT_EQ(ex.pass_batch(13), 4) << "4 + 4 + 4 + 1";
  ex.set_min_pass_bytes(5 * sample_bytes);  // 6 samples: 8 evens out to 4 + 4, not 6 + 2
  EXPECT_EQ(ex.pass_batch(8), 4);
  EXPECT_EQ(ex.pass_batch(6), 6);
  ex.set_min_pass_bytes(Executor::kOnePass);
  EXPECT_EQ(ex.pass_batch(1000), 1000);
  auto four = make_cpu_backend(4);
  Executor ex4(g, *four);
  ex4.set_min_pass_bytes(3 * sample_bytes);  // 3 samples: a pass of 4
  EXPECT_EQ(ex4.pass_batch(4), 4);
  EXPECT_EQ(ex4.pass_batch(5), 4) << "4 + 1: evening out to 3 + 2 would idle threads in both";
  EXPECT_EQ(ex4.pass_batch(9), 4) << "4 + 4 + 1";
  EXPECT_EQ(ex4.pass_batch(16), 4);
  DecisionProbe probe;
  ASSERT_TRUE(cpub->set_decision_probe(&probe));
  EXPECT_EQ(ex.pass_batch(8), 8) << "a probe records whole-batch tensors";
  cpub->set_decision_probe(nullptr);
  auto refb = make_ref_backend();
  Executor ref(g, *refb);
  ref.set_min_pass_bytes(1);
  EXPECT_EQ(ref.pass_batch(5), 1) << "the single-threaded reference: one sample per pass";
}

// A batch run in passes gives the one-pass result (every op is per sample; the MoE and KSH nodes
// included), allocates nothing once planned, and sums the per-run counters (expert tokens) and
// per-node times over its passes. Bit for bit with 2 heads on 2 threads; with 1 head the last
// pass (1 image) has fewer (image, head) pairs than threads, so KSH attention sums its V rows
// in two parts: equal up to summation order.
TEST(Executor, PassesMatchOnePassAndAllocateNothing) {
  constexpr int64_t kBatch = 5;
  for (int64_t heads : {2, 1}) {
    std::mt19937 rng(10);
    const Graph g = shiftadd_graph(rng, 32, heads, 32, 16);
    const int64_t in = shape_numel(g.sample_shape(g.input_value()));
    const int64_t out = shape_numel(g.sample_shape(g.output_value()));
    std::vector<float> x(static_cast<size_t>(kBatch * in)), want(kBatch * out), got(kBatch * out, NAN);
    std::normal_distribution<float> nd;
    for (float& v : x) v = nd(rng);
    size_t moe_node = 0;
    while (g.nodes()[moe_node].op != OpKind::MoeLinear) ++moe_node;
    for (kernels::ShiftMode mode : {kernels::ShiftMode::Exact, kernels::ShiftMode::Fast}) {
      auto whole_be = make_cpu_backend(2, mode), passes_be = make_cpu_backend(2, mode);
      Executor whole(g, *whole_be), passes(g, *passes_be);
      ASSERT_EQ(whole.pass_batch(kBatch), kBatch);
      passes.set_min_pass_bytes(1);
      ASSERT_EQ(passes.pass_batch(kBatch), 2);  // 2 + 2 + 1
      whole.run(kBatch, x.data(), want.data());
      passes.prepare(kBatch);
      passes.set_profiling(true);
      g_allocs = 0;
      g_counting = true;
      for (int r = 0; r < 2; ++r) passes.run(kBatch, x.data(), got.data());
      g_counting = false;
      EXPECT_EQ(g_allocs.load(), 0) << "heap allocations during planned runs in passes";
      if (heads == 2)
        EXPECT_EQ(got, want) << "passes differ from one pass";
      else
        EXPECT_LE(rel_error(got, want), 1e-6) << "passes differ from one pass";
      const auto counts = passes_be->expert_tokens(moe_node), one = whole_be->expert_tokens(moe_node);
      EXPECT_EQ(counts[0] + counts[1], kBatch * 64) << "tokens of every pass, of the last run only";
      EXPECT_EQ(counts, one);
      EXPECT_GT(passes.node_ms()[moe_node], 0.0);
    }
  }
}

TEST(Graph, ShiftAddBuildersCheckShapes) {
  std::mt19937 rng(8);
  Graph g;
  const int x = g.input({3, 16, 16});
  const int t = g.conv2d(x, random_tensor({8, 3, 4, 4}, rng, 0.1f), random_tensor({8}, rng, 0.1f), 4, 0, "p");
  EXPECT_THROW(g.shift_linear(t, random_tensor({4, 7}, rng, 1.0f), random_tensor({4, 7}, rng, 1.0f),
                              random_tensor({4}, rng, 1.0f), "bad_shift"), Error);
  EXPECT_THROW(g.moe_linear(t, random_tensor({3, 8}, rng, 1.0f), random_tensor({2}, rng, 1.0f),
                            random_tensor({4, 8}, rng, 1.0f), random_tensor({4}, rng, 1.0f),
                            random_tensor({4, 8}, rng, 1.0f), random_tensor({4, 8}, rng, 1.0f),
                            random_tensor({4}, rng, 1.0f), "bad_moe"), Error);
  EXPECT_THROW(g.ksh_attention(t, t, 2, random_tensor({1, 2, 25, 3}, rng, 1.0f),
                               random_tensor({1, 2, 1, 25}, rng, 1.0f), random_tensor({2, 16, 25}, rng, 1.0f),
                               random_tensor({2, 1, 9, 1}, rng, 1.0f), "bad_ksh"), Error);
  // Codes: clamp to [-14, 0] and round half to even at load.
  Tensor sh = Tensor::empty(DType::F32, {1, 4}), sg = Tensor::empty(DType::F32, {1, 4});
  const float shv[4] = {-20.0f, 0.7f, -2.5f, -3.0f}, sgv[4] = {1.0f, -0.9f, 0.5f, 1.0f};
  std::copy_n(shv, 4, sh.data<float>());
  std::copy_n(sgv, 4, sg.data<float>());
  Graph g2;
  const int y = g2.shift_linear(g2.input({1, 4}), sh, sg, Tensor(), "codes");
  EXPECT_EQ(g2.sample_shape(y), (Shape{1, 1}));
  const uint8_t* c = g2.nodes().back().w(ShiftW::Codes).data<uint8_t>();
  EXPECT_EQ(c[0], 0x0F);  // +2^-14 (clamped)
  EXPECT_EQ(c[1], 0x11);  // -2^0 (0.7 clamps to 0)
  EXPECT_EQ(c[2], 0x00);  // sign 0.5 rounds to 0: the zero code
  EXPECT_EQ(c[3], 0x04);  // +2^-3
}

TEST(Executor, ProfilingRecordsEveryNode) {
  std::mt19937 rng(3);
  const Graph g = tiny_vit(rng);
  auto be = make_cpu_backend(1);
  Executor ex(g, *be);
  std::vector<float> x(3 * 32 * 32, 0.25f), y(5);
  ex.set_profiling(true);
  ex.run(1, x.data(), y.data());
  double total = 0;
  for (double ms : ex.node_ms()) total += ms;
  EXPECT_GT(total, 0.0);
}

// A backend that lacks attention: the check names node, op and shape before anything runs.
class NoAttention final : public Backend {
 public:
  const char* name() const override { return "test"; }
  bool supports_op(const Graph&, const Node& n, std::string* why) const override {
    if (n.op != OpKind::Attention) return true;
    *why = "attention not implemented";
    return false;
  }
  void reserve(const Graph&, const Node&, int64_t) override {}
  void run(const Graph&, const Node&, const NodeBuffers&) override {}
};

TEST(Executor, UnsupportedOpFailsAtLoadNamingNodeOpAndShape) {
  std::mt19937 rng(4);
  const Graph g = tiny_vit(rng);
  NoAttention be;
  try {
    check_supported(g, be);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("blocks.0.attn"), std::string::npos) << m;
    EXPECT_NE(m.find("attention"), std::string::npos) << m;
    EXPECT_NE(m.find("[17, 48]"), std::string::npos) << m;
  }
}

TEST(Graph, ShapeMismatchNamesTheNode) {
  Graph g;
  const int x = g.input({3, 16, 16});
  std::mt19937 rng(5);
  try {
    g.conv2d(x, random_tensor({8, 1, 4, 4}, rng, 1.0f), random_tensor({8}, rng, 1.0f), 4, 0, "bad_conv");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad_conv"), std::string::npos);
  }
}

}  // namespace
}  // namespace shiftadd
