#pragma once
// ViT / DeiT (spec section 1): configuration inferred from canonical (timm-named) tensors and
// optional config files, and the graph builder.
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "engine/graph.h"
#include "loaders/image.h"
#include "loaders/weight_store.h"
#include "models/common/builder_support.h"

namespace shiftadd {

struct VitConfig {
  int64_t image_size = 0, patch_size = 0, in_chans = 0;
  int64_t dim = 0, depth = 0, heads = 0, mlp_hidden = 0, num_classes = 0;
  int64_t prefix_tokens = 1;  // cls (+ dist)
  bool distilled = false;  // has a distillation token
  bool dist_head = false;  // ... and a distillation head (prediction = mean of both heads)
  float eps = 1e-6f;
  std::string heads_source;   // where `heads` came from, for inspect / logs
  std::vector<std::string> labels;
  PreprocessConfig preprocess;
  std::map<std::string, LayerKind> layer_kinds;  // converted files only

  int64_t tokens() const { return prefix_tokens + (image_size / patch_size) * (image_size / patch_size); }
};

// Reads dims from the tensors; heads, eps, labels and preprocessing from `config` (timm or
// Hugging Face config.json; may be null) and `preprocessor` (HF preprocessor_config.json; may be
// null). Throws Error naming the file and tensor when shapes are inconsistent.
VitConfig infer_vit_config(const WeightStore& w, const nlohmann::json* config,
                           const nlohmann::json* preprocessor);

// Builds the inference graph: input [C, H, W] -> logits [classes]. Every tensor of `w` must be
// used (an unexpected tensor is an error naming it). Weights are converted to float32 if stored
// as F16/BF16; float32 weights are borrowed, not copied.
Graph build_vit(const VitConfig& cfg, const WeightStore& w);

}  // namespace shiftadd
