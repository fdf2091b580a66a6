#pragma once
// What every model builder needs: config.json look-ups (timm, Hugging Face and upstream
// layouts) and a WeightTaker that hands out weights by name with their shape and dtype checked,
// so a checkpoint with a missing, mis-shaped or unused tensor fails naming it.
#include <cstdint>
#include <initializer_list>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "engine/graph.h"
#include "loaders/image.h"
#include "loaders/model_source.h"
#include "loaders/weight_store.h"

namespace shiftadd {

// `key` at the top level of a config, else in timm's nested "model_args" / "pretrained_cfg".
const nlohmann::json* config_find(const nlohmann::json* cfg, const char* key);
// The first of `keys` holding an integer, else `fallback`.
int64_t config_int(const nlohmann::json* cfg, std::initializer_list<const char*> keys, int64_t fallback);
// Class names from "label_names" or "id2label"; empty unless there is one per class.
std::vector<std::string> config_labels(const nlohmann::json* cfg, int64_t classes);

class WeightTaker {
 public:
  explicit WeightTaker(const WeightStore& w) : w_(w) {}
  const WeightStore& store() const { return w_; }
  bool has(const std::string& name) const { return w_.has(name); }
  // The tensor as float32 (F16/BF16 converted, F32 borrowed); Error unless it exists with
  // exactly this shape and a float dtype.
  Tensor take(const std::string& name, const Shape& shape);
  // Shift codes [N, K] as the engine holds them (one 5-bit code per byte). `bits` is how the file
  // stores them (docs/format.md): 0 (format v1) one code per byte, every value < 32; 4 or 5
  // (format v2) packed rows [N, packed_code_bytes(K, bits)], 4-bit rows with their exponents in
  // `exponent_name` (I8 [N]). Error naming the tensor unless exactly that.
  Tensor take_codes(const std::string& name, const Shape& shape, int bits = 0,
                    const std::string& exponent_name = "");
  // Counts a tensor as used without taking it (e.g. stored but unused upstream buffers).
  void skip(const std::string& name) { used_.insert(name); }
  // Error naming the first tensor nobody took, for a model described as `model`.
  void check_all_used(const std::string& model) const;

 private:
  const WeightStore& w_;
  std::set<std::string> used_;
};

}  // namespace shiftadd

namespace shiftadd {

// The preprocessing a shiftadd file carries in its config ("shiftadd_preprocess", docs/format.md):
// fills `p` (channels and size already set) and returns true when present.
bool read_shiftadd_preprocess(const nlohmann::json* cfg, PreprocessConfig& p);

// One linear layer `L` [N, K] stored dense (`L.weight`), shift (`L.codes`) or MoE
// (`L.router.weight`, docs/format.md), with an optional fused GELU and residual input. A bias
// may be absent only when `bias_optional`.
int converted_linear(Graph& g, WeightTaker& W, const std::map<std::string, LayerKind>& kinds,
                     const std::string& L, int x, int64_t K, int64_t N, bool gelu = false,
                     int residual = -1, bool bias_optional = false);

}  // namespace shiftadd
