#pragma once
// PVTv2 (spec section 1), dense: configuration inferred from upstream-named tensors
// (`patch_embed{i}.*`, `block{i}.{j}.*`, `norm{i}.*`, `head.*`) and an optional config.json, and
// the graph builder. Activations stay token-major [H*W, C] per sample; the grid of every stage
// is fixed at build time from the image size.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "engine/graph.h"
#include "loaders/image.h"
#include "loaders/weight_store.h"
#include "models/common/builder_support.h"

namespace shiftadd {

struct PvtStage {
  int64_t dim = 0, depth = 0, heads = 0, sr_ratio = 1, mlp_hidden = 0;
  int64_t patch = 0, stride = 0;  // overlapping patch embedding: kernel, stride (pad = patch/2)
  int64_t grid = 0;               // tokens per side after this stage's patch embedding
};

struct PvtConfig {
  int64_t image_size = 224, in_chans = 3, num_classes = 0;
  std::vector<PvtStage> stages;
  std::string heads_source;  // "config" or "PVTv2 convention [1, 2, 5, 8]"
  float embed_eps = 1e-5f;   // patch-embedding and spatial-reduction LayerNorms (nn.LayerNorm default)
  float eps = 1e-6f;         // block and stage norms
  std::vector<std::string> labels;
  PreprocessConfig preprocess;
  std::map<std::string, LayerKind> layer_kinds;  // converted files only

  int64_t total_depth() const;
};

// True if the tensor names look like an upstream PVTv2 checkpoint.
bool looks_like_pvt_v2(const WeightStore& w);
// timm's PVTv2 names (`patch_embed.*`, `stages.{i}.downsample.*`, `stages.{i}.blocks.{j}.*`,
// `stages.{i}.norm.*`, `mlp.dwconv.*`)?
bool looks_like_timm_pvt_v2(const WeightStore& w);
// The same tensors under upstream names (`patch_embed{i+1}`, `block{i+1}.{j}`, `norm{i+1}`,
// `mlp.dwconv.dwconv`); tensors are shared, not copied. Unknown names are kept as they are (the
// builder then reports them as unexpected).
WeightStore timm_pvt_v2_to_upstream(const WeightStore& w);

// Dims, depths, sr ratios and MLP widths from the tensors; heads (`num_heads`, a list or one
// number), image size (`img_size`/`image_size`, default 224) and labels from `config` (may be
// null). Throws Error naming the file and tensor when shapes are inconsistent.
PvtConfig infer_pvt_v2_config(const WeightStore& w, const nlohmann::json* config);

// Builds input [C, S, S] -> logits [1, classes]. Every tensor of `w` must be used.
Graph build_pvt_v2(const PvtConfig& cfg, const WeightStore& w);

// ----- the skeleton of the PVTv2 builders (dense here, ShiftAddViT in shiftadd_pvt.h) --------
// Per stage: the overlapping patch embedding and its norm; per block norm1, attention (plus the
// residual), norm2, fc1, 3x3 depthwise conv + GELU, fc2 (plus the residual); the stage norm.
// Then mean pooling and the head. A builder says how a projection is stored (`linear`) and,
// optionally, how a block attends (`attention`).

// Projection `name` (K -> N) of x, plus `residual` when >= 0.
using PvtLinear =
    std::function<int(Graph& g, int x, const std::string& name, int64_t K, int64_t N, int residual)>;
struct PvtLayers {
  PvtLinear linear;
  // The attention of block `b` ("block{i}.{j}.") of stage `s` on norm1's output h: returns x
  // plus the attention's projection. Null: PVTv2's spatial-reduction attention.
  std::function<int(Graph& g, const PvtStage& s, int64_t grid, const std::string& b, int h, int x)> attention;
};
// `what` names the model for an unused tensor ("a dense PVTv2").
Graph build_pvt(const PvtConfig& cfg, WeightTaker& weights, const PvtLayers& layers, const std::string& what);
// PVTv2's spatial-reduction attention of block `b`: q, the keys' tokens through a strided conv
// and a norm (sr ratio > 1), kv, softmax attention, proj; returns x plus proj's output.
int pvt_sr_attention(Graph& g, WeightTaker& weights, const PvtConfig& cfg, const PvtStage& s, int64_t grid,
                     const std::string& b, int h, int x, const PvtLinear& linear);

}  // namespace shiftadd
