// The ONNX ViT loader maps torch.onnx exports (tests/fixtures/onnx, made by
// tests/fixtures/gen_onnx_fixtures.py) exactly onto the reference weights under timm names, and
// rejects files it cannot read or graphs it does not recognize with an Error that says where.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <unistd.h>

#include "loaders/onnx_tensor.h"  // the ONNX protobuf classes
#include "loaders/onnx_vit.h"
#include "shiftadd/error.h"

namespace shiftadd {
namespace {

const std::string kDir = std::string(SHIFTADD_SOURCE_DIR) + "/tests/fixtures/onnx/";

struct RefTensor {
  Shape shape;
  std::vector<float> values;
};

struct Reference {
  std::map<std::string, RefTensor> tensors;
  std::map<std::string, std::string> metadata;
};

// The generator writes F32-only safetensors: u64 header size, JSON header, data.
Reference read_reference(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.size() < 8) throw std::runtime_error("cannot read reference " + path);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, header_size));
  const char* data = bytes.data() + 8 + header_size;
  Reference ref;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      for (auto& [k, v] : entry.items()) ref.metadata[k] = v.get<std::string>();
      continue;
    }
    EXPECT_EQ(entry["dtype"], "F32");
    RefTensor t;
    t.shape = entry["shape"].get<Shape>();
    size_t begin = entry["data_offsets"][0], end = entry["data_offsets"][1];
    t.values.resize((end - begin) / 4);
    std::memcpy(t.values.data(), data + begin, end - begin);
    ref.tensors[name] = std::move(t);
  }
  return ref;
}

struct ExportCase {
  const char* onnx;
  const char* reference;
  int opset;
};

class OnnxExport : public ::testing::TestWithParam<ExportCase> {};

TEST_P(OnnxExport, MapsEveryTensorExactly) {
  const ExportCase& c = GetParam();
  Reference ref = read_reference(kDir + c.reference + ".ref.safetensors");
  OnnxVitInfo info;
  WeightStore store = load_onnx_vit(kDir + c.onnx, &info);

  EXPECT_EQ(store.source, kDir + c.onnx);
  EXPECT_EQ(info.heads, std::stoll(ref.metadata.at("heads")));
  EXPECT_EQ(info.eps, static_cast<float>(std::stod(ref.metadata.at("eps"))));
  EXPECT_EQ(info.image_size, std::stoll(ref.metadata.at("image_size")));
  EXPECT_EQ(info.in_chans, std::stoll(ref.metadata.at("in_chans")));
  EXPECT_EQ(info.opset, c.opset);
  EXPECT_EQ(info.producer.rfind("pytorch", 0), 0u) << info.producer;

  std::vector<std::string> got_names, want_names;
  for (const auto& [name, t] : store.tensors) got_names.push_back(name);
  for (const auto& [name, t] : ref.tensors) want_names.push_back(name);
  ASSERT_EQ(got_names, want_names);

  for (const auto& [name, want] : ref.tensors) {
    const Tensor& got = store.tensors.at(name);
    EXPECT_EQ(got.dtype(), DType::F32) << name;
    ASSERT_EQ(got.shape(), want.shape)
        << name << ": " << shape_str(got.shape()) << " vs " << shape_str(want.shape);
    int mismatches = 0;
    for (int64_t i = 0; i < got.numel(); ++i)
      if (got.data<float>()[i] != want.values[i] && mismatches++ < 3)
        ADD_FAILURE() << name << "[" << i << "] = " << got.data<float>()[i] << ", expected "
                      << want.values[i];
    EXPECT_EQ(mismatches, 0) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, OnnxExport,
    ::testing::Values(
        // timm VisionTransformer: fused qkv, (q @ k^T) * scale, decomposed / fused LayerNorm
        ExportCase{"timm_vit_op13.onnx", "timm_vit", 13}, ExportCase{"timm_vit_op17.onnx", "timm_vit", 17},
        // initializers in float_data instead of raw_data; GELU as one opset-20 Gelu op
        ExportCase{"timm_vit_floatdata_op13.onnx", "timm_vit", 13},
        ExportCase{"timm_vit_gelu_op20.onnx", "timm_vit", 20},
        // DeiT distilled: cls + dist tokens, head + head_dist averaged, (q * scale) @ k^T
        ExportCase{"timm_deit_dist_op13.onnx", "timm_deit_dist", 13},
        ExportCase{"timm_deit_dist_op17.onnx", "timm_deit_dist", 17},
        // every initializer renamed: recognition must not depend on names
        ExportCase{"timm_deit_dist_renamed_op13.onnx", "timm_deit_dist", 13},
        // torch 2.x scaled_dot_product_attention pattern; qkv without bias -> zeros
        ExportCase{"timm_sdpa_nobias_op14.onnx", "timm_sdpa_nobias", 14},
        // Hugging Face: separate query/key/value (heads split for key, value, query), eps 1e-12
        ExportCase{"hf_vit_op13.onnx", "hf_vit", 13}, ExportCase{"hf_vit_op17.onnx", "hf_vit", 17},
        ExportCase{"hf_vit_f16_op13.onnx", "hf_vit_f16", 13},
        // HF DeiT with teacher: 1 input channel, 24x24 images, mlp ratio 3
        ExportCase{"hf_deit_dist_op17.onnx", "hf_deit_dist", 17}),
    [](const ::testing::TestParamInfo<ExportCase>& p) {
      std::string name = p.param.onnx;
      name = name.substr(0, name.find('.'));
      return name;
    });

// The Error's message, or "" when the load succeeded.
std::string load_error(const std::string& file) {
  try {
    OnnxVitInfo info;
    load_onnx_vit(kDir + file, &info);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

::testing::AssertionResult Mentions(const std::string& msg, const std::string& part) {
  if (msg.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "error \"" << msg << "\" does not mention \"" << part << "\"";
}

TEST(OnnxLoaderErrors, UnreadableFilesNameTheFile) {
  for (const char* file : {"corrupt.onnx", "truncated.onnx", "empty.onnx", "does_not_exist.onnx"}) {
    std::string msg = load_error(file);
    EXPECT_TRUE(Mentions(msg, kDir + file)) << file;
  }
  EXPECT_TRUE(Mentions(load_error("truncated.onnx"), "truncated or corrupt"));
  EXPECT_TRUE(Mentions(load_error("empty.onnx"), "empty"));
  EXPECT_TRUE(Mentions(load_error("does_not_exist.onnx"), "cannot open"));
}

TEST(OnnxLoaderErrors, UnsupportedOpNamesOpNodeAndOpset) {
  std::string msg = load_error("unsupported_op.onnx");
  EXPECT_TRUE(Mentions(msg, "unsupported_op.onnx"));
  EXPECT_TRUE(Mentions(msg, "unsupported ONNX op 'LeakyRelu'"));
  EXPECT_TRUE(Mentions(msg, "node 'act0'"));
  EXPECT_TRUE(Mentions(msg, "opset 13"));
}

TEST(OnnxLoaderErrors, NonErfGeluNamesTheNode) {
  std::string msg = load_error("bad_gelu.onnx");
  EXPECT_TRUE(Mentions(msg, "node '/blocks/blocks.0/mlp/act/Erf' (Sqrt)"));
  EXPECT_TRUE(Mentions(msg, "GELU"));
}

TEST(OnnxLoaderErrors, MissingExternalDataFileNamesTensorAndFile) {
  std::string msg = load_error("external_data.onnx");  // its .data file is not in the fixtures
  EXPECT_TRUE(Mentions(msg, "external_data.onnx: tensor '"));
  EXPECT_TRUE(Mentions(msg, "cannot open external data file"));
  EXPECT_TRUE(Mentions(msg, "external_data.onnx.data"));
}

// Weights in external data (torch.onnx.export(..., dynamo=True) writes model.onnx.data): the
// valid case loads the same tensors; a location outside the model's directory and a data file
// too short for the tensor are Errors naming the tensor and the file.
TEST(OnnxLoaderExternalData, LoadsAndValidates) {
  namespace fs = std::filesystem;
  onnx::ModelProto model;
  {
    std::ifstream f(kDir + "timm_vit_op13.onnx", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    ASSERT_TRUE(model.ParseFromString(bytes));
  }
  OnnxVitInfo ref_info;
  const WeightStore ref = load_onnx_vit(kDir + "timm_vit_op13.onnx", &ref_info);

  const fs::path root = fs::temp_directory_path() / ("shiftadd_extdata_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "m");
  // Move every raw_data initializer into m/weights.bin, after 5 bytes of padding.
  std::string blob(5, 'x');
  std::string moved;
  for (auto& t : *model.mutable_graph()->mutable_initializer()) {
    if (!t.has_raw_data() || t.raw_data().empty()) continue;
    if (moved.empty()) moved = t.name();
    const size_t offset = blob.size();
    blob += t.raw_data();
    t.clear_raw_data();
    t.set_data_location(onnx::TensorProto::EXTERNAL);
    for (auto [k, v] : {std::pair<std::string, std::string>{"location", "weights.bin"},
                        {"offset", std::to_string(offset)},
                        {"length", std::to_string(blob.size() - offset)}}) {
      auto* e = t.add_external_data();
      e->set_key(k);
      e->set_value(v);
    }
  }
  ASSERT_FALSE(moved.empty());
  auto write = [](const fs::path& p, const std::string& data) {
    std::ofstream f(p, std::ios::binary);
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
  };
  write(root / "m" / "weights.bin", blob);
  write(root / "m" / "model.onnx", model.SerializeAsString());

  OnnxVitInfo info;
  const WeightStore store = load_onnx_vit((root / "m" / "model.onnx").string(), &info);
  EXPECT_EQ(info.heads, ref_info.heads);
  ASSERT_EQ(store.tensors.size(), ref.tensors.size());
  for (const auto& [name, t] : ref.tensors) {
    ASSERT_TRUE(store.tensors.count(name)) << name;
    const Tensor& got = store.tensors.at(name);
    ASSERT_EQ(got.shape(), t.shape()) << name;
    EXPECT_EQ(std::memcmp(got.raw(), t.raw(), t.nbytes()), 0) << name;
  }

  auto error_of = [](const fs::path& p) -> std::string {
    try {
      OnnxVitInfo i;
      load_onnx_vit(p.string(), &i);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  // A location that leaves the model's directory, even to an existing file.
  write(root / "weights.bin", blob);
  onnx::ModelProto escaping = model;
  for (auto& t : *escaping.mutable_graph()->mutable_initializer())
    for (auto& e : *t.mutable_external_data())
      if (e.key() == "location" && t.name() == moved) e.set_value("../weights.bin");
  write(root / "m" / "escape.onnx", escaping.SerializeAsString());
  std::string msg = error_of(root / "m" / "escape.onnx");
  EXPECT_TRUE(Mentions(msg, "tensor '" + moved + "'"));
  EXPECT_TRUE(Mentions(msg, "../weights.bin"));
  EXPECT_TRUE(Mentions(msg, "not a file inside the model's directory"));

  // A data file cut short: the first tensor past the end is named, with the file.
  write(root / "m" / "weights.bin", blob.substr(0, blob.size() / 2));
  msg = error_of(root / "m" / "model.onnx");
  EXPECT_TRUE(Mentions(msg, "tensor '"));
  EXPECT_TRUE(Mentions(msg, "weights.bin"));
  EXPECT_TRUE(Mentions(msg, "lies outside"));
  fs::remove_all(root);
}

// Graphs that use only known ops but are not (or not exactly) a ViT: each is a small edit of a
// valid export and must be refused, naming the node where the structure breaks.
class OnnxStructureErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ifstream f(kDir + "timm_vit_op13.onnx", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    ASSERT_TRUE(model_.ParseFromString(bytes));
  }
  onnx::NodeProto& node(const std::string& name) {
    for (auto& n : *model_.mutable_graph()->mutable_node())
      if (n.name() == name) return n;
    throw std::runtime_error("fixture has no node " + name);
  }
  void set_scalar(const std::string& constant_node, float value) {
    auto* t = node(constant_node).mutable_attribute(0)->mutable_t();
    t->set_raw_data(std::string(reinterpret_cast<const char*>(&value), sizeof value));
  }
  std::string load_error() {
    const std::string path = ::testing::TempDir() + "onnx_structure_" +
                             ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".onnx";
    std::ofstream(path, std::ios::binary) << model_.SerializeAsString();
    try {
      OnnxVitInfo info;
      load_onnx_vit(path, &info);
    } catch (const Error& e) {
      std::remove(path.c_str());
      return e.what();
    }
    std::remove(path.c_str());
    return "";
  }
  onnx::ModelProto model_;
};

TEST_F(OnnxStructureErrors, WrongAttentionScale) {
  set_scalar("/blocks/blocks.0/attn/Constant_10", 0.5f);  // d = 8 needs 8^-0.5
  std::string msg = load_error();
  EXPECT_TRUE(Mentions(msg, "node '/blocks/blocks.0/attn/Softmax'"));
  EXPECT_TRUE(Mentions(msg, "attention scale 0.5"));
}

TEST_F(OnnxStructureErrors, KeyNotTransposed) {
  auto* perm = node("/blocks/blocks.0/attn/Transpose_1").mutable_attribute(0);
  for (int i = 0; i < 4; ++i) perm->set_ints(i, i);
  EXPECT_TRUE(Mentions(load_error(), "key path"));
}

TEST_F(OnnxStructureErrors, QueryAndKeyFromTheSameSlice) {
  node("/blocks/blocks.0/attn/Squeeze").set_input(0, "/blocks/blocks.0/attn/Split_output_1");
  std::string msg = load_error();
  EXPECT_TRUE(Mentions(msg, "node '/blocks/blocks.0/attn/qkv/MatMul'"));
  EXPECT_TRUE(Mentions(msg, "distinct"));
}

TEST_F(OnnxStructureErrors, NoSoftmax) {
  auto& softmax = node("/blocks/blocks.1/attn/Softmax");
  softmax.set_op_type("Identity");
  softmax.clear_attribute();
  EXPECT_TRUE(Mentions(load_error(), "(Softmax)"));
}

TEST_F(OnnxStructureErrors, InconsistentLayerNormEpsilon) {
  set_scalar("/blocks/blocks.1/norm2/Constant_1", 1e-5f);
  std::string msg = load_error();
  EXPECT_TRUE(Mentions(msg, "node '/blocks/blocks.1/norm2/Add_1'"));
  EXPECT_TRUE(Mentions(msg, "epsilon 1e-05"));
}

TEST_F(OnnxStructureErrors, StrayComputeNode) {
  auto* stray = model_.mutable_graph()->add_node();
  stray->set_name("stray");
  stray->set_op_type("MatMul");
  stray->add_input("logits");
  stray->add_input("onnx::MatMul_270");
  stray->add_output("stray_out");
  std::string msg = load_error();
  EXPECT_TRUE(Mentions(msg, "node 'stray' (MatMul)"));
  EXPECT_TRUE(Mentions(msg, "not part of the recognized ViT"));
}

TEST_F(OnnxStructureErrors, ImageSizeDisagreesWithPositionEmbedding) {
  auto* dims =
      model_.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
  dims->mutable_dim(2)->set_dim_value(32);
  EXPECT_TRUE(Mentions(load_error(), "position embedding fits 16x16"));
}

// Like onnx.checker: an input that nothing defines is named as such, not as a structure mismatch.
TEST_F(OnnxStructureErrors, MissingInitializerIsNamed) {
  auto* inits = model_.mutable_graph()->mutable_initializer();
  for (int i = 0; i < inits->size(); ++i)
    if (inits->Get(i).name() == "pos_embed") {
      inits->DeleteSubrange(i, 1);
      break;
    }
  const std::string msg = load_error();
  EXPECT_TRUE(Mentions(msg, "input 'pos_embed' is not a graph input, initializer or earlier output"));
  EXPECT_TRUE(Mentions(msg, "node '/Add'"));
}

TEST_F(OnnxStructureErrors, OpsetOutsideTheSupportedRange) {
  model_.mutable_opset_import(0)->set_version(12);
  EXPECT_TRUE(Mentions(load_error(), "opset 12"));
}

}  // namespace
}  // namespace shiftadd
