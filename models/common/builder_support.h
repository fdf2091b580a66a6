#pragma once
// What every model builder needs: config.json look-ups (timm, Hugging Face and upstream
// layouts) and a WeightTaker that hands out weights by name with their shape and dtype checked,
// so a checkpoint with a missing, mis-shaped or unused tensor fails naming it.
#include <cstdint>
#include <initializer_list>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

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
  // Packed 5-bit shift codes: Error unless a U8 tensor of exactly this shape, every value < 32.
  Tensor take_codes(const std::string& name, const Shape& shape);
  // Counts a tensor as used without taking it (e.g. stored but unused upstream buffers).
  void skip(const std::string& name) { used_.insert(name); }
  // Error naming the first tensor nobody took, for a model described as `model`.
  void check_all_used(const std::string& model) const;

 private:
  const WeightStore& w_;
  std::set<std::string> used_;
};

}  // namespace shiftadd
