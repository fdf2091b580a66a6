// ShiftAddViT's discrete decisions against the PyTorch reference (gen_shiftadd_goldens.py):
// every KSH hash bit and every MoE expert choice must equal the reference's, except where the
// reference's own pre-activation is within kBoundary of the decision boundary (there two
// correct fp32 implementations may disagree). Then the reference's codes and choices are fed
// into the engine, which must reproduce the reference logits tightly.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/backend.h"
#include "engine/executor.h"
#include "runtime/model.h"
#include "shiftadd/shiftadd.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const fs::path kGoldens = fs::path(SHIFTADD_SOURCE_DIR) / "tests/fixtures/goldens";
constexpr double kBoundary = 1e-5;  // the allowance around a decision boundary

// The committed small cases, plus full-size ones (gen_shiftadd_goldens.py --full --out DIR) when
// $SHIFTADD_EXTRA_GOLDENS names DIR.
std::vector<std::string> shiftadd_cases() {
  std::vector<std::string> dirs;
  std::vector<fs::path> roots{kGoldens};
  if (const char* extra = std::getenv("SHIFTADD_EXTRA_GOLDENS"); extra && *extra) roots.emplace_back(extra);
  for (const fs::path& root : roots) {
    std::ifstream in(root / "manifest.json");
    if (!in) continue;
    const json m = json::parse(in);
    for (const auto& c : m["cases"])
      if (c.is_object() && c.value("format", "") == "shiftadd_pvt")
        dirs.push_back((root / c["dir"].get<std::string>()).string());
  }
  return dirs;
}

using shiftadd::test::rel_error;

struct Case {
  fs::path dir;
  json meta;
  std::shared_ptr<const shiftadd::Model> model;
  shiftadd::Array x, logits, preact, experts;
  std::vector<size_t> ksh_nodes, moe_nodes;  // graph node indices, in forward order
};

Case load_case(const std::string& name) {
  Case c;
  c.dir = name;
  std::ifstream in(c.dir / "case.json");
  c.meta = json::parse(in);
  c.model = shiftadd::Model::load((c.dir / "model.safetensors").string());
  c.x = shiftadd::load_npy_f32((c.dir / "input.npy").string());
  c.logits = shiftadd::load_npy_f32((c.dir / "logits.npy").string());
  if (c.meta.contains("hash_preact")) c.preact = shiftadd::load_npy_f32((c.dir / "hash_preact.npy").string());
  if (c.meta.contains("experts")) c.experts = shiftadd::load_npy_f32((c.dir / "experts.npy").string());
  const auto& nodes = c.model->impl().graph.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i].op == shiftadd::OpKind::KshAttention) c.ksh_nodes.push_back(i);
    if (nodes[i].op == shiftadd::OpKind::MoeLinear) c.moe_nodes.push_back(i);
  }
  return c;
}

// Runs the case's input through `backend` with `probe` installed; returns the logits.
std::vector<float> run_probed(const Case& c, shiftadd::Backend& backend, shiftadd::DecisionProbe& probe) {
  const shiftadd::Graph& g = c.model->impl().graph;
  EXPECT_TRUE(backend.set_decision_probe(&probe));
  shiftadd::Executor ex(g, backend);
  const int64_t batch = c.x.shape[0];
  std::vector<float> y(c.logits.data.size());
  ex.run(batch, c.x.data.data(), y.data());
  backend.set_decision_probe(nullptr);
  return y;
}

class Decisions : public ::testing::TestWithParam<std::string> {};

TEST_P(Decisions, HashBitsAndExpertChoicesMatchTheReference) {
  const Case c = load_case(GetParam());
  const auto& nodes = c.model->impl().graph.nodes();
  ASSERT_EQ(c.ksh_nodes.size(), c.meta["ksh_layers"].size());
  ASSERT_EQ(c.moe_nodes.size(), c.meta["moe_layers"].size());
  for (bool ref_backend : {false, true}) {
    auto backend = ref_backend ? shiftadd::make_ref_backend() : shiftadd::make_cpu_backend(2);
    shiftadd::DecisionProbe probe;
    run_probed(c, *backend, probe);
    int64_t bits = 0, near = 0;
    for (size_t l = 0; l < c.ksh_nodes.size(); ++l) {
      const json& want = c.meta["ksh_layers"][l];
      const std::string& node = nodes[c.ksh_nodes[l]].name;
      // "block1.0.attn.qk_quant.ksh" (reference module) <-> "block1.0.attn.ksh" (graph node)
      EXPECT_EQ(want["name"].get<std::string>().substr(0, node.size() - 3), node.substr(0, node.size() - 3));
      const std::vector<float>& got = probe.ksh_preact.at(c.ksh_nodes[l]);
      const size_t off = want["offset"].get<size_t>();
      // Full-size cases record how far their fp32 reference is from float64 (deeper layers
      // inherit differences from earlier ones): mismatches inside twice that band are allowed.
      const double band = std::max(kBoundary, 2.0 * want.value("fp32_noise", 0.0));
      ASSERT_LE(off + got.size(), c.preact.data.size()) << node;
      for (size_t i = 0; i < got.size(); ++i) {
        const float r = c.preact.data[off + i];
        ++bits;
        if (std::abs(r) < band) {
          ++near;
          continue;
        }
        ASSERT_EQ(got[i] > 0, r > 0) << backend->name() << " " << node << " pre-activation " << i
                                     << ": engine " << got[i] << ", reference " << r;
      }
    }
    int64_t choices = 0;
    for (size_t l = 0; l < c.moe_nodes.size(); ++l) {
      const json& want = c.meta["moe_layers"][l];
      const std::string& node = nodes[c.moe_nodes[l]].name;
      EXPECT_EQ(want["name"].get<std::string>(), node);
      const std::vector<float>& lg = probe.router_logits.at(c.moe_nodes[l]);
      const size_t off = want["offset"].get<size_t>();
      for (size_t m = 0; m < lg.size() / 2; ++m) {
        ++choices;
        // The reference's gap is not stored: committed cases have gaps >= 1e-3 (gap_eps), far
        // outside the allowance, so every choice must agree; for cases without that guarantee a
        // choice may differ where the engine's own gap is within the allowance.
        const double gap_band = std::max(1e-4, 2.0 * want.value("fp32_noise", 0.0));
        if (c.meta.value("gap_eps", 0.0) < gap_band && std::abs(lg[2 * m + 1] - lg[2 * m]) < gap_band) continue;
        ASSERT_EQ(lg[2 * m + 1] > lg[2 * m] ? 1.0f : 0.0f, c.experts.data[off + m])
            << backend->name() << " " << node << " token " << m << ": logits " << lg[2 * m] << ", "
            << lg[2 * m + 1];
      }
    }
    EXPECT_EQ(bits, static_cast<int64_t>(c.preact.data.size()));
    EXPECT_EQ(choices, static_cast<int64_t>(c.experts.data.size()));
    if (c.meta.value("hash_eps", 0.0) >= kBoundary) {
      EXPECT_EQ(near, 0) << "the generator kept only inputs with no pre-activation near 0";
    }
    std::printf("  %s %s: %lld hash bits (%lld within %g of 0, not compared), %lld expert choices\n",
                fs::path(c.dir).filename().string().c_str(), backend->name(), (long long)bits,
                (long long)near, kBoundary, (long long)choices);  // (or the case's fp32 band)
  }
}

// The reference's decisions fed in: only arithmetic differences remain.
TEST_P(Decisions, ReferenceDecisionsFedInMatchTightly) {
  const Case c = load_case(GetParam());
  shiftadd::DecisionProbe probe;
  for (size_t l = 0; l < c.ksh_nodes.size(); ++l) {
    const json& want = c.meta["ksh_layers"][l];
    const auto shape = want["shape"].get<std::vector<int64_t>>();  // B, H, N, nbits
    const int64_t count = shape[0] * shape[1] * shape[2], nbits = shape[3];
    std::vector<uint64_t> codes(static_cast<size_t>(count), 0);
    const size_t off = want["offset"].get<size_t>();
    for (int64_t i = 0; i < count; ++i)
      for (int64_t k = 0; k < nbits; ++k)
        if (c.preact.data[off + static_cast<size_t>(i * nbits + k)] > 0) codes[static_cast<size_t>(i)] |= uint64_t{1} << k;
    probe.force_codes[c.ksh_nodes[l]] = std::move(codes);
  }
  for (size_t l = 0; l < c.moe_nodes.size(); ++l) {
    const json& want = c.meta["moe_layers"][l];
    const size_t off = want["offset"].get<size_t>();
    const int64_t n = want["tokens"][0].get<int64_t>() + want["tokens"][1].get<int64_t>();
    std::vector<uint8_t> e(static_cast<size_t>(n));
    for (int64_t m = 0; m < n; ++m) e[static_cast<size_t>(m)] = c.experts.data[off + static_cast<size_t>(m)] > 0.5f;
    probe.force_experts[c.moe_nodes[l]] = std::move(e);
  }
  for (bool ref_backend : {false, true}) {
    auto backend = ref_backend ? shiftadd::make_ref_backend() : shiftadd::make_cpu_backend(2);
    const std::vector<float> got = run_probed(c, *backend, probe);
    EXPECT_LT(rel_error(got, c.logits.data), 2e-5) << backend->name() << " " << c.dir;
  }
}

// Fast mode's arithmetic error alone: the exact run's decisions are forced on a fast-mode run,
// so hash bits and expert choices cannot flip and only the truncating shifts differ.
TEST_P(Decisions, FastModeErrorWithExactDecisions) {
  const Case c = load_case(GetParam());
  auto exact = shiftadd::make_cpu_backend(2, shiftadd::kernels::ShiftMode::Exact);
  shiftadd::DecisionProbe rec;
  const std::vector<float> want = run_probed(c, *exact, rec);
  shiftadd::DecisionProbe force;
  const auto& nodes = c.model->impl().graph.nodes();
  for (const auto& [idx, pre] : rec.ksh_preact) {
    const int64_t nbits = nodes[idx].p.nbits;
    std::vector<uint64_t> codes(pre.size() / static_cast<size_t>(nbits), 0);
    for (size_t i = 0; i < pre.size(); ++i)
      if (pre[i] > 0) codes[i / static_cast<size_t>(nbits)] |= uint64_t{1} << (i % static_cast<size_t>(nbits));
    force.force_codes[idx] = std::move(codes);
  }
  for (const auto& [idx, lg] : rec.router_logits) {
    std::vector<uint8_t> e(lg.size() / 2);
    for (size_t m = 0; m < e.size(); ++m) e[m] = lg[2 * m + 1] > lg[2 * m];
    force.force_experts[idx] = std::move(e);
  }
  auto fast = shiftadd::make_cpu_backend(2, shiftadd::kernels::ShiftMode::Fast);
  const std::vector<float> got = run_probed(c, *fast, force);
  const double err = rel_error(got, want);
  RecordProperty("fast_vs_exact_rel_error", std::to_string(err));
  std::printf("  %s: fast vs exact with exact decisions forced: %.3g relative\n",
              c.dir.filename().string().c_str(), err);
  // Fast mode quantizes each token's activations to int8 (step max|x| / 127) and keeps 7
  // exponents per weight row: ~1% per layer (ShiftLinear.FastDeviationPerLayer).
  EXPECT_LT(err, 3e-2) << c.dir;
}

// A forced decision list of the wrong length is an error naming the node, not a silent misuse.
TEST(DecisionProbe, WrongLengthIsNamed) {
  const Case c = load_case(shiftadd_cases().front());
  if (c.moe_nodes.empty()) GTEST_SKIP() << "first case has no MoE layer";
  shiftadd::DecisionProbe probe;
  probe.force_experts[c.moe_nodes[0]] = std::vector<uint8_t>(3, 1);
  auto backend = shiftadd::make_cpu_backend(1);
  try {
    run_probed(c, *backend, probe);
    FAIL() << "expected an error";
  } catch (const shiftadd::Error& e) {
    EXPECT_NE(std::string(e.what()).find(c.model->impl().graph.nodes()[c.moe_nodes[0]].name), std::string::npos)
        << e.what();
  }
}

// Exact-mode logits of the optimized backend (the committed cases are also in test_models.cpp's
// Golden suite; this covers the $SHIFTADD_EXTRA_GOLDENS ones too).
TEST_P(Decisions, ExactLogitsMatchTheReference) {
  const Case c = load_case(GetParam());
  shiftadd::Session s(c.model, {2});
  const std::vector<float> got = s.run(c.x.data, c.x.shape[0]);
  // Committed cases have no decision near a boundary: 1e-4. Full-size ones may flip a few
  // near-boundary decisions, which moves logits by ~1e-4: the 1e-3.
  const double tol = c.meta.value("hash_eps", 0.0) > 0 ? 1e-4 : 1e-3;
  const double err = rel_error(got, c.logits.data);
  std::printf("  %s: exact-mode logits %.3g relative\n", fs::path(c.dir).filename().string().c_str(), err);
  EXPECT_LT(err, tol) << c.dir;
}

INSTANTIATE_TEST_SUITE_P(ShiftAddPvt, Decisions, ::testing::ValuesIn(shiftadd_cases()),
                         [](const auto& info) { return fs::path(info.param).filename().string(); });

}  // namespace
