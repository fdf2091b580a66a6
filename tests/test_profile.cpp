// The profiler (issue 6): exact operation counts for known shapes, per-layer times that add up
// to the run, MoE counts that follow the real routing, the JSON schema, CSV / trace / HTML
// outputs (the HTML rendered in headless Chromium), and profiling that costs nothing when off.
#include <gtest/gtest.h>

#include "test_util.h"


#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "runtime/model.h"
#include "engine/op_counts.h"
#include "loaders/safetensors.h"
#include "shiftadd/profile.h"
#include "shiftadd/shiftadd.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const fs::path kSource = SHIFTADD_SOURCE_DIR;
const std::string kFashion = (kSource / "models/fashion_vit").string();
const fs::path kMoe = kSource / "tests/fixtures/goldens/shiftadd_pvt_moe_64";

fs::path temp_dir() {
  const fs::path d = fs::temp_directory_path() / ("shiftadd_profile_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

// Removes this process's temporary directory (a 23 MB DeiT-Tiny among others) at the end.
class CleanTemp : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(fs::temp_directory_path() / ("shiftadd_profile_" + std::to_string(::getpid())), ec);
  }
};
[[maybe_unused]] ::testing::Environment* const kCleanTemp = ::testing::AddGlobalTestEnvironment(new CleanTemp);

using Result = shiftadd::test::CliResult;
Result sh(const std::string& cmd) { return shiftadd::test::run_shell(cmd); }

Result cli(const std::string& args) { return shiftadd::test::run_cli(args); }

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

size_t count_of(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = hay.find(needle); pos != std::string::npos; pos = hay.find(needle, pos + needle.size())) ++n;
  return n;
}

// A DeiT-Tiny-shaped timm checkpoint with random weights: 224x224x3, patch 16, dim 192,
// depth 12, 3 heads, MLP 768, 1000 classes. Written once per test process.
fs::path deit_tiny() {
  static const fs::path dir = [] {
    const fs::path d = temp_dir() / "deit_tiny";
    fs::create_directories(d);
    const int64_t C = 192, F = 768, N = 197, K = 1000;
    std::map<std::string, shiftadd::Tensor> t;
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    auto add = [&](const std::string& name, shiftadd::Shape s, float fill = NAN) {
      shiftadd::Tensor x = shiftadd::Tensor::empty(shiftadd::DType::F32, std::move(s));
      float* p = x.data<float>();
      for (int64_t i = 0; i < x.numel(); ++i) p[i] = std::isnan(fill) ? nd(rng) : fill;
      t[name] = x;
    };
    add("patch_embed.proj.weight", {C, 3, 16, 16});
    add("patch_embed.proj.bias", {C});
    add("cls_token", {1, 1, C});
    add("pos_embed", {1, N, C});
    for (int i = 0; i < 12; ++i) {
      const std::string b = "blocks." + std::to_string(i) + ".";
      add(b + "norm1.weight", {C}, 1.0f);
      add(b + "norm1.bias", {C}, 0.0f);
      add(b + "attn.qkv.weight", {3 * C, C});
      add(b + "attn.qkv.bias", {3 * C});
      add(b + "attn.proj.weight", {C, C});
      add(b + "attn.proj.bias", {C});
      add(b + "norm2.weight", {C}, 1.0f);
      add(b + "norm2.bias", {C}, 0.0f);
      add(b + "mlp.fc1.weight", {F, C});
      add(b + "mlp.fc1.bias", {F});
      add(b + "mlp.fc2.weight", {C, F});
      add(b + "mlp.fc2.bias", {C});
    }
    add("norm.weight", {C}, 1.0f);
    add("norm.bias", {C}, 0.0f);
    add("head.weight", {K, C});
    add("head.bias", {K});
    shiftadd::save_safetensors((d / "model.safetensors").string(), t, {}, /*overwrite=*/true);
    std::ofstream(d / "config.json") << R"({"num_heads": 3})";
    return d;
  }();
  return dir;
}

const shiftadd::LayerProfile& layer(const shiftadd::ProfileReport& r, const std::string& name) {
  for (const auto& l : r.layers)
    if (l.name == name) return l;
  throw std::runtime_error("no layer " + name);
}

shiftadd::ProfileOptions quick(int64_t batch = 1, int runs = 3) {
  shiftadd::ProfileOptions o;
  o.session.threads = 2;
  o.batch = batch;
  o.runs = runs;
  o.warmup = 1;
  return o;
}

}  // namespace

// DeiT-Tiny at batch 1: patch embedding 196 x 192 x 768, 12 blocks of qkv, q.k, p.v, proj, fc1
// and fc2, and the head: 1,253,683,200 multiply-accumulates exactly.
TEST(Profile, DeitTinyExactMultiplyAccumulates) {
  const auto model = shiftadd::Model::load(deit_tiny().string());
  const shiftadd::ProfileReport r = shiftadd::profile(model, quick());
  EXPECT_EQ(r.totals.mults, 1253683200);
  EXPECT_EQ(layer(r, "patch_embed.proj").ops.mults, 196LL * 192 * 768);
  EXPECT_EQ(layer(r, "blocks.0.attn.qkv").ops.mults, 197LL * 192 * 576);
  EXPECT_EQ(layer(r, "blocks.0.attn").ops.mults, 2LL * 3 * 197 * 197 * 64);
  EXPECT_EQ(layer(r, "blocks.5.attn.proj").ops.mults, 197LL * 192 * 192);
  EXPECT_EQ(layer(r, "blocks.11.mlp.fc1").ops.mults, 197LL * 192 * 768);
  EXPECT_EQ(layer(r, "blocks.11.mlp.fc2").ops.mults, 197LL * 768 * 192);
  EXPECT_EQ(layer(r, "head").ops.mults, 192LL * 1000);
  EXPECT_EQ(layer(r, "blocks.0.norm1").ops.mults, 0);
  EXPECT_EQ(r.totals.shifts, 0);
  // Weights read once per run: every fp32 parameter of the graph.
  EXPECT_EQ(layer(r, "blocks.0.mlp.fc1").ops.weight_bytes, 4LL * (768 * 192 + 768));
  // Layers map 1:1 to graph nodes, in order, with inspect's names and kinds.
  const auto& info = model->info().layers;
  ASSERT_EQ(r.layers.size(), info.size());
  for (size_t i = 0; i < info.size(); ++i) {
    EXPECT_EQ(r.layers[i].name, info[i].name);
    EXPECT_EQ(r.layers[i].kind, info[i].kind);
  }
  // Counts scale with the batch; weight bytes do not.
  const auto b3 = shiftadd::count_ops(*model, 3, {});
  int64_t mults3 = 0;
  for (const auto& l : b3) mults3 += l.ops.mults;
  EXPECT_EQ(mults3, 3 * 1253683200LL);
  // Positive modelled energy, per image and per layer with operations.
  EXPECT_GT(r.energy_pj, 0);
  EXPECT_GT(layer(r, "blocks.0.attn.qkv").energy_pj, layer(r, "blocks.0.norm1").energy_pj);
}

// Per-layer times are measured inside the run: they add up to most of the run's wall time and
// never exceed it.
TEST(Profile, LayerTimesSumToTheTotal) {
  const auto model = shiftadd::Model::load(deit_tiny().string());
  const shiftadd::ProfileReport r = shiftadd::profile(model, quick(1, 5));
  ASSERT_EQ(r.run_layer_ms.size(), 5u);
  double sum = 0;
  for (const auto& l : r.layers) {
    EXPECT_GE(l.ms, 0) << l.name;
    sum += l.ms;
  }
  EXPECT_GT(r.total_ms, 0);
  EXPECT_LE(sum, r.total_ms * 1.05);
  EXPECT_GE(sum, r.total_ms * 0.70) << "layers " << sum << " ms of " << r.total_ms << " ms";
  for (size_t i = 0; i < r.run_ms.size(); ++i) {
    double s = 0;
    for (double v : r.run_layer_ms[i]) s += v;
    EXPECT_LE(s, r.run_ms[i] * 1.0001) << "run " << i;
  }
}

// MoE layers count what each expert really ran: the reference's routed tokens (the golden's
// input), router on every token, dense MACs on expert 0's tokens, shifts on expert 1's.
TEST(Profile, MoeCountsFollowTheRouting) {
  std::ifstream in(kMoe / "case.json");
  const json cs = json::parse(in);
  const auto model = shiftadd::Model::load((kMoe / "model.safetensors").string());
  const shiftadd::Array x = shiftadd::load_npy_f32((kMoe / "input.npy").string());
  shiftadd::ProfileOptions o = quick(x.shape[0], 2);
  o.input = x.data;
  const shiftadd::ProfileReport r = shiftadd::profile(model, o);

  std::map<std::string, const shiftadd::Node*> nodes;
  for (const auto& n : model->impl().graph.nodes()) nodes[n.name] = &n;
  int moe = 0;
  for (const auto& want : cs["moe_layers"]) {
    const std::string name = want["name"].get<std::string>();
    const auto& l = layer(r, name);
    ASSERT_TRUE(l.moe) << name;
    EXPECT_EQ(l.kind, "MoE linear");
    const int64_t t0 = want["tokens"][0].get<int64_t>(), t1 = want["tokens"][1].get<int64_t>();
    EXPECT_EQ(l.expert_tokens[0], t0) << name;
    EXPECT_EQ(l.expert_tokens[1], t1) << name;
    const shiftadd::Node& n = *nodes.at(name);
    const int64_t N = n.w(shiftadd::MoeW::W0).dim(0), K = n.w(shiftadd::MoeW::W0).dim(1);
    const int64_t M = x.shape[0] * shiftadd::shape_numel(l.out_shape) / N;
    EXPECT_EQ(t0 + t1, M) << name;
    const int64_t nz = shiftadd::shift_code_nonzeros(n.w(shiftadd::MoeW::Codes1));
    EXPECT_EQ(l.ops.mults, M * 2 * K + t0 * N * K) << name;
    EXPECT_EQ(l.ops.shifts, t1 * nz) << name;
    ++moe;
  }
  size_t moe_layers = 0;
  for (const auto& l : r.layers) moe_layers += l.moe ? 1 : 0;
  EXPECT_GT(moe, 0);
  EXPECT_EQ(static_cast<size_t>(moe), moe_layers);
  // The ShiftAddViT kinds are all there, with additions in KSH attention and shifts overall.
  bool ksh = false;
  for (const auto& l : r.layers)
    if (l.kind == "KSH attention") {
      ksh = true;
      EXPECT_GT(l.ops.adds, l.ops.mults) << l.name;
    }
  EXPECT_TRUE(ksh);
  EXPECT_GT(r.totals.shifts, 0);
  // The same counts from the public counting function with the session's routing.
  shiftadd::Session s(model, {2});
  s.run(x.data, x.shape[0]);
  const auto counted = shiftadd::count_ops(*model, x.shape[0], s.expert_tokens());
  ASSERT_EQ(counted.size(), r.layers.size());
  for (size_t i = 0; i < counted.size(); ++i) {
    EXPECT_EQ(counted[i].ops.mults, r.layers[i].ops.mults) << counted[i].name;
    EXPECT_EQ(counted[i].ops.shifts, r.layers[i].ops.shifts) << counted[i].name;
  }
  // The CLI on the same input (--input): the same routed tokens in the JSON.
  const Result c = cli("profile " + kMoe.string() + " --format json --runs 1 -t 2 --input " +
                       (kMoe / "input.npy").string());
  ASSERT_EQ(c.code, 0) << c.out;
  const json j = json::parse(c.out);
  EXPECT_EQ(j["batch"], x.shape[0]);
  std::map<std::string, json> by_name;
  for (const auto& l : j["layers"]) by_name[l["name"].get<std::string>()] = l;
  for (const auto& want : cs["moe_layers"]) {
    const json& l = by_name.at(want["name"].get<std::string>());
    EXPECT_EQ(l["tokens_per_expert"], want["tokens"]) << want["name"];
  }
  EXPECT_NE(cli("profile " + kMoe.string() + " --runs 1 --batch 3 --input " + (kMoe / "input.npy").string()).code, 0);
}

// Profiling is a branch: without it a run records no time at all.
TEST(Profile, CostsNothingWhenOff) {
  const auto model = shiftadd::Model::load(kFashion);
  const auto& mi = model->info();
  shiftadd::Session s(model, {1});
  const size_t per = static_cast<size_t>(mi.in_chans * mi.image_size * mi.image_size);
  std::vector<float> x(per, 0.25f), x2(2 * per, 0.25f);
  s.run(x, 1);
  for (double v : s.layer_ms()) EXPECT_EQ(v, 0.0);
  s.set_profiling(true);
  s.run(x, 1);
  double on = 0;
  for (double v : s.layer_ms()) on += v;
  EXPECT_GT(on, 0.0);
  s.set_profiling(false);
  s.run(x2, 2);  // a new batch size: fresh plan, and no timing
  for (double v : s.layer_ms()) EXPECT_EQ(v, 0.0);
}

// The JSON report has the documented schema: the fields the issue names plus extras.
TEST(Profile, JsonSchema) {
  const Result r = cli("profile " + kFashion + " --format json --runs 3 -t 2");
  ASSERT_EQ(r.code, 0) << r.out;
  const json j = json::parse(r.out);
  for (const char* k : {"model", "device", "batch", "runs", "total_ms", "layers", "totals"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["schema"], "shiftadd.profile/1");
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_EQ(j["batch"], 1);
  EXPECT_EQ(j["runs"], 3);
  EXPECT_TRUE(j["total_ms"].is_number());
  ASSERT_TRUE(j["layers"].is_array());
  const auto model = shiftadd::Model::load(kFashion);
  ASSERT_EQ(j["layers"].size(), model->info().layers.size());
  double ms = 0, pj = 0;
  int64_t mults = 0;
  for (const auto& l : j["layers"]) {
    for (const char* k : {"name", "kind", "op"}) EXPECT_TRUE(l[k].is_string()) << k;
    for (const char* k : {"ms", "share", "energy_pj", "compute_pj", "dram_pj"}) EXPECT_TRUE(l[k].is_number()) << k;
    for (const char* k : {"mults", "adds", "shifts", "other_ops", "weight_bytes", "activation_bytes", "bits"})
      EXPECT_TRUE(l[k].is_number_integer()) << k;
    EXPECT_TRUE(l.contains("tokens_per_expert") && l["tokens_per_expert"].is_null());
    ms += l["ms"].get<double>();
    pj += l["energy_pj"].get<double>();
    mults += l["mults"].get<int64_t>();
  }
  const json& t = j["totals"];
  EXPECT_EQ(t["mults"].get<int64_t>(), mults);
  EXPECT_NEAR(t["energy_pj"].get<double>(), pj, 1e-6 * pj);
  EXPECT_NEAR(t["ms"].get<double>(), ms, 1e-9 + 1e-9 * ms);
  EXPECT_GT(t["energy_pj"].get<double>(), 0);
  EXPECT_GT(t["energy_pj_per_image"].get<double>(), 0);
  EXPECT_TRUE(t["measured_energy_j_per_image"].is_null() || t["measured_energy_j_per_image"].get<double>() > 0);
  EXPECT_TRUE(t["measured_energy_source"].is_string());
  if (t["measured_energy_j_per_image"].is_null()) {
    EXPECT_EQ(t["measured_energy_source"], "unavailable");
    EXPECT_FALSE(t["measured_energy_note"].get<std::string>().empty());
  }
  EXPECT_GE(ms, 0.70 * j["total_ms"].get<double>());
  EXPECT_LE(ms, 1.05 * j["total_ms"].get<double>());
  // Several batch sizes: an array of such objects, in order.
  const Result two = cli("profile " + kFashion + " --format json --runs 2 -t 2 --batch 1,4");
  ASSERT_EQ(two.code, 0) << two.out;
  const json a = json::parse(two.out);
  ASSERT_TRUE(a.is_array());
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[1]["batch"], 4);
  EXPECT_EQ(a[1]["totals"]["mults"].get<int64_t>(), 4 * mults);
}

// The unit energies come from the spec by default and can be overridden from a JSON file.
TEST(Profile, EnergyTableOverride) {
  const auto model = shiftadd::Model::load(kFashion);
  const auto layers = shiftadd::count_ops(*model, 1, {});
  const fs::path dir = temp_dir();
  const fs::path f = dir / "units.json";
  std::ofstream(f) << R"({"bits_32": {"mult_pj": 7.4}, "dram_pj_per_16_bits": 0})";
  const shiftadd::EnergyTable t = shiftadd::EnergyTable::from_json_file(f.string());
  EXPECT_DOUBLE_EQ(t.bits32.mult_pj, 7.4);
  EXPECT_DOUBLE_EQ(t.bits32.add_pj, 0.9);
  EXPECT_DOUBLE_EQ(t.dram_pj_per_byte, 0.0);
  EXPECT_DOUBLE_EQ(shiftadd::EnergyTable{}.dram_pj_per_byte, 12.5);
  const Result r = cli("profile " + kFashion + " --format json --runs 1 -t 1 --energy-table " + f.string());
  ASSERT_EQ(r.code, 0) << r.out;
  const json j = json::parse(r.out);
  const json& l0 = j["layers"][0];
  EXPECT_DOUBLE_EQ(l0["dram_pj"].get<double>(), 0.0);
  EXPECT_NEAR(l0["energy_pj"].get<double>(),
              7.4 * (l0["mults"].get<double>() + l0["other_ops"].get<double>()) + 0.9 * l0["adds"].get<double>() +
                  0.13 * l0["shifts"].get<double>(),
              1e-6 * l0["energy_pj"].get<double>());
  const fs::path bad = dir / "bad_units.json";
  std::ofstream(bad) << R"({"bits_32": {"mul_pj": 1}})";
  const Result e = cli("profile " + kFashion + " --runs 1 --energy-table " + bad.string());
  EXPECT_NE(e.code, 0);
  EXPECT_NE(e.out.find("bad_units.json"), std::string::npos) << e.out;
  EXPECT_NE(e.out.find("mul_pj"), std::string::npos) << e.out;
}

// CSV: one row per layer; trace: one complete event per layer per run, valid JSON; existing
// files are only replaced with --force.
TEST(Profile, CsvAndTrace) {
  const fs::path dir = temp_dir();
  const fs::path trace = dir / "trace.json";
  fs::remove(trace);
  const auto model = shiftadd::Model::load(kFashion);
  const size_t nl = model->info().layers.size();
  const Result r = cli("profile " + kFashion + " --format csv --runs 3 -t 2 --trace " + trace.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(count_of(r.out, "\n"), nl + 1);
  EXPECT_EQ(r.out.rfind("model,device,batch,layer,", 0), 0u) << r.out;
  const json t = json::parse(read_file(trace));
  size_t complete = 0, runs = 0;
  for (const auto& e : t["traceEvents"]) {
    if (e["ph"] != "X") continue;
    ++complete;
    if (e["cat"] == "run") ++runs;
    EXPECT_TRUE(e["ts"].is_number() && e["dur"].is_number());
  }
  EXPECT_EQ(runs, 3u);
  EXPECT_EQ(complete, 3 * (nl + 1));
  const Result again = cli("profile " + kFashion + " --runs 1 --trace " + trace.string());
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("--force"), std::string::npos) << again.out;
  EXPECT_EQ(cli("profile " + kFashion + " --runs 1 -f --trace " + trace.string()).code, 0);
  EXPECT_NE(cli("profile " + kFashion + " --batch 0").code, 0);
  EXPECT_NE(cli("profile " + kFashion + " --batch 1,x").code, 0);
}

// CUDA without a CUDA backend (or GPU) is a clean error, not a crash. (CUDASIM_DEVICES=0: the
// cudasim build reports no device.)
TEST(Profile, CudaUnavailableIsAnError) {
  const Result r = shiftadd::test::run_shell("CUDASIM_DEVICES=0 " + std::string(SHIFTADD_CLI) + " profile " + kFashion +
                                   " --runs 1 --device cuda");
  if (r.code == 0) GTEST_SKIP() << "this build and machine run CUDA";
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("error:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cuda"), std::string::npos) << r.out;
}

// The HTML report, dense bundled model vs the ShiftAddViT fixture side by side, opened in
// headless Chromium: it renders (screenshot) and its DOM has one time bar and one energy bar per
// layer of each model.
TEST(Profile, HtmlRendersInChromium) {
  const fs::path dir = temp_dir();
  const fs::path html = dir / "report.html";
  const std::string moe = (kMoe / "model.safetensors").string();
  const Result r = cli("profile " + kFashion + " --compare " + moe + " --runs 2 -t 2 -f --html " + html.string());
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string page = read_file(html);
  const size_t n1 = shiftadd::Model::load(kFashion)->info().layers.size();
  const size_t n2 = shiftadd::Model::load(moe)->info().layers.size();
  EXPECT_EQ(count_of(page, "data-bar=\"time\""), n1 + n2);
  EXPECT_EQ(count_of(page, "class=\"panel\""), 2u);
  EXPECT_EQ(page.find("<script"), std::string::npos);
  EXPECT_EQ(page.find("http://"), page.find("http://www.w3.org/2000/svg"));  // no external assets

  std::string browser;
  for (const char* b : {"chromium", "chromium-browser", "google-chrome"})
    if (sh(std::string("command -v ") + b + " >/dev/null").code == 0) {
      browser = b;
      break;
    }
  if (browser.empty()) GTEST_SKIP() << "SKIPPED: headless Chromium not installed (Debian package `chromium`)";
  const std::string flags = " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
                            "--user-data-dir=" + (dir / "chromium-profile").string() + " ";
  const Result dom = sh("timeout 120 " + browser + flags + "--dump-dom file://" + html.string() + " 2>/dev/null");
  ASSERT_EQ(dom.code, 0) << dom.out;
  EXPECT_EQ(count_of(dom.out, "data-bar=\"time\""), n1 + n2) << dom.out.substr(0, 2000);
  EXPECT_EQ(count_of(dom.out, "data-bar=\"energy\""), n1 + n2);
  EXPECT_EQ(count_of(dom.out, "class=\"layer\""), n1 + n2);
  const fs::path png = dir / "report.png";
  fs::remove(png);
  const Result shot = sh("timeout 120 " + browser + flags + "--window-size=1600,1200 --screenshot=" + png.string() +
                         " file://" + html.string());
  EXPECT_EQ(shot.code, 0) << shot.out;
  ASSERT_TRUE(fs::exists(png)) << shot.out;
  EXPECT_GT(fs::file_size(png), 5000u);
}

TEST(Profile, Help) {
  const Result r = cli("profile --help");
  EXPECT_EQ(r.code, 0);
  for (const char* s : {"Usage", "--batch", "--runs", "--format", "--trace", "--html", "--compare", "--energy-table",
                        "--device"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
}

// Measured energy comes from real counters only: RAPL powercap files when readable (here a fake
// tree, whose counter does not move: 0 J), else "unavailable" with the reason.
TEST(Profile, MeasuredEnergyFromRaplCounters) {
  const fs::path root = temp_dir() / "powercap";
  fs::create_directories(root / "intel-rapl:0");
  fs::create_directories(root / "intel-rapl:0:0");  // a sub-zone: not counted twice
  std::ofstream(root / "intel-rapl:0" / "energy_uj") << "123456\n";
  std::ofstream(root / "intel-rapl:0" / "max_energy_range_uj") << "262143328850\n";
  std::ofstream(root / "intel-rapl:0:0" / "energy_uj") << "999\n";
  const Result r = sh("SHIFTADD_POWERCAP_DIR=" + root.string() + " " + SHIFTADD_CLI + " profile " + kFashion +
                      " --format json --runs 2 -t 1");
  ASSERT_EQ(r.code, 0) << r.out;
  const json t = json::parse(r.out)["totals"];
  EXPECT_EQ(t["measured_energy_source"], "rapl");
  EXPECT_EQ(t["measured_energy_j_per_image"].get<double>(), 0.0);
  const Result none = sh("SHIFTADD_POWERCAP_DIR=" + (root / "missing").string() + " " + SHIFTADD_CLI + " profile " +
                         kFashion + " --format json --runs 1 -t 1");
  ASSERT_EQ(none.code, 0) << none.out;
  const json u = json::parse(none.out)["totals"];
  EXPECT_TRUE(u["measured_energy_j_per_image"].is_null());
  EXPECT_EQ(u["measured_energy_source"], "unavailable");
  EXPECT_NE(u["measured_energy_note"].get<std::string>().find("missing"), std::string::npos);
  const Result off = cli("profile " + kFashion + " --format json --runs 1 -t 1 --no-measure");
  ASSERT_EQ(off.code, 0) << off.out;
  EXPECT_TRUE(json::parse(off.out)["totals"]["measured_energy_j_per_image"].is_null());
}

// Every renderer, in process, on two reports (a model and a compare model, as --compare does).
TEST(Profile, RenderersInProcess) {
  const auto dense = shiftadd::Model::load(kFashion);
  const auto moe = shiftadd::Model::load((kMoe / "model.safetensors").string());
  const std::vector<shiftadd::ProfileReport> rs{shiftadd::profile(dense, quick(2, 2)),
                                               shiftadd::profile(moe, quick(2, 2))};
  const json a = json::parse(shiftadd::profile_json(rs));
  ASSERT_TRUE(a.is_array());
  EXPECT_EQ(a.size(), 2u);
  EXPECT_EQ(count_of(shiftadd::profile_csv(rs), "\n"), 1 + rs[0].layers.size() + rs[1].layers.size());
  const std::string table = shiftadd::profile_table(rs);
  for (const char* s : {"KSH attention", "MoE linear", "multiply-accumulates", "modelled energy", "measured energy"})
    EXPECT_NE(table.find(s), std::string::npos) << s;
  const json t = json::parse(shiftadd::profile_trace(rs));
  EXPECT_FALSE(t["traceEvents"].empty());
  const std::string html = shiftadd::profile_html(rs);
  EXPECT_EQ(count_of(html, "data-bar=\"energy\""), rs[0].layers.size() + rs[1].layers.size());
  EXPECT_EQ(count_of(html, "<svg"), 2u);
}

// The HTML report: rows of side-by-side panels align by layer name (a layer one model lacks is a
// placeholder row), bars take their layer kind's colour, and each layer shows its operation mix.
TEST(Profile, HtmlAlignsRowsByNameColoursKindsAndShowsTheMix) {
  auto layer = [](const char* name, const char* kind, int64_t mults, int64_t adds, int64_t shifts) {
    shiftadd::LayerProfile l;
    l.name = name;
    l.kind = kind;
    l.ms = 1;
    l.ops.mults = mults;
    l.ops.adds = adds;
    l.ops.shifts = shifts;
    return l;
  };
  shiftadd::ProfileReport a, b;
  a.model = "dense";
  b.model = "converted";
  a.layers = {layer("embed", "conv", 10, 10, 0), layer("fc1", "dense linear", 100, 100, 0),
              layer("head", "dense linear", 5, 5, 0)};
  b.layers = {layer("embed", "conv", 10, 10, 0), layer("router", "dense linear", 1, 1, 0),
              layer("fc1", "shift linear", 0, 100, 100), layer("head", "dense linear", 5, 5, 0)};
  const std::string html = shiftadd::profile_html({a, b});
  // y of a layer's row in the n-th panel.
  auto row_y = [&](int panel, const std::string& name) {
    size_t at = 0;
    for (int p = 0; p <= panel; ++p) at = html.find("<svg", at + 1);
    const size_t g = html.find("data-layer=\"" + name + "\"", at);
    const size_t y = html.find(" y=\"", g);
    return std::stod(html.substr(y + 4, 10));
  };
  for (const char* name : {"embed", "router", "fc1", "head"}) EXPECT_EQ(row_y(0, name), row_y(1, name)) << name;
  EXPECT_EQ(count_of(html, "class=\"layer missing\""), 1u);  // "router" in the dense panel
  EXPECT_EQ(count_of(html, "data-bar=\"time\""), 7u);
  // fc1 is blue when dense and green when shift; the shift layer's mix has shifts, no mults.
  const size_t dense_fc1 = html.find("data-layer=\"fc1\""), shift_fc1 = html.find("data-layer=\"fc1\"", dense_fc1 + 1);
  EXPECT_NE(html.find("fill=\"#3b7dd8\"", dense_fc1), std::string::npos);
  const std::string shift_row = html.substr(shift_fc1, html.find("</g>", shift_fc1) - shift_fc1);
  EXPECT_NE(shift_row.find("fill=\"#2ca02c\""), std::string::npos) << shift_row;
  EXPECT_NE(shift_row.find("data-bar=\"mix-shifts\""), std::string::npos);
  EXPECT_EQ(shift_row.find("data-bar=\"mix-mults\""), std::string::npos);
  for (const char* kind : {"conv", "dense linear", "shift linear"}) EXPECT_NE(html.find(kind), std::string::npos);
}
