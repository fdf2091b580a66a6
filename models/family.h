#pragma once
// The model families: one row per family holding everything family-specific about loading a
// model (detection, canonical names, configuration, graph builder, description), so the
// runtime only resolves files, reads them, picks the family and builds. Adding a family is a
// builder under models/<family>/ and a row here.
#include <array>
#include <string>
#include <variant>

#include "engine/graph.h"
#include "loaders/model_source.h"
#include "models/pvt/pvt_v2.h"
#include "models/vit/vit.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd {

// A family's configuration; each has num_classes, heads_source, labels, preprocess and
// layer_kinds (std::visit reaches them whatever the family).
using ModelConfig = std::variant<VitConfig, PvtConfig>;

struct ModelFamily {
  const char* name;  // "vit" (ViT / DeiT), "pvt_v2", "shiftadd_pvt_v2"
  // The architectures a shiftadd file holding this family's tensors may declare
  // (docs/format.md; null: unused), and what a contradicting file is told.
  std::array<const char*, 2> converted_as;
  const char* converted_mismatch;
  // True when the tensors as stored are this family's (rows are tried in order).
  bool (*detect)(const ModelSource& src);
  // The tensors under the names the builder takes, and the naming they came in ("timm",
  // "huggingface", "upstream", "shiftadd", "onnx-graph").
  WeightStore (*canonical_names)(const ModelSource& src, std::string* naming);
  // Dims from the tensors; heads, labels and preprocessing from the configs.
  ModelConfig (*infer_config)(const WeightStore& w, const ModelSource& src);
  Graph (*build)(const ModelConfig& c, const WeightStore& w);
  // The family's part of ModelInfo: architecture and dims.
  void (*describe)(const ModelConfig& c, const std::string& naming, ModelInfo& info);
};

// The family of a model (the first row that detects it). Error naming the file when a
// shiftadd file declares an architecture its tensors contradict.
const ModelFamily& model_family(const ModelSource& src);

// The whole ModelInfo of a built model: the files', the stored tensors' (parameters, dtypes),
// the family's (describe) and the graph's layers.
ModelInfo describe_model(const ModelFamily& family, const ModelSource& src, const std::string& naming,
                         const ModelConfig& c, const Graph& g);

}  // namespace shiftadd
