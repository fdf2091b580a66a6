// Model: resolve -> read -> family -> build (models/family.h), and the model's preprocessing.
#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <variant>

#include "core/log.h"
#include "engine/backend.h"
#include "engine/executor.h"
#include "loaders/image.h"
#include "loaders/model_source.h"
#include "models/family.h"
#include "runtime/model.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace shiftadd {

namespace {

// Where the bundled models live: $SHIFTADD_DATA_DIR, then beside this library's install
// (<prefix>/share/shiftadd/models, wherever the prefix was moved), then the configured install
// prefix, then the source tree.
std::string data_dir() {
  if (const char* env = std::getenv("SHIFTADD_DATA_DIR"); env && *env) return env;
  std::vector<fs::path> candidates;
  Dl_info dl;
  if (dladdr(reinterpret_cast<void*>(&default_model_path), &dl) && dl.dli_fname)
    candidates.push_back(fs::path(dl.dli_fname).parent_path().parent_path() / "share/shiftadd/models");
  candidates.emplace_back(SHIFTADD_INSTALL_DATA_DIR);
  candidates.emplace_back(SHIFTADD_DATA_DIR);
  for (const fs::path& d : candidates)
    if (fs::exists(d / "fashion_vit")) return d.string();
  return SHIFTADD_DATA_DIR;
}

std::vector<std::string> imagenet_labels() {
  std::vector<std::string> labels;
  std::ifstream in(fs::path(data_dir()) / "imagenet" / "classes.txt");
  for (std::string line; std::getline(in, line);) labels.push_back(line);
  return labels;
}

std::unique_ptr<Model::Impl> load_model(const std::string& path) {
  const ModelSource src = read_model_source(path);
  const ModelFamily& family = model_family(src);
  auto impl = std::make_unique<Model::Impl>();
  std::string naming;
  impl->weights = family.canonical_names(src, &naming);
  impl->config = family.infer_config(impl->weights, src);
  std::string heads_source;
  std::visit(
      [&](auto& c) {
        if (c.labels.empty() && c.num_classes == 1000) c.labels = imagenet_labels();
        impl->preprocess = c.preprocess;
        heads_source = c.heads_source;
      },
      impl->config);
  impl->graph = family.build(impl->config, impl->weights);
  check_supported(impl->graph, *make_cpu_backend(1));
  impl->info = describe_model(family, src, naming, impl->config, impl->graph);
  const ModelInfo& mi = impl->info;
  logger().info("loaded {} ({} {}, {}, dim {}, depth {}, heads {} from {})", mi.path, mi.format, naming,
                mi.architecture, mi.dim, mi.depth, mi.heads, heads_source);
  return impl;
}

}  // namespace

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

// Library and filesystem exceptions from malformed configs or unreadable directories become
// the one error type, naming the model.
std::shared_ptr<const Model> Model::load(const std::string& path) {
  try {
    return std::shared_ptr<const Model>(new Model(load_model(path)));
  } catch (const Error&) {
    throw;
  } catch (const json::exception& e) {
    throw Error("model '" + path + "': bad config: " + e.what());
  } catch (const std::bad_alloc&) {
    throw Error("model '" + path + "': out of memory");
  } catch (const std::exception& e) {
    throw Error("model '" + path + "': " + e.what());
  }
}

const ModelInfo& Model::info() const { return impl_->info; }

int64_t Model::input_size() const {
  const PreprocessConfig& p = impl_->preprocess;
  return int64_t{p.channels} * p.size * p.size;
}

std::vector<float> Model::preprocess_image(const std::string& image_path) const {
  const Image img = load_image(image_path);
  return preprocess_pixels(img.pixels.data(), img.width, img.height, img.channels);
}

std::vector<float> Model::preprocess_pixels(const uint8_t* pixels, int width, int height, int channels) const {
  std::vector<float> out(static_cast<size_t>(input_size()));
  preprocess_pixels(pixels, width, height, channels, out.data());
  return out;
}

void Model::preprocess_pixels(const uint8_t* pixels, int width, int height, int channels, float* out) const {
  if (!pixels || width <= 0 || height <= 0 || (channels != 1 && channels != 3))
    throw Error("preprocess_pixels: expected 8-bit pixels with width and height > 0 and 1 or 3 channels, got " +
                std::to_string(width) + "x" + std::to_string(height) + "x" + std::to_string(channels));
  Image img;
  img.width = width;
  img.height = height;
  img.channels = channels;
  img.pixels.assign(pixels, pixels + size_t(width) * height * channels);
  shiftadd::preprocess_image(img, impl_->preprocess, out);
}

std::string default_model_path() { return (fs::path(data_dir()) / "fashion_vit").string(); }

}  // namespace shiftadd
