// The CUDA backend.
//
// Host side (always runs, no GPU needed): the __host__ __device__ arithmetic shared with the
// CUDA kernels (core/shift_codes.h), the CUDA backend's dispatch table (it must support every
// op the CPU backend supports), the executor's device-backend protocol (arena slot for the
// input, copies, forward capture and the eager re-run after a failed capture) through a fake
// device backend over host memory, and the Session error without a GPU.
//
// Device side (on a GPU, or on cudasim in the SHIFTADD_CUDA_SIM build that CI runs; skipped,
// visibly, otherwise): every op is checked against the ref backend by the backend-ops harness
// (tests/test_backend_ops.cpp, backends "cuda" and "cuda-eager"); here, what is CUDA's own:
// shift linear bit for bit, the MoE plan in one and several tiles with the routing changing
// between replays of one captured graph, the fp16 / TF32 modes, and whole models (the golden
// fixtures), with the ShiftAddViT MoE model in exact mode within 1e-3 relative of the CPU.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <tuple>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend.h"
#include "engine/executor.h"
#include "engine/graph.h"
#include "runtime/model.h"
#include "core/shift_codes.h"
#include "shiftadd/shiftadd.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace shiftadd {
namespace {

const fs::path kFixtures = fs::path(SHIFTADD_SOURCE_DIR) / "tests/fixtures";
using namespace test;

// A graph whose output is one shift linear over a [N, K] input: for bit-exact comparisons.
[[maybe_unused]] Graph shift_graph(std::mt19937& rng, int64_t N, int64_t K, int64_t out) {
  Graph g;
  const int x = g.input({N, K});
  g.set_output(g.shift_linear(x, random_tensor({out, K}, rng, 7.0f, -7.0f), random_tensor({out, K}, rng, 1.2f),
                              random_tensor({out}, rng, 0.5f), "shift"));
  return g;
}

// ----- host side: shared __host__ __device__ arithmetic ------------------------------------------

TEST(CudaHost, SharedShiftArithmetic) {
  // Every 5-bit code decodes consistently through the HD helpers the CUDA kernels use.
  for (int c = 0; c < 32; ++c) {
    const auto code = static_cast<uint8_t>(c);
    const float w = decode_shift_weight(code);
    if (shift_code_is_zero(code)) {
      EXPECT_EQ(w, 0.0f);
      continue;
    }
    EXPECT_EQ(w, shift_code_sign(code) * std::ldexp(1.0f, shift_code_exponent(code)));
    EXPECT_EQ(shift_code_lshift(code), 14 + shift_code_exponent(code));
    EXPECT_EQ(encode_shift(shift_code_sign(code), shift_code_exponent(code)), code);
  }
  // Ties to even, independent of the rounding mode.
  for (float x : {-2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f, 3.5f, -13.5f, 1e9f, -7.25f, 7.75f})
    EXPECT_EQ(round_half_even(x), std::nearbyint(x)) << x;
  // Q16.16: floor(x * 2^16), clamped, NaN -> 0; equals the double formula.
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(-40000.0, 40000.0);
  for (int i = 0; i < 20000; ++i) {
    const float x = static_cast<float>(u(rng) * (i % 3 == 0 ? 1e-4 : 1.0));
    const double want = std::clamp(std::floor(static_cast<double>(x) * 65536.0), -2147483648.0, 2147418112.0);
    ASSERT_EQ(static_cast<double>(quantize_q16(x)), want) << x;
  }
  EXPECT_EQ(quantize_q16(kNaN), 0);
  EXPECT_EQ(quantize_q16(INFINITY), 2147418112);
  EXPECT_EQ(quantize_q16(-INFINITY), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(pack_shift_weight(kNaN, 1.0f), kShiftZeroCode);
}

// ----- host side: the executor's device-backend protocol ------------------------------------------

// A "device" backend over host memory: delegates kernels to the ref backend, owns the arena,
// and captures like the CUDA backend (eager first run, capture on the second, replay after),
// replaying by re-running the recorded node list. Optionally fails the first capture.
class FakeDevice final : public Backend {
 public:
  explicit FakeDevice(bool fail_first_capture) : ref_(make_ref_backend()), fail_(fail_first_capture) {}
  const char* name() const override { return "fake-device"; }
  bool supports_op(const Graph& g, const Node& n, std::string* why) const override { return ref_->supports_op(g, n, why); }
  void reserve(const Graph& g, const Node& n, int64_t batch) override { ref_->reserve(g, n, batch); }
  void run(const Graph& g, const Node& n, const NodeBuffers& b) override {
    if (state_ == Forward::Capturing) {
      recorded_[b.batch].push_back({&g, &n, b});
      return;
    }
    ref_->run(g, n, b);
    ++eager_nodes;
  }
  bool device_memory() const override { return true; }
  float* device_arena(int64_t floats) override {
    arena_.assign(static_cast<size_t>(floats), kNaN);  // poisoned, like the CUDA backend's
    recorded_.clear();                                  // captured pointers die with the arena
    runs_.clear();
    ++arena_allocs;
    return arena_.data();
  }
  void copy_input(float* dst, const float* host, int64_t n) override { std::copy(host, host + n, dst); ++copies_in; }
  void copy_output(float* host, const float* src, int64_t n) override { std::copy(src, src + n, host); }
  Forward begin_forward(int64_t batch, bool profiling) override {
    if (profiling) return state_ = Forward::Eager;
    if (recorded_.count(batch) && !recorded_[batch].empty()) {
      for (const Rec& r : recorded_[batch]) ref_->run(*r.g, *r.n, r.b);
      ++replays;
      return state_ = Forward::Replayed;
    }
    if (runs_[batch]++ == 0 || failed_.count(batch)) return state_ = Forward::Eager;
    recorded_[batch].clear();
    return state_ = Forward::Capturing;
  }
  bool end_forward(int64_t batch, Forward f) override {
    state_ = Forward::Eager;
    if (f != Forward::Capturing) return true;
    if (fail_) {
      fail_ = false;
      failed_.insert(batch);
      recorded_.erase(batch);
      ++failed_captures;
      return false;
    }
    for (const Rec& r : recorded_[batch]) ref_->run(*r.g, *r.n, r.b);
    ++captures;
    return true;
  }
  int eager_nodes = 0, replays = 0, captures = 0, failed_captures = 0, arena_allocs = 0, copies_in = 0;

 private:
  struct Rec {
    const Graph* g;
    const Node* n;
    NodeBuffers b;
  };
  std::unique_ptr<Backend> ref_;
  bool fail_;
  std::vector<float> arena_;
  Forward state_ = Forward::Eager;
  std::map<int64_t, std::vector<Rec>> recorded_;
  std::map<int64_t, int> runs_;
  std::set<int64_t> failed_;
};

TEST(CudaHost, ExecutorDeviceProtocolMatchesReference) {
  for (bool fail : {false, true}) {
    std::mt19937 rng(11);
    const Graph g = shiftadd_graph(rng, 32, 2, 32, 16);
    auto refb = make_ref_backend();
    FakeDevice dev(fail);
    Executor e(g, dev);
    for (int round = 0; round < 4; ++round)
      for (int64_t batch : {2, 1}) {
        const std::vector<float> x = random_input(input_numel(g, batch), rng);
        const std::vector<float> want = run_graph(g, *refb, batch, x);
        std::vector<float> got(want.size(), kNaN);
        e.run(batch, x.data(), got.data());
        ASSERT_EQ(got, want) << "round " << round << " batch " << batch << (fail ? " (failed capture)" : "");
      }
    EXPECT_EQ(dev.failed_captures, fail ? 1 : 0);
    EXPECT_EQ(dev.copies_in, 8);
    EXPECT_EQ(dev.replays, fail ? 2 : 4);
    EXPECT_EQ(dev.captures, fail ? 1 : 2);
    EXPECT_GE(dev.arena_allocs, 1);
    // The input has its own slot after the activations.
    EXPECT_GE(e.arena_bytes(), sizeof(float) * (make_plan(g, 2).arena_floats + input_numel(g, 2)));
  }
}

// ----- host side: dispatch table and the Session error --------------------------------------------

#ifdef SHIFTADD_HAS_CUDA
TEST(CudaHost, SupportsEveryOpTheCpuBackendSupports) {
  std::mt19937 rng(5);
  std::vector<Graph> graphs;
  graphs.push_back(vit_graph(rng, 48, 3, 32, 8));
  graphs.push_back(pvt_graph(rng, 32, 2, 32, 2));
  graphs.push_back(shiftadd_graph(rng, 32, 2, 32, 16));
  graphs.push_back(shiftadd_graph(rng, 32, 2, 32, 64));
  graphs.push_back(shiftadd_vit_graph(rng, 32, 2, 32, 16));
  std::set<OpKind> seen;
  auto cpu = make_cpu_backend(1);
  for (const Graph& g : graphs)
    for (const Node& n : g.nodes()) {
      std::string why;
      ASSERT_TRUE(cpu->supports_op(g, n, &why));
      EXPECT_TRUE(cuda_supports_op(g, n, &why)) << n.name << ": " << why;
      seen.insert(n.op);
    }
  for (int op = 0; op < static_cast<int>(OpKind::Count); ++op)
    EXPECT_TRUE(seen.count(static_cast<OpKind>(op))) << "no test graph has op " << op_traits(static_cast<OpKind>(op)).name;
  // Head dims beyond the attention kernel are refused by name, not at run time.
  Graph big;
  const int x = big.input({4, 3 * 256});
  big.set_output(big.attention(x, 1, 1.0f, "wide"));
  std::string why;
  EXPECT_FALSE(cuda_supports_op(big, big.nodes().back(), &why));
  EXPECT_NE(why.find("head dim"), std::string::npos) << why;
}

// Model paths of the golden fixtures (tests/fixtures/{goldens,goldens_real}), as test_models.cpp reads them.
std::vector<fs::path> golden_model_paths(const char* set) {
  std::vector<fs::path> out;
  const nlohmann::json m = nlohmann::json::parse(std::ifstream(kFixtures / set / "manifest.json"));
  for (const auto& c : m["cases"]) {
    const std::string name = c.is_string() ? c.get<std::string>() : c.value("dir", c["name"].get<std::string>());
    const fs::path dir = kFixtures / set / name;
    const nlohmann::json cs = nlohmann::json::parse(std::ifstream(dir / "case.json"));
    out.push_back(dir / cs["model"].get<std::string>());
  }
  return out;
}

// Every golden fixture model: each node is accepted by the CUDA dispatch table (no GPU needed).
TEST(CudaHost, FixtureModelsAreFullySupported) {
  std::vector<fs::path> paths = golden_model_paths("goldens");
  for (const fs::path& p : golden_model_paths("goldens_real")) paths.push_back(p);
  ASSERT_GE(paths.size(), 10u);
  for (const fs::path& path : paths) {
    const std::string name = path.string();
    const auto model = Model::load(name);
    const Graph& g = model->impl().graph;
    for (const Node& n : g.nodes()) {
      std::string why;
      EXPECT_TRUE(cuda_supports_op(g, n, &why)) << name << " " << n.name << ": " << why;
    }
  }
}
#endif

bool have_gpu(std::string* why) {
#ifdef SHIFTADD_HAS_CUDA
  return cuda_device_available(why);
#else
  *why = "this build has no CUDA backend (SHIFTADD_CUDA=OFF or no nvcc)";
  return false;
#endif
}

TEST(CudaHost, SessionOnCudaWithoutGpuIsAClearError) {
  std::string why;
#ifdef SHIFTADD_CUDA_SIM
  setenv("CUDASIM_DEVICES", "0", 1);  // the simulator reports no device
  struct Restore {
    ~Restore() { unsetenv("CUDASIM_DEVICES"); }
  } restore;
#endif
  if (have_gpu(&why)) GTEST_SKIP() << "a GPU is present: the no-GPU error path cannot be exercised";
  const auto model = Model::load(default_model_path());
  SessionOptions o;
  o.device = Device::CUDA;
  try {
    Session s(model, o);
    FAIL() << "Session on CUDA without a GPU did not throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
#ifdef SHIFTADD_HAS_CUDA
    EXPECT_NE(msg.find("no CUDA device/driver found: "), std::string::npos) << msg;
#else
    EXPECT_NE(msg.find("no CUDA backend"), std::string::npos) << msg;
#endif
  }
}

// ----- device side ----------------------------------------------------------------------------------

#ifdef SHIFTADD_HAS_CUDA
#define REQUIRE_GPU()                                                                         \
  do {                                                                                        \
    std::string why_;                                                                         \
    if (!have_gpu(&why_)) GTEST_SKIP() << "no CUDA GPU: " << why_ << " (CUDA tests skipped)"; \
  } while (0)

// Runs g through the CUDA backend and the ref backend at several batch sizes, three times each
// (eager, captured, replayed) with fresh inputs, and compares.
void compare_with_ref(const Graph& g, double tol, std::mt19937& rng, CudaOptions o = {},
                      std::vector<int64_t> batches = {1, 3, 8}) {
  auto cud = make_cuda_backend(o);
  expect_matches_reference(g, *cud, o.shift_mode, tol, rng, batches, /*rounds=*/3);
}

TEST(CudaBackend, ShiftLinearIsBitExact) {
  REQUIRE_GPU();
  std::mt19937 rng(23);
  for (auto mode : {kernels::ShiftMode::Exact, kernels::ShiftMode::Fast}) {
    CudaOptions o;
    o.shift_mode = mode;
    for (auto [N, K, out] : std::initializer_list<std::tuple<int, int, int>>{
             {1, 1, 1}, {7, 33, 65}, {64, 64, 64}, {100, 256, 96}, {3, 1280, 70}})
      compare_with_ref(shift_graph(rng, N, K, out), 0.0, rng, o, {1, 2, 5});
  }
}

// The MoE plan in both forms: one tile (M <= 4096, one launch) and several tiles (counts, then
// writes), with the routing changing between replays of one captured graph.
TEST(CudaBackend, MoePlanOneTileAndAcrossTiles) {
  REQUIRE_GPU();
  std::mt19937 rng(27);
  const int64_t T = 64, C = 32;
  Graph g;
  const int x = g.input({T, C});
  const float ws = 1.0f / std::sqrt(static_cast<float>(C));
  g.set_output(g.moe_linear(x, random_tensor({2, C}, rng, 1.0f), random_tensor({2}, rng, 0.1f),
                            random_tensor({C, C}, rng, ws), random_tensor({C}, rng, 0.1f),
                            random_tensor({C, C}, rng, 3.0f, -4.0f), random_tensor({C, C}, rng, 1.2f),
                            random_tensor({C}, rng, 0.1f), "moe"));
  compare_with_ref(g, 1e-5, rng, {}, {1, 64, 65, 200});  // M = 64, 4096 (one tile), 4160, 12800
}

TEST(CudaBackend, ReducedPrecisionModes) {
  REQUIRE_GPU();
  std::mt19937 rng(26);
  CudaOptions o;
  o.math = CudaMath::TF32;  // 10-bit significands in the products
  compare_with_ref(vit_graph(rng, 64, 2, 32, 8), 1e-2, rng, o);
  o.math = CudaMath::F16;  // fp16 inputs (11-bit significands), fp32 accumulation
  compare_with_ref(vit_graph(rng, 64, 2, 32, 8), 2e-2, rng, o);
  compare_with_ref(pvt_graph(rng, 32, 1, 32, 2), 2e-2, rng, o);
}

// Whole models: every golden fixture on CUDA against its PyTorch logits, and the ShiftAddViT
// models against the CPU exact mode.
TEST(CudaModels, GoldensMatchPyTorch) {
  REQUIRE_GPU();
  for (const char* set : {"goldens", "goldens_real"})
    for (const fs::path& path : golden_model_paths(set)) {
      const fs::path dir = fs::is_directory(path) ? path : path.parent_path();
      const auto model = Model::load(path.string());
      const Array x = load_npy_f32((dir / "input.npy").string());
      const Array want = load_npy_f32((dir / "logits.npy").string());
      SessionOptions o;
      o.device = Device::CUDA;
      Session s(model, o);
      for (int r = 0; r < 3; ++r) {  // eager, captured, replayed
        const std::vector<float> got = s.run(x.data, x.shape[0]);
        EXPECT_LE(rel_error(got, want.data), 1e-4) << path << " run " << r;
      }
    }
}

TEST(CudaModels, ShiftAddPvtMoeExactMatchesCpu) {
  REQUIRE_GPU();
  for (const char* name : {"shiftadd_pvt_moe_64", "shiftadd_pvt_linangular_64", "shiftadd_pvt_shift_64"}) {
    const fs::path dir = kFixtures / "goldens" / name;
    const auto model = Model::load(dir.string());
    const Array x = load_npy_f32((dir / "input.npy").string());
    Session cpu(model, {2});
    const std::vector<float> want = cpu.run(x.data, x.shape[0]);
    SessionOptions o;
    o.device = Device::CUDA;
    Session gpu(model, o);
    for (int r = 0; r < 3; ++r) {
      const std::vector<float> got = gpu.run(x.data, x.shape[0]);
      EXPECT_LE(rel_error(got, want), 1e-3) << name << " run " << r;
      const auto a = cpu.expert_tokens(), b = gpu.expert_tokens();
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i)
        EXPECT_EQ(a[i].tokens[0], b[i].tokens[0]) << name << " " << a[i].layer;
    }
    // Per-layer device timing (a profiling pass outside graph replay).
    gpu.set_profiling(true);
    gpu.run(x.data, x.shape[0]);
    const std::vector<double> ms = gpu.layer_ms();
    EXPECT_EQ(ms.size(), model->impl().graph.nodes().size() - 1);
    double total = 0;
    for (double t : ms) total += t;
    EXPECT_GT(total, 0.0);
    gpu.set_profiling(false);
    EXPECT_LE(rel_error(gpu.run(x.data, x.shape[0]), want), 1e-3);
  }
}

// Fast mode on the GPU is the CPU's fast mode: its kernels are bit for bit ref's before GELU
// (CudaBackend.ShiftLinearIsBitExact), but int8 quantisation is discrete, so the ~1e-7 between
// the GPU's erff GELU and the CPU's vector erf can move a value across a rounding boundary
// (~1e-2 of a layer at most) and, in a random MoE model, a router decision near a tie: there only
// the top-1 class is compared.
TEST(CudaModels, ShiftAddFastModeMatchesCpu) {
  REQUIRE_GPU();
  for (const char* name : {"shiftadd_pvt_shift_64", "shiftadd_pvt_shiftattn_64", "shiftadd_pvt_linangular_64",
                           "shiftadd_pvt_moe_64"}) {
    const fs::path dir = kFixtures / "goldens" / name;
    const auto model = Model::load(dir.string());
    const Array x = load_npy_f32((dir / "input.npy").string());
    SessionOptions co;
    co.threads = 2;
    co.mode = ShiftMode::Fast;
    Session cpu(model, co);
    SessionOptions o = co;
    o.device = Device::CUDA;
    Session gpu(model, o);
    const std::vector<float> g = gpu.run(x.data, x.shape[0]), c = cpu.run(x.data, x.shape[0]);
    if (std::string(name) != "shiftadd_pvt_moe_64") {
      EXPECT_LE(rel_error(g, c), 1e-2) << name;
      continue;
    }
    const int64_t classes = static_cast<int64_t>(c.size()) / x.shape[0];
    for (int64_t i = 0; i < x.shape[0]; ++i)
      EXPECT_EQ(std::max_element(g.begin() + i * classes, g.begin() + (i + 1) * classes) - g.begin(),
                std::max_element(c.begin() + i * classes, c.begin() + (i + 1) * classes) - c.begin())
          << name << " image " << i;
  }
}

// Sessions are independent: two CUDA sessions of one model, each on its own host thread, run
// (eagerly, captured and replayed) at the same time and both give the CPU's logits.
TEST(CudaModels, SessionsOnSeveralThreads) {
  REQUIRE_GPU();
  const fs::path dir = kFixtures / "goldens/shiftadd_pvt_moe_64";
  const auto model = Model::load(dir.string());
  const Array x = load_npy_f32((dir / "input.npy").string());
  Session cpu(model, {2});
  const std::vector<float> want = cpu.run(x.data, x.shape[0]);
  std::vector<double> err(2, 1.0);
  std::vector<std::string> failure(2);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      try {
        SessionOptions o;
        o.device = Device::CUDA;
        Session gpu(model, o);
        double worst = 0;
        for (int r = 0; r < 4; ++r) worst = std::max(worst, rel_error(gpu.run(x.data, x.shape[0]), want));
        err[t] = worst;
      } catch (const std::exception& e) {
        failure[t] = e.what();
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 2; ++t) {
    EXPECT_EQ(failure[t], "") << "thread " << t;
    EXPECT_LE(err[t], 1e-3) << "thread " << t;
  }
}

// The command line with --device cuda: classify and run give the CPU's answers, bench and
// profile report (per-layer device times from events).
TEST(CudaCli, EveryCommandTakesDeviceCuda) {
  REQUIRE_GPU();
  const std::string image = std::string(SHIFTADD_SOURCE_DIR) + "/models/fashion_vit/samples/0001_pullover.png";
  const test::CliResult cpu = test::run_cli("classify " + image + " --json --top 1");
  const test::CliResult gpu = test::run_cli("classify --device cuda " + image + " --json --top 1");
  ASSERT_EQ(cpu.code, 0) << cpu.out;
  ASSERT_EQ(gpu.code, 0) << gpu.out;
  const auto top = [](const std::string& out) { return nlohmann::json::parse(out)["top"][0]; };
  EXPECT_EQ(top(gpu.out)["index"], top(cpu.out)["index"]);
  EXPECT_NEAR(top(gpu.out)["probability"].get<double>(), top(cpu.out)["probability"].get<double>(), 1e-4);

  const fs::path dir = kFixtures / "goldens/shiftadd_pvt_moe_64";
  const fs::path out = fs::temp_directory_path() / ("shiftadd_cuda_cli_" + std::to_string(::getpid()));
  fs::create_directories(out);
  for (const char* device : {"cpu", "cuda"}) {
    const test::CliResult r = test::run_cli("run " + dir.string() + " --input " + (dir / "input.npy").string() +
                                            " --output " + (out / (std::string(device) + ".npy")).string() +
                                            " --device " + device);
    ASSERT_EQ(r.code, 0) << r.out;
  }
  EXPECT_LE(test::rel_error(load_npy_f32((out / "cuda.npy").string()).data, load_npy_f32((out / "cpu.npy").string()).data),
            1e-3);
  fs::remove_all(out);

  const test::CliResult bench = test::run_cli("bench " + dir.string() + " --device cuda --runs 3 --warmup 1 --json");
  ASSERT_EQ(bench.code, 0) << bench.out;
  EXPECT_GT(nlohmann::json::parse(bench.out)["median_ms"].get<double>(), 0.0);
  const test::CliResult prof = test::run_cli("profile " + dir.string() + " --device cuda --runs 1 --format json");
  ASSERT_EQ(prof.code, 0) << prof.out;
  const nlohmann::json p = nlohmann::json::parse(prof.out);
  ASSERT_FALSE(p["layers"].empty()) << prof.out;
  double total = 0;
  for (const auto& layer : p["layers"]) total += layer["ms"].get<double>();
  EXPECT_GT(total, 0.0);
}
#else
TEST(CudaBackend, NotBuilt) { GTEST_SKIP() << "this build has no CUDA backend: CUDA tests skipped"; }
#endif

}  // namespace
}  // namespace shiftadd
