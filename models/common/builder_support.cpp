#include "models/common/builder_support.h"

#include <nlohmann/json.hpp>

#include "core/shift_codes.h"
#include "loaders/safetensors.h"
#include "shiftadd/error.h"

namespace shiftadd {

using json = nlohmann::json;

const json* config_find(const json* cfg, const char* key) {
  if (!cfg || !cfg->is_object()) return nullptr;
  if (cfg->contains(key)) return &(*cfg)[key];
  for (const char* nest : {"model_args", "pretrained_cfg"})
    if (cfg->contains(nest) && (*cfg)[nest].is_object() && (*cfg)[nest].contains(key))
      return &(*cfg)[nest][key];
  return nullptr;
}

int64_t config_int(const json* cfg, std::initializer_list<const char*> keys, int64_t fallback) {
  for (const char* k : keys)
    if (const json* v = config_find(cfg, k); v && v->is_number_integer()) return v->get<int64_t>();
  return fallback;
}

std::vector<std::string> config_labels(const json* cfg, int64_t classes) {
  std::vector<std::string> labels;
  if (const json* names = config_find(cfg, "label_names"); names && names->is_array()) {
    for (const auto& n : *names) labels.push_back(n.is_string() ? n.get<std::string>() : n.dump());
  } else if (const json* m = config_find(cfg, "id2label"); m && m->is_object()) {
    // One entry per class, as transformers writes it; checked first so that the class count
    // (from a tensor's shape) cannot size an allocation the config does not back.
    if (static_cast<int64_t>(m->size()) != classes) return labels;
    labels.assign(classes, "");
    for (const auto& [k, v] : m->items()) {
      int64_t id = -1;
      try {
        id = std::stoll(k);
      } catch (...) {
      }
      if (id >= 0 && id < classes) labels[id] = v.is_string() ? v.get<std::string>() : v.dump();
    }
  }
  if (!labels.empty() && static_cast<int64_t>(labels.size()) != classes) labels.clear();
  return labels;
}

Tensor WeightTaker::take(const std::string& name, const Shape& shape) {
  const Tensor& t = w_.at(name);  // names the file and the tensor when missing
  if (t.shape() != shape)
    throw Error(w_.source + ": tensor '" + name + "' has shape " + shape_str(t.shape()) +
                ", expected " + shape_str(shape));
  if (!dtype_traits(t.dtype()).is_float)
    throw Error(w_.source + ": tensor '" + name + "' has dtype " + std::string(dtype_name(t.dtype())) +
                "; expected F32, F16 or BF16");
  used_.insert(name);
  return to_f32(t);
}

Tensor WeightTaker::take_codes(const std::string& name, const Shape& shape, int bits,
                               const std::string& exponent_name) {
  const Tensor& t = w_.at(name);
  const int64_t N = shape.at(0), K = shape.at(1);
  const Shape stored = bits ? Shape{N, packed_code_bytes(K, bits)} : shape;
  const std::string what = bits ? std::to_string(bits) + "-bit packed shift codes of [" + std::to_string(N) +
                                       ", " + std::to_string(K) + "] weights"
                                 : "5-bit shift codes, one per byte";
  if (t.shape() != stored)
    throw Error(w_.source + ": tensor '" + name + "' has shape " + shape_str(t.shape()) + ", expected " +
                shape_str(stored) + " (" + what + ")");
  if (t.dtype() != DType::U8)
    throw Error(w_.source + ": tensor '" + name + "' has dtype " + std::string(dtype_name(t.dtype())) +
                "; expected U8 (" + what + ")");
  used_.insert(name);
  const uint8_t* c = t.data<uint8_t>();
  if (bits == 0) {
    for (int64_t i = 0; i < t.numel(); ++i)
      if (c[i] & 0xE0)
        throw Error(w_.source + ": tensor '" + name + "' holds " + std::to_string(c[i]) + " at element " +
                    std::to_string(i) + "; shift codes are 5-bit (0..31)");
    return t;
  }
  if (bits != 4 && bits != 5)
    throw Error(w_.source + ": tensor '" + name + "': shift codes stored at " + std::to_string(bits) +
                " bits; expected 4 or 5");
  const int8_t* exp = nullptr;
  if (bits == 4) {
    const Tensor& e = w_.at(exponent_name);
    if (e.shape() != Shape{N} || e.dtype() != DType::I8)
      throw Error(w_.source + ": tensor '" + exponent_name + "' has " + std::string(dtype_name(e.dtype())) + " " +
                  shape_str(e.shape()) + "; expected I8 [" + std::to_string(N) +
                  "] (the row exponents of 4-bit shift codes)");
    used_.insert(exponent_name);
    exp = e.data<int8_t>();
  }
  Tensor codes = Tensor::empty(DType::U8, shape);
  const int64_t row_bytes = stored[1];
  for (int64_t n = 0; n < N; ++n)
    if (!unpack_code_row(c + n * row_bytes, K, bits, exp ? exp[n] : 0, codes.data<uint8_t>() + n * K))
      throw Error(w_.source + ": tensor '" + name + "' row " + std::to_string(n) + " with exponent " +
                  std::to_string(exp ? exp[n] : 0) + " in '" + exponent_name +
                  "' names a weight exponent outside [-14, 0]");
  return codes;
}

void WeightTaker::check_all_used(const std::string& model) const {
  for (const auto& [name, t] : w_.tensors)
    if (!used_.count(name))
      throw Error(w_.source + ": unexpected tensor '" + name + "' " + shape_str(t.shape()) + " for " + model);
}

int converted_linear(Graph& g, WeightTaker& W, const std::map<std::string, LayerKind>& kinds,
                     const std::string& L, int x, int64_t K, int64_t N, bool gelu, int residual,
                     bool bias_optional) {
  const WeightStore& w = W.store();
  auto bias = [&](const std::string& name) {
    return bias_optional && !w.has(name) ? Tensor() : W.take(name, {N});
  };
  const auto kind = kinds.find(L);
  const int bits = kind == kinds.end() ? 0 : kind->second.code_bits;
  auto shift = [&](const std::string& p) {
    ShiftWeights s;
    s.codes = W.take_codes(p + ".codes", {N, K}, bits, p + ".exponent");
    s.bias = bias(p + ".bias");
    if (w.has(p + ".scale")) s.scale = W.take(p + ".scale", {N});
    return s;
  };
  int y;
  if (w.has(L + ".weight")) {
    return g.linear(x, W.take(L + ".weight", {N, K}), bias(L + ".bias"), L, gelu, residual);
  } else if (w.has(L + ".codes")) {
    return g.shift_linear(x, shift(L), L, gelu, residual);
  } else if (w.has(L + ".router.weight")) {
    const bool log_exp = kind != kinds.end() && kind->second.combine == "log_exp";
    return g.moe_linear(x, W.take(L + ".router.weight", {2, K}), W.take(L + ".router.bias", {2}),
                        W.take(L + ".experts.0.weight", {N, K}), bias(L + ".experts.0.bias"),
                        shift(L + ".experts.1"), L, log_exp, gelu, residual);
  } else {
    throw Error(w.source + ": layer '" + L + "' has none of '" + L + ".weight' (dense), '" + L +
                ".codes' (shift) or '" + L + ".router.weight' (MoE)");
  }
  return residual >= 0 ? g.add(y, residual, 1.0f, L + ".residual") : y;
}

bool read_shiftadd_preprocess(const nlohmann::json* cfg, PreprocessConfig& p) {
  if (!cfg || !cfg->is_object() || !cfg->contains("shiftadd_preprocess")) return false;
  const nlohmann::json& j = (*cfg)["shiftadd_preprocess"];
  if (!j.is_object()) throw Error("config: 'shiftadd_preprocess' must be an object");
  p.crop_pct = j.value("crop_pct", p.crop_pct);
  p.resize_exact = j.value("resize_exact", false);
  p.resize_exact_size = j.value("resize_exact_size", 0);
  p.interpolation = j.value("interpolation", p.interpolation);
  for (auto [key, dst] : {std::pair<const char*, std::vector<float>*>{"mean", &p.mean}, {"std", &p.std}}) {
    if (!j.contains(key)) continue;
    const auto v = j[key].get<std::vector<float>>();
    if (v.size() != static_cast<size_t>(p.channels))
      throw Error(std::string("config: 'shiftadd_preprocess.") + key + "' has " + std::to_string(v.size()) +
                  " values for a " + std::to_string(p.channels) + "-channel model");
    *dst = v;
  }
  return true;
}

}  // namespace shiftadd
