// The `shiftadd` command line, run as a user would: success paths and error paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "shiftadd/shiftadd.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

using Result = shiftadd::test::CliResult;
Result shiftadd_cli(const std::string& args) { return shiftadd::test::run_cli(args); }

const std::string kModel = fs::path(SHIFTADD_SOURCE_DIR) / "models/fashion_vit";
const std::string kSamples = fs::path(SHIFTADD_SOURCE_DIR) / "models/fashion_vit/samples";

std::string first_sample() {
  for (const auto& e : fs::directory_iterator(kSamples))
    if (e.path().extension() == ".png") return e.path().string();
  return "";
}

fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("shiftadd_cli_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

TEST(Cli, HelpForEverySubcommand) {
  for (const char* sub : {"", "classify", "run", "bench", "inspect"}) {
    const Result r = shiftadd_cli(std::string(sub) + " --help");
    EXPECT_EQ(r.code, 0) << sub;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << r.out;
  }
}

// ShiftAddViT PVTv2 (MoE golden): inspect shows the ShiftAdd kinds with their arithmetic, run
// --mode exact matches the reference, and --mode fast is the library's fast mode (int8 shift
// experts: its accuracy is tested in test_shiftadd_decisions.cpp) with the same top-1.
TEST(Cli, ShiftAddInspectAndModes) {
  const fs::path d = fs::path(SHIFTADD_SOURCE_DIR) / "tests/fixtures/goldens/shiftadd_pvt_moe_64";
  const std::string model = (d / "model.safetensors").string();
  const Result ins = shiftadd_cli("inspect " + model);
  EXPECT_EQ(ins.code, 0) << ins.out;
  for (const char* s : {"shiftadd_pvt_v2", "MoE linear", "KSH attention", "16-bit KSH codes",
                        "shift codes, exponent [", "below fast mode's int8 window", "softmax attention"})
    EXPECT_NE(ins.out.find(s), std::string::npos) << s << "\n" << ins.out;
  const shiftadd::Array want = shiftadd::load_npy_f32((d / "logits.npy").string());
  const fs::path tmp = temp_dir();
  for (const char* mode : {"exact", "fast"}) {
    const fs::path out = tmp / (std::string("logits_") + mode + ".npy");
    const Result r = shiftadd_cli("run " + model + " -i " + (d / "input.npy").string() + " -o " +
                                  out.string() + " -f -t 2 --mode " + mode);
    ASSERT_EQ(r.code, 0) << r.out;
    const shiftadd::Array got = shiftadd::load_npy_f32(out.string());
    ASSERT_EQ(got.data.size(), want.data.size());
    if (std::string(mode) == "exact") {
      double diff = 0, mx = 0;
      for (size_t i = 0; i < want.data.size(); ++i) {
        diff = std::max(diff, static_cast<double>(std::abs(got.data[i] - want.data[i])));
        mx = std::max(mx, static_cast<double>(std::abs(want.data[i])));
      }
      EXPECT_LE(diff / mx, 1e-4) << mode;
    } else {
      const auto m = shiftadd::Model::load(model);
      shiftadd::Session s(m, {.threads = 2, .mode = shiftadd::ShiftMode::Fast});
      const shiftadd::Array x = shiftadd::load_npy_f32((d / "input.npy").string());
      std::vector<float> direct(got.data.size());
      s.run(x.data.data(), x.shape[0], direct.data());
      EXPECT_EQ(got.data, direct) << "run --mode fast is not the library's fast mode";
    }
    const int64_t classes = want.shape[1];
    for (int64_t b = 0; b < want.shape[0]; ++b) {
      auto row = [&](const std::vector<float>& v) {
        return std::max_element(v.begin() + b * classes, v.begin() + (b + 1) * classes) - v.begin();
      };
      EXPECT_EQ(row(got.data), row(want.data)) << mode << " image " << b;
    }
  }
  EXPECT_NE(shiftadd_cli("run " + model + " -i " + (d / "input.npy").string() + " -o " +
                         (tmp / "x.npy").string() + " -f --mode bogus").code, 0);
}

TEST(Cli, ClassifyWithTheBundledModel) {
  const Result r = shiftadd_cli("classify " + first_sample() + " --top 3");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("%"), std::string::npos) << r.out;
}

TEST(Cli, ClassifyJsonWithExplicitModel) {
  const Result r = shiftadd_cli("classify " + kModel + " " + first_sample() + " --json --top 2");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["top"].size(), 2u);
  EXPECT_GT(j["top"][0]["probability"].get<double>(), 0.0);
}

TEST(Cli, ClassifyUnreadableImageFails) {
  const fs::path bad = temp_dir() / "not_an_image.png";
  std::ofstream(bad) << "this is not a png";
  const Result r = shiftadd_cli("classify " + bad.string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("not_an_image.png"), std::string::npos) << r.out;
}

// A batch of 2 inputs for `model`, value(i) at element i.
shiftadd::Array model_input(const shiftadd::Model& model, float (*value)(size_t)) {
  const auto& mi = model.info();
  shiftadd::Array x;
  x.shape = {2, mi.in_chans, mi.image_size, mi.image_size};
  x.data.resize(static_cast<size_t>(2 * mi.in_chans * mi.image_size * mi.image_size));
  for (size_t i = 0; i < x.data.size(); ++i) x.data[i] = value(i);
  return x;
}

TEST(Cli, RunWritesLogitsAndRefusesToOverwrite) {
  const fs::path dir = temp_dir();
  const auto model = shiftadd::Model::load(kModel);
  const auto& mi = model->info();
  const shiftadd::Array x =
      model_input(*model, [](size_t i) { return static_cast<float>((i * 7919) % 101) / 50.0f - 1.0f; });
  shiftadd::save_npy_f32((dir / "x.npy").string(), x);
  fs::remove(dir / "y.npy");
  Result r = shiftadd_cli("run " + kModel + " --input " + (dir / "x.npy").string() + " --output " +
                          (dir / "y.npy").string() + " --threads 2");
  ASSERT_EQ(r.code, 0) << r.out;
  const shiftadd::Array y = shiftadd::load_npy_f32((dir / "y.npy").string());
  EXPECT_EQ(y.shape, (std::vector<int64_t>{2, mi.num_classes}));
  shiftadd::Session s(model, {1});
  const auto want = s.run(x.data, 2);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(y.data[i], want[i], 1e-4f);

  r = shiftadd_cli("run " + kModel + " --input " + (dir / "x.npy").string() + " --output " + (dir / "y.npy").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--force"), std::string::npos) << r.out;
}

// A NaN in the input makes every logit NaN: the result is still written, with one warning that
// names the input.
TEST(Cli, RunWarnsOnceWhenLogitsAreNotFinite) {
  const fs::path dir = temp_dir();
  shiftadd::Array x = model_input(*shiftadd::Model::load(kModel), [](size_t) { return 0.25f; });
  x.data[5] = NAN;
  shiftadd::save_npy_f32((dir / "x_nan.npy").string(), x);
  const Result r = shiftadd_cli("run " + kModel + " --input " + (dir / "x_nan.npy").string() + " --output " +
                                (dir / "y_nan.npy").string() + " --force");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("warning: " + (dir / "x_nan.npy").string()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("the input holds 1 NaN/Inf values"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("warning"), r.out.rfind("warning")) << r.out;
}

// top_k ranks NaN last and gives +Inf all the probability, instead of sorting garbage.
TEST(Cli, TopKOfNonFiniteLogits) {
  const float logits[] = {1.0f, NAN, INFINITY, 2.0f};
  const auto top = shiftadd::top_k(logits, 4, {}, 4);
  ASSERT_EQ(top.size(), 4u);
  EXPECT_EQ(top[0].index, 2);
  EXPECT_EQ(top[0].probability, 1.0f);
  EXPECT_EQ(top[3].probability, 0.0f);
  const float all_nan[] = {NAN, NAN};
  for (const auto& p : shiftadd::top_k(all_nan, 2, {}, 2)) EXPECT_EQ(p.probability, 0.5f);
}

TEST(Cli, RunRejectsWrongShapeAndMissingInput) {
  const fs::path dir = temp_dir();
  shiftadd::Array x;
  x.shape = {1, 3, 5, 5};
  x.data.assign(75, 0.5f);
  shiftadd::save_npy_f32((dir / "wrong.npy").string(), x);
  Result r = shiftadd_cli("run " + kModel + " --input " + (dir / "wrong.npy").string() + " --output " +
                          (dir / "out.npy").string() + " --force");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("does not match the model"), std::string::npos) << r.out;
  r = shiftadd_cli("run " + kModel + " --input " + (dir / "missing.npy").string() + " --output " +
                   (dir / "out.npy").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("missing.npy"), std::string::npos) << r.out;
}

TEST(Cli, BenchJson) {
  const Result r = shiftadd_cli("bench " + kModel + " --runs 3 --warmup 1 --batch 2 --threads 1 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["median_ms"].get<double>(), 0.0);
  EXPECT_LE(j["min_ms"].get<double>(), j["median_ms"].get<double>());
}

TEST(Cli, InspectTableAndJson) {
  Result r = shiftadd_cli("inspect " + kModel);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("blocks.0.attn.qkv"), std::string::npos) << r.out;
  r = shiftadd_cli("inspect " + kModel + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["num_classes"].get<int>(), 10);
  EXPECT_GT(j["params"].get<int64_t>(), 0);
  EXPECT_FALSE(j["layers"].empty());
}

TEST(Cli, BadModelAndBadFlags) {
  Result r = shiftadd_cli("inspect /no/such/model.safetensors");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("/no/such/model.safetensors"), std::string::npos) << r.out;
  r = shiftadd_cli("bench " + kModel + " --batch 0");
  EXPECT_NE(r.code, 0);
  r = shiftadd_cli("frobnicate");
  EXPECT_NE(r.code, 0);
}

}  // namespace

// ----- what a new user ran into ---------------------------------------------------------------

namespace {
size_t count_of_lines_with(const std::string& text, const std::string& needle) {
  std::istringstream in(text);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += line.find(needle) != std::string::npos;
  return n;
}

fs::path fresh_dir(const char* name) {
  const fs::path d = temp_dir() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
}  // namespace

TEST(CliNewUser, VersionAndUnknownSubcommand) {
  const Result v = shiftadd_cli("--version");
  EXPECT_EQ(v.code, 0);
  EXPECT_NE(v.out.find("shiftadd " + shiftadd::version()), std::string::npos) << v.out;
  const Result u = shiftadd_cli("clasify x.png");
  EXPECT_NE(u.code, 0);
  EXPECT_NE(u.out.find("unknown subcommand 'clasify' (did you mean 'classify'?)"), std::string::npos) << u.out;
  const Result far = shiftadd_cli("frobnicate");
  EXPECT_NE(far.out.find("unknown subcommand 'frobnicate'; subcommands: classify"), std::string::npos) << far.out;
}

TEST(CliNewUser, RangeErrorsNameTheValueNotDblMax) {
  const Result r = shiftadd_cli("bench " + kModel + " --runs -1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--runs: expected a number > 0, got '-1'"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("179769"), std::string::npos) << r.out;
  const Result t = shiftadd_cli("run " + kModel + " -i x.npy -o y.npy --threads -2");
  EXPECT_NE(t.out.find("expected a number >= 0, got '-2'"), std::string::npos) << t.out;
}

TEST(CliNewUser, NpyDtypeErrorListsOnlyWhatIsAccepted) {
  const fs::path d = fresh_dir("npy_dtype");
  // A float64 (1, 1, 28, 28) array, as np.save writes it.
  std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1, 28, 28), }";
  header += std::string(118 - header.size(), ' ') + "\n";
  std::ofstream f(d / "x64.npy", std::ios::binary);
  f << "\x93NUMPY" << char(1) << char(0) << char(header.size() & 255) << char(header.size() >> 8) << header
    << std::string(28 * 28 * 8, '\0');
  f.close();
  const Result r = shiftadd_cli("run " + kModel + " -i " + (d / "x64.npy").string() + " -o " + (d / "y.npy").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("dtype '<f8' is not accepted here; expected '<f4' (F32)"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("'<i8'"), std::string::npos) << r.out;
}

TEST(CliNewUser, BenchJsonTimeBasedAndRealInput) {
  const Result r = shiftadd_cli("bench " + kModel + " --runs 5 --warmup 1 -t 1 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  for (const char* k : {"mode", "device", "mean_ms", "median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms",
                        "images_per_s", "runs", "input"})
    EXPECT_TRUE(j.contains(k)) << k << " in " << r.out;
  EXPECT_EQ(j["mode"], "exact");
  EXPECT_EQ(j["device"], "cpu");
  EXPECT_EQ(j["runs"], 5);
  EXPECT_LE(j["min_ms"].get<double>(), j["p90_ms"].get<double>());
  EXPECT_LE(j["p90_ms"].get<double>(), j["p99_ms"].get<double>());
  // --seconds: as many runs as fit; --input: the batch is the file's.
  const fs::path d = fresh_dir("bench_input");
  shiftadd::Array x;
  x.shape = {3, 1, 28, 28};
  x.data.assign(3 * 28 * 28, 0.5f);
  shiftadd::save_npy_f32((d / "x.npy").string(), x);
  const Result s = shiftadd_cli("bench " + kModel + " --seconds 0.3 -t 1 --json -i " + (d / "x.npy").string());
  ASSERT_EQ(s.code, 0) << s.out;
  const nlohmann::json js = nlohmann::json::parse(s.out);
  EXPECT_EQ(js["batch"], 3);
  EXPECT_GT(js["runs"].get<int>(), 1);
  EXPECT_EQ(js["seconds"], 0.3);
  const Result bad = shiftadd_cli("bench " + kModel + " --batch 2 -i " + (d / "x.npy").string());
  EXPECT_NE(bad.out.find("holds 3 images; --batch must be that"), std::string::npos) << bad.out;
}

TEST(CliNewUser, ClassifyFolderGoesOnPastABadFile) {
  const fs::path d = fresh_dir("classify_folder");
  int n = 0;
  for (const auto& e : fs::directory_iterator(kSamples))
    if (e.path().extension() == ".png" && n < 3) fs::copy_file(e.path(), d / e.path().filename()), ++n;
  std::ofstream(d / "0001_broken.png") << "not a png";
  std::ofstream(d / "notes.txt") << "ignored";
  const Result r = shiftadd_cli("classify " + d.string() + " --top 1 --json");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_EQ(count_of_lines_with(r.out, "\"top\""), 3u) << r.out;
  EXPECT_NE(r.out.find("\"error\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("classify: 1 of 4 images failed: " + (d / "0001_broken.png").string()), std::string::npos)
      << r.out;
  fs::remove(d / "0001_broken.png");
  EXPECT_EQ(shiftadd_cli("classify " + kModel + " " + d.string() + " --top 1").code, 0);
}

TEST(CliNewUser, ConvertRefusesExistingReportBeforeWritingAnything) {
  const fs::path d = fresh_dir("convert_report");
  std::ofstream(d / "report.json") << "{\"mine\": true}";
  const fs::path out = d / "out.safetensors";
  const Result r = shiftadd_cli("convert " + kModel + " " + out.string() + " --calib " + SHIFTADD_SOURCE_DIR +
                                "/tests/fixtures/idx --calib-split test --calib-count 8 --report " +
                                (d / "report.json").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--report " + (d / "report.json").string() + ": file already exists"), std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(out)) << "the model was written before the --report check";
}

TEST(CliNewUser, InspectColumnsAreAligned) {
  const Result r = shiftadd_cli("inspect " + std::string(SHIFTADD_SOURCE_DIR) +
                                "/tests/fixtures/goldens/shiftadd_pvt_moe_64/model.safetensors");
  ASSERT_EQ(r.code, 0) << r.out;
  // Every row of the layer table has its "op" column at the header's offset.
  std::istringstream in(r.out);
  size_t op_col = std::string::npos;
  int rows = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("layer ", 0) == 0) {
      op_col = line.find("  op") + 2;
      continue;
    }
    if (op_col == std::string::npos || line.empty()) continue;
    ++rows;
    ASSERT_GT(line.size(), op_col) << line;
    EXPECT_EQ(line[op_col - 1], ' ') << line;
    EXPECT_NE(line[op_col], ' ') << line;
  }
  EXPECT_GT(rows, 20);
}

TEST(ApiNewUser, TopKAndBatchErrors) {
  const auto m = shiftadd::Model::load(kModel);
  shiftadd::Session s(m, {1});
  const float logits[3] = {1, 2, 3};
  try {
    shiftadd::top_k(logits, 3, {}, 0);
    FAIL() << "top_k(0) accepted";
  } catch (const shiftadd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("k must be >= 1"), std::string::npos) << e.what();
  }
  EXPECT_EQ(shiftadd::top_k(logits, 3, {}, 10).size(), 3u);
  EXPECT_THROW(s.classify(first_sample(), -1), shiftadd::Error);
  try {
    s.run(std::vector<float>{}, 0);
    FAIL() << "run(x, 0) accepted";
  } catch (const shiftadd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("batch must be >= 1"), std::string::npos) << e.what();
  }
}
