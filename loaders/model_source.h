#pragma once
// One model on disk, read: its files resolved (a file or a model directory), its tensors as
// stored, the configuration files beside it and a shiftadd file's own metadata
// (docs/format.md). What the tensors mean is the model families' business (models/family.h).
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "loaders/weight_store.h"

namespace shiftadd {

// Files making up one model.
struct ModelFiles {
  std::filesystem::path weights;  // .safetensors or .onnx
  bool onnx = false;
  std::filesystem::path config, preprocessor;  // config.json, preprocessor_config.json; may not exist
};

// A weights file, or a directory holding model.safetensors / model.onnx (or exactly one
// .safetensors / .onnx file). Error naming the path otherwise.
ModelFiles resolve_model_files(const std::string& path);

// How a converted layer is stored (shiftadd files' "layers" metadata, docs/format.md).
struct LayerKind {
  std::string kind;     // dense | shift | moe | softmax | ksh
  std::string combine;  // moe: "log_exp" | "none"
  int code_bits = 0;    // shift / moe: stored code width, 4 or 5 (format v2); 0: one code per byte (v1)
};

// The "__metadata__" of a file written by `shiftadd convert` (docs/format.md).
struct ShiftaddMetadata {
  bool is = false;  // the file is a shiftadd file
  std::string architecture;
  nlohmann::json config;
  std::map<std::string, LayerKind> layers;
};
// Error naming the file when the metadata says shiftadd but is incomplete or of another version.
ShiftaddMetadata read_shiftadd_metadata(const WeightStore& w);

struct ModelSource {
  ModelFiles files;
  WeightStore stored;  // the tensors as stored (an ONNX graph's initializers under timm names)
  // config.json; a shiftadd file's own config instead (self-describing: a config.json beside it
  // is ignored); for ONNX, with the graph's head count and LayerNorm eps put in.
  std::optional<nlohmann::json> config;
  std::optional<nlohmann::json> preprocessor;  // preprocessor_config.json (Hugging Face)
  ShiftaddMetadata converted;
};

ModelSource read_model_source(const std::string& path);

}  // namespace shiftadd
