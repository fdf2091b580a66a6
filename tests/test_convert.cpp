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

#include "runtime/model.h"
#include "core/shift_codes.h"
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
  EXPECT_EQ(w.metadata.at("format_version"), "2");
  EXPECT_EQ(w.metadata.at("architecture"), "vit");
  const json layers = json::parse(w.metadata.at("layers"));
  EXPECT_EQ(layers["blocks.0.mlp.fc1"]["kind"], "shift");
  EXPECT_EQ(layers["blocks.0.mlp.fc1"]["bits"], 4);
  EXPECT_EQ(layers["blocks.0.attn.qkv"]["kind"], "dense");
  EXPECT_EQ(layers["blocks.0.attn"]["kind"], "softmax");
  const json cfg = json::parse(w.metadata.at("config"));
  EXPECT_EQ(cfg["num_heads"], 3);
  // 4 bits per shift weight (default): two per byte, with each output row's exponent.
  const auto& codes = w.at("blocks.0.mlp.fc1.codes");
  EXPECT_EQ(codes.dtype(), shiftadd::DType::U8);
  EXPECT_EQ(codes.shape(), (shiftadd::Shape{192, 48}));
  EXPECT_EQ(w.at("blocks.0.mlp.fc1.exponent").dtype(), shiftadd::DType::I8);
  EXPECT_EQ(w.at("blocks.0.mlp.fc1.exponent").shape(), (shiftadd::Shape{192}));
  EXPECT_FALSE(w.has("blocks.0.mlp.fc1.weight"));
  for (const auto& l : plain.layers) EXPECT_GE(l.rel_error_fast, 0) << l.name;
  // 5 bits: 8 weights in 5 bytes, no exponent tensor; the 4-bit file is smaller by the difference.
  o.output = (dir / "shift5.safetensors").string();
  o.shift_bits = 5;
  const auto five = shiftadd::convert::convert_model(o);
  const auto w5 = shiftadd::load_safetensors(o.output);
  EXPECT_EQ(w5.at("blocks.0.mlp.fc1.codes").shape(), (shiftadd::Shape{192, 60}));
  EXPECT_FALSE(w5.has("blocks.0.mlp.fc1.exponent"));
  EXPECT_EQ(json::parse(w5.metadata.at("layers"))["blocks.0.mlp.fc1"]["bits"], 5);
  // Per layer [N, K]: N * (ceil(5K/8) - ceil(K/2)) bytes less, N exponent bytes more (the JSON
  // header differs by a few hundred bytes).
  int64_t saved = 0;
  for (const auto& l : plain.layers) {
    const bool fc1 = l.name.find("fc1") != std::string::npos;
    const int64_t N = fc1 ? 192 : 96, K = fc1 ? 96 : 192;
    saved += N * (shiftadd::packed_code_bytes(K, 5) - shiftadd::packed_code_bytes(K, 4)) - N;
  }
  EXPECT_LT(plain.output_bytes, plain.input_bytes);
  EXPECT_NEAR(static_cast<double>(five.output_bytes - scaled.output_bytes), static_cast<double>(saved), 1024.0);
  EXPECT_NO_THROW(shiftadd::Model::load(o.output));
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
  meta["format_version"] = "3";
  shiftadd::save_safetensors((dir / "v3.safetensors").string(), w.tensors, meta, true);
  try {
    shiftadd::Model::load((dir / "v3.safetensors").string());
    FAIL();
  } catch (const shiftadd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("format version '3'"), std::string::npos) << e.what();
  }
  // Version 2 shift layers say how wide their codes are stored.
  meta = w.metadata;
  json layers = json::parse(meta["layers"]);
  layers["blocks.0.mlp.fc1"].erase("bits");
  meta["layers"] = layers.dump();
  shiftadd::save_safetensors((dir / "nobits.safetensors").string(), w.tensors, meta, true);
  try {
    shiftadd::Model::load((dir / "nobits.safetensors").string());
    FAIL();
  } catch (const shiftadd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks.0.mlp.fc1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bits"), std::string::npos) << e.what();
  }
  // A 4-bit row whose exponent puts a level below 2^-14 names the tensor.
  {
    auto t = w.tensors;
    shiftadd::Tensor e = shiftadd::Tensor::empty(shiftadd::DType::I8, {192});
    std::fill_n(e.data<int8_t>(), 192, int8_t{-13});
    t["blocks.0.mlp.fc1.exponent"] = e;
    shiftadd::save_safetensors((dir / "exp.safetensors").string(), t, w.metadata, true);
    try {
      shiftadd::Model::load((dir / "exp.safetensors").string());
      FAIL();
    } catch (const shiftadd::Error& err) {
      EXPECT_NE(std::string(err.what()).find("blocks.0.mlp.fc1.codes"), std::string::npos) << err.what();
      EXPECT_NE(std::string(err.what()).find("[-14, 0]"), std::string::npos) << err.what();
    }
  }
  // Format version 1 (one unpacked code per byte) still loads, and computes the same.
  {
    auto t = w.tensors;
    json l1 = json::parse(w.metadata.at("layers"));
    for (const auto& [name, entry] : l1.items()) {
      if (entry["kind"] != "shift") continue;
      const std::string p = name;
      const int64_t N = t.at(p + ".exponent").dim(0), K = 2 * t.at(p + ".codes").dim(1);
      shiftadd::Tensor codes = shiftadd::Tensor::empty(shiftadd::DType::U8, {N, K});
      for (int64_t n = 0; n < N; ++n)
        ASSERT_TRUE(shiftadd::unpack_code_row(t.at(p + ".codes").data<uint8_t>() + n * (K / 2), K, 4,
                                              t.at(p + ".exponent").data<int8_t>()[n], codes.data<uint8_t>() + n * K));
      t[p + ".codes"] = codes;
      t.erase(p + ".exponent");
      l1[name]["bits"] = 5;
    }
    auto m1meta = w.metadata;
    m1meta["format_version"] = "1";
    m1meta["layers"] = l1.dump();
    shiftadd::save_safetensors((dir / "v1.safetensors").string(), t, m1meta, true);
    const auto v1 = shiftadd::Model::load((dir / "v1.safetensors").string());
    const auto v2 = shiftadd::Model::load(o.output);
    const auto& info = v2->info();
    std::vector<float> x(static_cast<size_t>(2 * info.in_chans * info.image_size * info.image_size));
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1f * static_cast<float>(i));
    std::vector<float> y1(static_cast<size_t>(2 * info.num_classes)), y2 = y1;
    shiftadd::Session(v1, {1}).run(x.data(), 2, y1.data());
    shiftadd::Session(v2, {1}).run(x.data(), 2, y2.data());
    EXPECT_EQ(y1, y2);
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
  // Packed codes of the wrong shape are rejected naming the tensor.
  auto t = w.tensors;
  shiftadd::Tensor codes = shiftadd::Tensor::empty(shiftadd::DType::U8, {192, 96});
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
