// The converter (shiftadd convert): round trips, report consistency with the engine, the
// file format, refused overwrites and bad calibration input.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "engine/model_impl.h"
#include "loaders/safetensors.h"
#include "shiftadd/convert.h"
#include "shiftadd/dataset.h"
#include "shiftadd/shiftadd.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kModel = fs::path(SHIFTADD_SOURCE_DIR) / "models/fashion_vit";
const std::string kCalib = fs::path(SHIFTADD_SOURCE_DIR) / "tests/fixtures/idx";

fs::path temp_dir() {
  const fs::path d = fs::temp_directory_path() / ("shiftadd_convert_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

shiftadd::convert::Options options(const std::string& out) {
  shiftadd::convert::Options o;
  o.input = kModel;
  o.output = out;
  o.calib = kCalib;
  o.calib_split = "test";
  o.calib_count = 48;
  o.threads = 2;
  o.force = true;
  return o;
}

std::string error_of(const shiftadd::convert::Options& o) {
  try {
    shiftadd::convert::convert_model(o);
  } catch (const shiftadd::Error& e) {
    return e.what();
  }
  return "";
}

using Cli = shiftadd::test::CliResult;
Cli cli(const std::string& args) { return shiftadd::test::run_cli(args); }

// Logits of `model` on the first `n` calibration images.
std::vector<float> logits_on_calib(const std::shared_ptr<const shiftadd::Model>& model, int64_t n) {
  shiftadd::DatasetOptions d;
  d.split = "test";
  d.limit = n;
  const auto data = shiftadd::Dataset::open(kCalib, d);
  const int64_t in = model->info().in_chans * model->info().image_size * model->info().image_size;
  std::vector<float> x(static_cast<size_t>(n * in));
  for (int64_t i = 0; i < n; ++i) data.preprocess(i, *model, x.data() + i * in);
  shiftadd::Session s(model, {1});
  return s.run(x, n);
}

// Every kind of layer at once: MoE MLP, shift attention projections with a per-channel scale,
// KSH attention in blocks 0-2. The written file loads with no config.json beside it, runs, and
// the report's end-to-end numbers are what the engine computes on the same images.
TEST(Convert, RoundTripEveryLayerKind) {
  const fs::path out = temp_dir() / "all.safetensors";
  auto o = options(out.string());
  o.mlp = "moe";
  o.attn_proj = "shift";
  o.attn = "ksh-linear";
  o.shift_scale = true;
  o.shift_ratio = 0.7;
  std::vector<std::string> stages;
  o.progress = [&](const std::string& s, int64_t, int64_t) {
    if (stages.empty() || stages.back() != s) stages.push_back(s);
  };
  const auto rep = shiftadd::convert::convert_model(o);
  EXPECT_EQ(stages, (std::vector<std::string>{"calibrate", "layers", "check"}));
  ASSERT_EQ(rep.layers.size(), 4u * 4 + 3);  // 16 linears + KSH in blocks 0..2
  for (const auto& l : rep.layers) {
    EXPECT_TRUE(std::isfinite(l.rel_error)) << l.name;
    EXPECT_GE(l.rel_error, 0) << l.name;
    if (l.kind == "moe") {
      EXPECT_NEAR(l.shift_share, 0.7, 0.03) << l.name;
    }
  }
  EXPECT_EQ(rep.calib_images, 48);

  const auto dense = shiftadd::Model::load(kModel);
  const auto conv = shiftadd::Model::load(out.string());
  EXPECT_EQ(conv->info().architecture, "shiftadd_vit");
  EXPECT_EQ(conv->info().labels, dense->info().labels);
  int ksh = 0, moe = 0, shift = 0;
  for (const auto& l : conv->info().layers) {
    ksh += l.op == "ksh_attention";
    moe += l.op == "moe_linear";
    shift += l.op == "shift_linear";
  }
  EXPECT_EQ(ksh, 3);
  EXPECT_EQ(moe, 8);
  EXPECT_EQ(shift, 8);
  const auto a = logits_on_calib(conv, 48), d = logits_on_calib(dense, 48);
  double diff = 0, ref = 0;
  int agree = 0;
  const int K = 10;
  for (int i = 0; i < 48; ++i) {
    for (int k = 0; k < K; ++k) {
      diff = std::max(diff, std::fabs(static_cast<double>(a[i * K + k]) - d[i * K + k]));
      ref = std::max(ref, std::fabs(static_cast<double>(d[i * K + k])));
    }
    agree += std::max_element(&a[i * K], &a[i * K] + K) - &a[i * K] ==
             std::max_element(&d[i * K], &d[i * K] + K) - &d[i * K];
  }
  EXPECT_NEAR(rep.logit_rel_error, diff / ref, 1e-6);
  EXPECT_NEAR(rep.top1_agreement, agree / 48.0, 1e-9);
  // JSON report carries the same numbers.
  const json j = rep.to_json();
  EXPECT_EQ(j["layers"].size(), rep.layers.size());
  EXPECT_DOUBLE_EQ(j["logit_rel_error"].get<double>(), rep.logit_rel_error);
}

// Shift-only MLPs: the per-layer error in the report is the engine's shift layer against the
// dense one; a scale never makes it worse on the calibration rows it was fitted on.
TEST(Convert, ShiftMlpFormatAndScale) {
  const fs::path dir = temp_dir();
  auto o = options((dir / "shift.safetensors").string());
  const auto plain = shiftadd::convert::convert_model(o);
  o.output = (dir / "shift_scale.safetensors").string();
  o.shift_scale = true;
  const auto scaled = shiftadd::convert::convert_model(o);
  ASSERT_EQ(plain.layers.size(), 8u);
  for (size_t i = 0; i < plain.layers.size(); ++i) {
    EXPECT_EQ(plain.layers[i].kind, "shift");
    EXPECT_GT(plain.layers[i].rel_error, 0.01);  // powers of two are not the dense weights
    EXPECT_LT(plain.layers[i].rel_error, 0.5);
    EXPECT_LE(scaled.layers[i].rel_error, plain.layers[i].rel_error * 1.02) << plain.layers[i].name;
  }
  const auto w = shiftadd::load_safetensors((dir / "shift.safetensors").string());
  EXPECT_EQ(w.metadata.at("format"), "shiftadd");
  EXPECT_EQ(w.metadata.at("format_version"), "1");
  EXPECT_EQ(w.metadata.at("architecture"), "vit");
  const json layers = json::parse(w.metadata.at("layers"));
  EXPECT_EQ(layers["blocks.0.mlp.fc1"]["kind"], "shift");
  EXPECT_EQ(layers["blocks.0.attn.qkv"]["kind"], "dense");
  EXPECT_EQ(layers["blocks.0.attn"]["kind"], "softmax");
  const json cfg = json::parse(w.metadata.at("config"));
  EXPECT_EQ(cfg["num_heads"], 3);
  const auto& codes = w.at("blocks.0.mlp.fc1.codes");
  EXPECT_EQ(codes.dtype(), shiftadd::DType::U8);
  EXPECT_EQ(codes.shape(), (shiftadd::Shape{192, 96}));
  EXPECT_FALSE(w.has("blocks.0.mlp.fc1.weight"));
  // Smaller than the dense fp32 file: 1 byte per shift weight.
  EXPECT_LT(plain.output_bytes, plain.input_bytes);
}

TEST(Convert, LatencyAwareSharesFollowMeasuredLatency) {
  auto o = options((temp_dir() / "lat.safetensors").string());
  o.mlp = "moe";
  o.latency_aware = true;
  const auto rep = shiftadd::convert::convert_model(o);
  for (const auto& l : rep.layers) {
    ASSERT_GT(l.dense_us, 0) << l.name;
    ASSERT_GT(l.shift_us, 0) << l.name;
    // The faster expert gets more tokens: share = t_dense / (t_dense + t_shift), up to rounding
    // of the router threshold on the calibration tokens.
    EXPECT_NEAR(l.shift_share, l.dense_us / (l.dense_us + l.shift_us), 0.03) << l.name;
  }
}

TEST(Convert, RefusesOverwriteWithoutForce) {
  const fs::path out = temp_dir() / "exists.safetensors";
  { std::ofstream(out) << "the user's file"; }
  auto o = options(out.string());
  o.force = false;
  const std::string e = error_of(o);
  EXPECT_NE(e.find("already exists"), std::string::npos) << e;
  EXPECT_NE(e.find("--force"), std::string::npos) << e;
  std::ifstream in(out);
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(content, "the user's file");
  // The command line says the same and exits 1.
  const Cli r = cli("convert " + kModel + " " + out.string() + " --calib " + kCalib + " --calib-split test");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--force"), std::string::npos) << r.out;
}

TEST(Convert, BadInputsAreNamed) {
  const fs::path dir = temp_dir();
  auto o = options((dir / "x.safetensors").string());
  o.calib = (dir / "missing").string();
  EXPECT_NE(error_of(o).find("missing"), std::string::npos);
  {  // a .npy of the wrong shape
    shiftadd::Array a;
    a.shape = {4, 3, 8, 8};
    a.data.assign(4 * 3 * 8 * 8, 0.5f);
    shiftadd::save_npy_f32((dir / "bad.npy").string(), a);
    o.calib = (dir / "bad.npy").string();
    const std::string e = error_of(o);
    EXPECT_NE(e.find("bad.npy"), std::string::npos) << e;
  }
  {  // a truncated IDX file
    fs::create_directories(dir / "idx");
    std::ofstream(dir / "idx" / "t10k-images-idx3-ubyte") << std::string("\0\0\x08\x03\0\0\0\x05", 8);
    std::ofstream(dir / "idx" / "t10k-labels-idx1-ubyte") << std::string("\0\0\x08\x01\0\0\0\x05", 8);
    o.calib = (dir / "idx").string();
    const std::string e = error_of(o);
    EXPECT_NE(e.find("t10k-images-idx3-ubyte"), std::string::npos) << e;
  }
  o = options((dir / "y.safetensors").string());
  o.bits = 30;  // more bits than anchors
  EXPECT_NE(error_of(o).find("--bits"), std::string::npos);
  o = options((dir / "y.safetensors").string());
  o.calib.clear();
  EXPECT_NE(error_of(o).find("--calib"), std::string::npos);
  o = options((dir / "y.safetensors").string());
  o.attn = "ksh-linear";
  o.ksh_blocks = {7};
  EXPECT_NE(error_of(o).find("--ksh-blocks 7"), std::string::npos);
  // Converting a converted model is refused.
  o = options((dir / "z.safetensors").string());
  shiftadd::convert::convert_model(o);
  o.input = o.output;
  o.output = (dir / "zz.safetensors").string();
  EXPECT_NE(error_of(o).find("already a ShiftAddViT model"), std::string::npos);
}

// Dense PVTv2 (upstream or timm names): linear layers become shift / MoE, attention stays
// spatial-reduction softmax; the file loads back as PVTv2 with the converted layers.
TEST(Convert, PvtV2LinearLayers) {
  const fs::path dir = temp_dir();
  const std::string golden = fs::path(SHIFTADD_SOURCE_DIR) / "tests/fixtures/goldens_real/timm_pvt_v2";
  auto o = options((dir / "pvt.safetensors").string());
  o.input = golden;
  o.calib = golden + "/input.npy";
  o.mlp = "moe";
  o.attn_proj = "shift";
  const auto rep = shiftadd::convert::convert_model(o);
  EXPECT_EQ(rep.source_architecture, "pvt_v2");
  ASSERT_EQ(rep.layers.size(), 4u * 5);  // 4 blocks x (q, kv, proj, fc1, fc2)
  const auto m = shiftadd::Model::load(o.output);
  EXPECT_EQ(m->info().naming, "shiftadd");
  int moe = 0, shift = 0;
  for (const auto& l : m->info().layers) moe += l.op == "moe_linear", shift += l.op == "shift_linear";
  EXPECT_EQ(moe, 8);
  EXPECT_EQ(shift, 12);
  EXPECT_LT(rep.logit_rel_error, 1.0);
  o.attn = "ksh-linear";
  EXPECT_NE(error_of(o).find("PVTv2"), std::string::npos);
  // A converted file is not converted again.
  o = options((dir / "again.safetensors").string());
  o.input = (dir / "pvt.safetensors").string();
  o.calib = golden + "/input.npy";
  EXPECT_NE(error_of(o).find("already a ShiftAddViT model"), std::string::npos);
}

// A file from a future format version, or with broken metadata, fails to load with its name.
TEST(Convert, FormatVersionAndMetadataChecked) {
  const fs::path dir = temp_dir();
  auto o = options((dir / "v.safetensors").string());
  shiftadd::convert::convert_model(o);
  auto w = shiftadd::load_safetensors(o.output);
  auto meta = w.metadata;
  meta["format_version"] = "2";
  shiftadd::save_safetensors((dir / "v2.safetensors").string(), w.tensors, meta, true);
  try {
    shiftadd::Model::load((dir / "v2.safetensors").string());
    FAIL();
  } catch (const shiftadd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("format version '2'"), std::string::npos) << e.what();
  }
  meta = w.metadata;
  meta["layers"] = "{not json";
  shiftadd::save_safetensors((dir / "bad.safetensors").string(), w.tensors, meta, true);
  try {
    shiftadd::Model::load((dir / "bad.safetensors").string());
    FAIL();
  } catch (const shiftadd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'layers'"), std::string::npos) << e.what();
  }
  // Codes beyond 5 bits are rejected naming the tensor.
  auto t = w.tensors;
  shiftadd::Tensor codes = shiftadd::Tensor::empty(shiftadd::DType::U8, t.at("blocks.0.mlp.fc1.codes").shape());
  std::fill_n(codes.data<uint8_t>(), codes.numel(), uint8_t{0x40});
  t["blocks.0.mlp.fc1.codes"] = codes;
  shiftadd::save_safetensors((dir / "codes.safetensors").string(), t, w.metadata, true);
  try {
    shiftadd::Model::load((dir / "codes.safetensors").string());
    FAIL();
  } catch (const shiftadd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.0.mlp.fc1.codes"), std::string::npos) << e.what();
  }
}

// The bundled converted model (docs/accuracy.md: shift MLPs + KSH attention in blocks 0-1,
// fine-tuned, test top-1 0.8842) loads on its own, has those layers and gets the samples right.
TEST(Convert, BundledShiftAddModelClassifiesTheSamples) {
  const fs::path dir = fs::path(kModel);
  const auto m = shiftadd::Model::load((dir / "shiftadd.safetensors").string());
  EXPECT_EQ(m->info().architecture, "shiftadd_vit");
  int ksh = 0, shift = 0;
  for (const auto& l : m->info().layers) ksh += l.op == "ksh_attention", shift += l.op == "shift_linear";
  EXPECT_GE(ksh, 1);
  EXPECT_GE(shift, 1);
  std::ifstream in(dir / "samples" / "expected.json");
  const json expected = json::parse(in);
  shiftadd::Session s(m, {1});
  int right = 0, n = 0;
  for (const auto& [file, e] : expected.items()) {
    const auto top = s.classify((dir / "samples" / file).string(), 1);
    right += top[0].label == e["label"].get<std::string>();
    ++n;
  }
  EXPECT_EQ(n, 10);
  EXPECT_EQ(right, n);
}

TEST(Convert, CliPrintsReportAndWritesJson) {
  const fs::path dir = temp_dir();
  const Cli r = cli("convert " + kModel + " " + (dir / "c.safetensors").string() + " --calib " + kCalib +
                    " --calib-split test --calib-count 16 --mlp moe --report " + (dir / "r.json").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("blocks.0.mlp.fc1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("end to end"), std::string::npos) << r.out;
  std::ifstream in(dir / "r.json");
  const json j = json::parse(in);
  EXPECT_EQ(j["layers"].size(), 8u);
  EXPECT_EQ(j["calib_images"], 16);
  // The converted model classifies the bundled samples.
  const Cli c = cli("classify --model " + (dir / "c.safetensors").string() + " " +
                    (fs::path(kModel) / "samples").string() + "/*.png");
  EXPECT_EQ(c.code, 0) << c.out;
}

}  // namespace
