#include "tests/fuzz/fuzz_targets.h"

#include <filesystem>
#include <stdexcept>

#include "loaders/image.h"
#include "loaders/npy.h"
#include "loaders/onnx_vit.h"
#include "loaders/safetensors.h"
#include "models/vit/vit_names.h"
#include "shiftadd/dataset.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::fuzz {
namespace {

void safetensors(const std::string& path) {
  const WeightStore w = load_safetensors(path);
  for (const auto& [name, t] : w.tensors)
    if (t.dtype() == DType::F16 || t.dtype() == DType::BF16) to_f32(t);
  if (detect_vit_naming(w) == VitNaming::HuggingFace) canonicalize_vit_names(w);
}

void onnx(const std::string& path) {
  OnnxVitInfo info;
  load_onnx_vit(path, &info);
}

void npy(const std::string& path) { load_npy(path); }

void image(const std::string& path) {
  const Image img = load_image(path);
  PreprocessConfig cfg;
  cfg.size = 32;
  std::vector<float> out(3 * 32 * 32);
  preprocess_image(img, cfg, out.data());
}

// The same bytes as images and labels: the images header must parse before the labels are read.
void idx(const std::string& path) {
  DatasetOptions options;
  options.labels_path = path;
  const Dataset d = Dataset::open(path, options);
  for (int64_t i = 0; i < d.size() && i < 4; ++i) d.label(i);
}

// A model directory holding only model.safetensors.
void meta(const std::string& path) {
  set_verbosity(-1);
  const auto model = Model::load(std::filesystem::path(path).parent_path().string());
  (void)model->info();
}

}  // namespace

const std::vector<Target>& targets() {
  static const std::vector<Target> all = {
      {"safetensors", ".safetensors", safetensors},
      {"onnx", ".onnx", onnx},
      {"npy", ".npy", npy},
      {"image", ".img", image},
      {"idx", "-images-idx3-ubyte", idx},
      {"meta", "/model.safetensors", meta},
  };
  return all;
}

const Target& target(const std::string& name) {
  for (const Target& t : targets())
    if (name == t.name) return t;
  throw std::invalid_argument("no fuzz target '" + name + "'");
}

}  // namespace shiftadd::fuzz
