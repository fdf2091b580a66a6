// Whole-model goldens: every load path (timm safetensors, HF directory, ONNX) against logits
// computed by an independent PyTorch implementation (tests/fixtures/gen_goldens.py).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include <functional>
#include <map>

#include "loaders/safetensors.h"
#include "shiftadd/shiftadd.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const fs::path kFixtures = fs::path(SHIFTADD_SOURCE_DIR) / "tests/fixtures";
const fs::path kGoldens = kFixtures / "goldens";

json manifest(const fs::path& dir) {
  std::ifstream in(dir / "manifest.json");
  return json::parse(in);
}

using shiftadd::test::rel_error;

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, MatchesPyTorch) {
  const fs::path dir = kFixtures / GetParam();
  std::ifstream in(dir / "case.json");
  const json c = json::parse(in);
  const auto model = shiftadd::Model::load((dir / c["model"].get<std::string>()).string());
  const auto& info = model->info();
  EXPECT_EQ(info.dim, c["dim"].get<int64_t>());
  EXPECT_EQ(info.depth, c["depth"].get<int64_t>());
  EXPECT_EQ(info.heads, c["heads"].get<int64_t>());
  EXPECT_EQ(info.num_classes, c["classes"].get<int64_t>());
  EXPECT_EQ(info.image_size, c["image_size"].get<int64_t>());
  EXPECT_EQ(info.in_chans, c["in_chans"].get<int64_t>());

  const shiftadd::Array x = shiftadd::load_npy_f32((dir / "input.npy").string());
  const shiftadd::Array want = shiftadd::load_npy_f32((dir / "logits.npy").string());
  for (int threads : {1, 2}) {
    shiftadd::Session s(model, {threads});
    const std::vector<float> got = s.run(x.data, x.shape[0]);
    ASSERT_EQ(got.size(), want.data.size());
    const double err = rel_error(got, want.data);
    RecordProperty("rel_error", std::to_string(err));
    EXPECT_LE(err, 1e-4) << GetParam() << " with " << threads << " threads";
  }
}

// Paths relative to tests/fixtures: goldens/<case> (synthetic models, gen_goldens.py),
// goldens_real/<case> (real timm / transformers models and exports, gen_real_goldens.py) and
// goldens_onnx/<case> (exports spelling the math differently, onnxruntime goldens,
// gen_onnx_corpus.py).
std::vector<std::string> golden_cases() {
  std::vector<std::string> names;
  for (const char* set : {"goldens", "goldens_real", "goldens_onnx"}) {
    const json m = manifest(kFixtures / set);
    for (const auto& c : m["cases"])
      names.push_back(std::string(set) + "/" +
                      (c.is_string() ? c.get<std::string>()
                                     : c.value("dir", c["name"].get<std::string>())));
  }
  return names;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Golden, ::testing::ValuesIn(golden_cases()),
                         [](const auto& info) {
                           std::string n = info.param;  // goldens/x -> x, goldens_real/y -> real_y
                           if (n.rfind("goldens_real/", 0) == 0)
                             n = "real_" + n.substr(13);
                           else if (n.rfind("goldens_onnx/", 0) == 0)
                             n = "onnx_" + n.substr(13);
                           else if (n.rfind("goldens/", 0) == 0)
                             n = n.substr(8);
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

// One Model shared by sessions on several threads gives the same answers as one thread.
TEST(Api, ModelIsSharedAcrossThreads) {
  const auto model = shiftadd::Model::load(shiftadd::default_model_path());
  const auto& mi = model->info();
  std::vector<float> x(static_cast<size_t>(2 * mi.in_chans * mi.image_size * mi.image_size));
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i));
  shiftadd::Session ref(model, {1});
  const std::vector<float> want = ref.run(x, 2);
  std::vector<std::vector<float>> got(4);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      shiftadd::Session s(model, {1 + t % 2});
      for (int r = 0; r < 3; ++r) got[t] = s.run(x, 2);
    });
  for (auto& t : ts) t.join();
  for (const auto& g : got) EXPECT_LE(rel_error(g, want), 1e-5);
}

TEST(Api, BadInputSizeIsAnError) {
  const auto model = shiftadd::Model::load(shiftadd::default_model_path());
  shiftadd::Session s(model, {1});
  EXPECT_THROW(s.run(std::vector<float>(7, 0.5f), 1), shiftadd::Error);
  EXPECT_THROW(s.run(std::vector<float>(7, 0.5f), 0), shiftadd::Error);
}

TEST(Api, MissingModelNamesThePath) {
  try {
    shiftadd::Model::load("/nonexistent/model.safetensors");
    FAIL() << "no error";
  } catch (const shiftadd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model.safetensors"), std::string::npos);
  }
}

TEST(Api, ClassifiesTheBundledSamples) {
  const fs::path samples = fs::path(shiftadd::default_model_path()) / "samples";
  std::ifstream in(samples / "expected.json");
  const json expected = json::parse(in);
  const auto model = shiftadd::Model::load(shiftadd::default_model_path());
  shiftadd::Session s(model, {2});
  int n = 0;
  for (const auto& [file, e] : expected.items()) {
    const auto top = s.classify((samples / file).string(), 3);
    ASSERT_EQ(top.size(), 3u);
    // The PyTorch top-1 and its probability, from the PNG through our decoder and resampler.
    EXPECT_EQ(top[0].label, e["pred"].get<std::string>()) << file;
    EXPECT_EQ(top[0].label, e["label"].get<std::string>()) << file;
    EXPECT_NEAR(top[0].probability, e["prob"].get<double>(), 1e-4) << file;
    ++n;
  }
  EXPECT_GE(n, 5);
}

}  // namespace

// ShiftAddViT PVTv2 goldens (gen_shiftadd_goldens.py): recognised by tensor names, and every
// MoE layer sends exactly the reference's number of tokens to each expert. The generator only
// keeps inputs with no hash pre-activation within 1e-4 of 0 and no router gap below 1e-3, so
// exact-mode codes and choices are well-posed; logits are checked by Golden.MatchesPyTorch.
TEST(ShiftAddPvt, RecognisedAndRoutesLikeTheReference) {
  const json m = manifest(kGoldens);
  int checked = 0;
  for (const auto& c : m["cases"]) {
    if (!c.is_object() || c.value("format", "") != "shiftadd_pvt") continue;
    const fs::path dir = kGoldens / c["dir"].get<std::string>();
    std::ifstream in(dir / "case.json");
    const json cs = json::parse(in);
    const auto model = shiftadd::Model::load((dir / "model.safetensors").string());
    EXPECT_EQ(model->info().architecture, "shiftadd_pvt_v2") << dir;
    const shiftadd::Array x = shiftadd::load_npy_f32((dir / "input.npy").string());
    shiftadd::Session s(model, {2});
    const std::vector<float> got = s.run(x.data, x.shape[0]);
    const auto loads = s.expert_tokens();
    const json& want = cs["moe_layers"];
    ASSERT_EQ(loads.size(), want.size()) << dir;
    for (size_t i = 0; i < loads.size(); ++i) {
      EXPECT_EQ(loads[i].layer, want[i]["name"].get<std::string>()) << dir;
      EXPECT_EQ(loads[i].tokens[0], want[i]["tokens"][0].get<int64_t>()) << dir << " " << loads[i].layer;
      EXPECT_EQ(loads[i].tokens[1], want[i]["tokens"][1].get<int64_t>()) << dir << " " << loads[i].layer;
    }
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

// Checkpoints with missing, extra or mis-shaped tensors fail at load with the tensor's name.
namespace bad_checkpoints {

using shiftadd::Tensor;

fs::path write_variant(const std::string& name,
                       const std::function<void(std::map<std::string, Tensor>&)>& edit,
                       const std::string& base = "timm_vit_p16_224_bare") {
  const shiftadd::WeightStore src =
      shiftadd::load_safetensors((kGoldens / base / "model.safetensors").string());
  std::map<std::string, Tensor> t = src.tensors;
  edit(t);
  const fs::path dir = fs::temp_directory_path() / ("shiftadd_bad_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path p = dir / (name + ".safetensors");
  shiftadd::save_safetensors(p.string(), t, src.metadata, /*overwrite=*/true);
  return p;
}

std::string load_error(const fs::path& p) {
  try {
    shiftadd::Model::load(p.string());
  } catch (const shiftadd::Error& e) {
    return e.what();
  }
  return "";
}

TEST(BadCheckpoint, MissingTensorIsNamed) {
  const auto p = write_variant("missing", [](auto& t) { t.erase("blocks.1.mlp.fc2.bias"); });
  EXPECT_NE(load_error(p).find("blocks.1.mlp.fc2.bias"), std::string::npos) << load_error(p);
}

TEST(BadCheckpoint, ExtraTensorIsNamed) {
  const auto p = write_variant("extra", [](auto& t) {
    t["blocks.0.attn.mystery"] = Tensor::empty(shiftadd::DType::F32, {4});
  });
  EXPECT_NE(load_error(p).find("blocks.0.attn.mystery"), std::string::npos) << load_error(p);
}

TEST(BadCheckpoint, WrongShapeIsNamedWithBothShapes) {
  const auto p = write_variant("shape", [](auto& t) {
    t["blocks.1.mlp.fc1.weight"] = Tensor::empty(shiftadd::DType::F32, {100, 64});
  });
  const std::string e = load_error(p);
  EXPECT_NE(e.find("blocks.1.mlp.fc1.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[100, 64]"), std::string::npos) << e;
}

// The weights of a ViT fit any head count dividing dim: without config.json or the file's
// __metadata__ num_heads the load fails saying how to give it, rather than guessing head dim 64.
TEST(BadCheckpoint, HeadCountIsNeverGuessed) {
  const shiftadd::WeightStore src =
      shiftadd::load_safetensors((kGoldens / "timm_vit_p16_224_bare" / "model.safetensors").string());
  const fs::path dir = fs::temp_directory_path() / ("shiftadd_heads_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path p = dir / "model.safetensors";
  shiftadd::save_safetensors(p.string(), src.tensors, {{"format", "pt"}}, /*overwrite=*/true);
  std::string e = load_error(p);
  EXPECT_NE(e.find("cannot tell the number of attention heads"), std::string::npos) << e;
  EXPECT_NE(e.find("config.json with {\"num_heads\": N}"), std::string::npos) << e;
  shiftadd::save_safetensors(p.string(), src.tensors, {{"num_heads", "two"}}, /*overwrite=*/true);
  e = load_error(p);
  EXPECT_NE(e.find("num_heads 'two' is not a positive integer"), std::string::npos) << e;
  // config.json beside the file gives it (and wins over the metadata).
  std::ofstream(dir / "config.json") << R"({"num_heads": 2})";
  const auto model = shiftadd::Model::load(dir.string());
  EXPECT_EQ(model->info().heads, 2);
  fs::remove_all(dir);
}

TEST(BadCheckpoint, NotAViT) {
  const auto p = write_variant("notvit", [](auto& t) {
    t.clear();
    t["conv1.weight"] = Tensor::empty(shiftadd::DType::F32, {8, 3, 3, 3});
  });
  EXPECT_NE(load_error(p).find("patch_embed.proj.weight"), std::string::npos) << load_error(p);
}

TEST(BadCheckpoint, IntegerWeightsAreRejected) {
  const auto p = write_variant("int", [](auto& t) {
    t["blocks.0.norm1.weight"] = Tensor::empty(shiftadd::DType::I32, {64});
  });
  EXPECT_NE(load_error(p).find("blocks.0.norm1.weight"), std::string::npos) << load_error(p);
}

TEST(BadCheckpoint, PvtMissingTensorIsNamed) {
  const auto p = write_variant(
      "pvt_missing", [](auto& t) { t.erase("block2.1.mlp.dwconv.dwconv.bias"); }, "pvt_v2_small_96");
  const std::string e = load_error(p);
  EXPECT_NE(e.find("block2.1.mlp.dwconv.dwconv.bias"), std::string::npos) << e;
  EXPECT_NE(e.find("pvt_missing.safetensors"), std::string::npos) << e;
}

TEST(BadCheckpoint, PvtWrongShapeIsNamed) {
  const auto p = write_variant("pvt_shape", [](auto& t) {
    t["block3.0.attn.kv.weight"] = Tensor::empty(shiftadd::DType::F32, {80, 41});
  }, "pvt_v2_small_96");
  const std::string e = load_error(p);
  EXPECT_NE(e.find("block3.0.attn.kv.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[80, 41]"), std::string::npos) << e;
}

TEST(BadCheckpoint, ShiftAddMissingKshBufferIsNamed) {
  const auto p = write_variant(
      "shiftadd_missing", [](auto& t) { t.erase("block2.1.attn.qk_quant.ksh.mvec"); },
      "shiftadd_pvt_moe_64");
  const std::string e = load_error(p);
  EXPECT_NE(e.find("block2.1.attn.qk_quant.ksh.mvec"), std::string::npos) << e;
}

TEST(BadCheckpoint, ShiftAddWrongShiftShapeIsNamed) {
  const auto p = write_variant("shiftadd_shape", [](auto& t) {
    t["block3.0.mlp.fc1.experts.1.sign"] = Tensor::empty(shiftadd::DType::F32, {160, 41});
  }, "shiftadd_pvt_moe_64");
  const std::string e = load_error(p);
  EXPECT_NE(e.find("block3.0.mlp.fc1.experts.1.sign"), std::string::npos) << e;
  EXPECT_NE(e.find("[160, 41]"), std::string::npos) << e;
}

}  // namespace bad_checkpoints
