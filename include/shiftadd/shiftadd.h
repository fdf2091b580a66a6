#pragma once
// shiftadd public C++ API.
//
//   auto model = shiftadd::Model::load("models/fashion_vit");      // once; shared, immutable
//   shiftadd::Session session(model, {.threads = 2});               // one per thread
//   auto top = session.classify("shirt.png", 5);                     // or session.run(pixels, batch)
//
// Every failure on user input throws shiftadd::Error with a message naming the file, tensor
// or node and what was expected.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "shiftadd/device.h"
#include "shiftadd/error.h"

namespace shiftadd {

struct LayerInfo {
  std::string name;                // graph node, e.g. "blocks.0.mlp.fc1"
  std::string op;                  // e.g. "linear"
  std::string kind;                // e.g. "dense linear", "softmax attention", "norm"
  std::vector<int64_t> out_shape;  // per sample (no batch dim)
  int64_t params = 0;
  // Arithmetic details of ShiftAddViT layers (empty for others), e.g.
  // "5-bit shift codes, exponent [-14, -1], 61% nonzero" or "16-bit KSH codes, 25 anchors".
  std::string detail;
};

struct ModelInfo {
  std::string path;
  std::string format;        // "safetensors" | "onnx"
  std::string naming;        // "timm" | "huggingface" | "onnx-graph"
  std::string architecture;  // "vit" | "deit-distilled"
  int64_t image_size = 0, patch_size = 0, in_chans = 0;
  int64_t dim = 0, depth = 0, heads = 0, mlp_hidden = 0, num_classes = 0, tokens = 0;
  float layer_norm_eps = 0;
  int64_t params = 0;
  std::map<std::string, int64_t> stored_dtypes;  // dtype name -> number of tensors in the file
  std::vector<std::string> labels;               // one per class
  std::vector<LayerInfo> layers;
};

class Model {
 public:
  // MODEL: a .safetensors file (config.json beside it optional), a directory in Hugging Face
  // or timm layout (model.safetensors + config.json [+ preprocessor_config.json]), or an
  // .onnx export of a ViT/DeiT.
  static std::shared_ptr<const Model> load(const std::string& path);
  ~Model();

  const ModelInfo& info() const;
  // Preprocesses an image file into [C, H, W] floats as the model expects.
  std::vector<float> preprocess_image(const std::string& image_path) const;
  // The same pipeline on decoded 8-bit pixels (HWC interleaved, `channels` 1 = gray or 3 = RGB,
  // rows of width * channels bytes): resize and center-crop as the model's config says, convert
  // channels (gray is replicated for 3-channel models, RGB becomes PIL's "L" luma for 1-channel
  // ones) and normalise. Returns input_size() floats; the overload writes them to `out`.
  std::vector<float> preprocess_pixels(const uint8_t* pixels, int width, int height, int channels) const;
  void preprocess_pixels(const uint8_t* pixels, int width, int height, int channels, float* out) const;
  // Floats in one preprocessed input: in_chans x image_size x image_size.
  int64_t input_size() const;

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Arithmetic of shift layers (ShiftAddViT): Exact reproduces upstream's float semantics
// (Q16.16 floor-quantised activations and bias, an fp32 GEMM against the exact powers of two);
// Fast runs them on the integer dot-product units: each output row's power-of-two weights as
// int8 (the 7 exponents below its largest), activations quantised to int8 per token (about 1%
// of a layer's output; docs/shiftadd.md).
enum class ShiftMode { Exact, Fast };

struct SessionOptions {
  int threads = 0;  // <= 0: all hardware threads (CPU work; the CUDA backend uses one stream)
  ShiftMode mode = ShiftMode::Exact;
  // CUDA needs a build with SHIFTADD_CUDA and an NVIDIA GPU; without either, creating the
  // Session throws Error saying which is missing.
  Device device = Device::CPU;
};

// Tokens one MoE layer sent to each expert (0: dense "Mult", 1: shift) in a run.
struct ExpertLoad {
  std::string layer;  // e.g. "block1.0.attn.to_qk"
  int64_t tokens[2] = {0, 0};
};

struct Prediction {
  int index = 0;
  std::string label;
  float probability = 0;
};

// Per-thread execution state: thread pool and activation memory, planned once per batch size.
// A Session is not thread-safe; create one per thread (they share the Model).
class Session {
 public:
  explicit Session(std::shared_ptr<const Model> model, SessionOptions options = {});
  ~Session();
  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;

  const Model& model() const;
  // input: batch x C x H x W float32, preprocessed; logits: batch x num_classes. batch >= 1.
  // Allocates nothing once this batch size has been planned.
  void run(const float* input, int64_t batch, float* logits);
  std::vector<float> run(const std::vector<float>& input, int64_t batch);
  // Plans memory for a batch size ahead of the first run (optional).
  void prepare(int64_t batch);
  // Top-k classes of one image file (k >= 1), probabilities by softmax of the logits. Logits that
  // are not finite are logged as a warning naming the image (once per session); NaN ranks last.
  std::vector<Prediction> classify(const std::string& image_path, int top_k = 5);

  // Per-layer wall time of the last run, when enabled (no timing calls otherwise).
  void set_profiling(bool on);
  std::vector<double> layer_ms() const;
  // Tokens per expert of every MoE layer in the last run, in graph order (all zero before the
  // first run; empty for models without MoE layers). Recorded on every run at no extra cost.
  std::vector<ExpertLoad> expert_tokens() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Top-k of softmax(logits) for one row of `classes` logits; k < 1 is an Error, k > classes
// returns every class.
std::vector<Prediction> top_k(const float* logits, int64_t classes,
                              const std::vector<std::string>& labels, int k);

// A float32 array as stored in a NumPy .npy file (little-endian, C order).
struct Array {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
// Throws Error for anything but a little-endian, C-order float32 array.
Array load_npy_f32(const std::string& path);
// Written atomically (temporary file, then rename).
void save_npy_f32(const std::string& path, const Array& a);

// ModelInfo as one JSON object (`shiftadd inspect --json`, Python's Model.inspect()).
std::string model_info_json(const ModelInfo& info);

// The bundled default model (models/fashion_vit): $SHIFTADD_DATA_DIR, the install prefix, or
// the source tree, whichever has it.
std::string default_model_path();
std::string version();
// Library logging on stderr: 0 warnings only (the default), 1 info, 2 debug.
void set_verbosity(int level);

}  // namespace shiftadd
