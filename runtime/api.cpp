// The public API's free functions: .npy arrays, ModelInfo as JSON, the version.
#include <nlohmann/json.hpp>

#include "loaders/npy.h"
#include "shiftadd/shiftadd.h"

using json = nlohmann::json;

namespace shiftadd {

Array load_npy_f32(const std::string& path) {
  const Tensor t = load_npy(path, {DType::F32});
  Array a;
  a.shape = t.shape();
  a.data.assign(t.data<float>(), t.data<float>() + t.numel());
  return a;
}

void save_npy_f32(const std::string& path, const Array& a) {
  if (shape_numel(a.shape) != static_cast<int64_t>(a.data.size()))
    throw Error(path + ": array shape " + shape_str(a.shape) + " does not match its " +
                std::to_string(a.data.size()) + " values");
  save_npy(path, Tensor::borrow(const_cast<float*>(a.data.data()), DType::F32, a.shape, nullptr));
}

std::string model_info_json(const ModelInfo& mi) {
  json j{{"path", mi.path}, {"format", mi.format}, {"naming", mi.naming},
         {"architecture", mi.architecture}, {"image_size", mi.image_size},
         {"patch_size", mi.patch_size}, {"in_chans", mi.in_chans}, {"dim", mi.dim},
         {"depth", mi.depth}, {"heads", mi.heads}, {"mlp_hidden", mi.mlp_hidden},
         {"num_classes", mi.num_classes}, {"tokens", mi.tokens},
         {"layer_norm_eps", mi.layer_norm_eps}, {"params", mi.params},
         {"dtypes", mi.stored_dtypes}, {"labels", mi.labels}, {"layers", json::array()}};
  for (const auto& l : mi.layers)
    j["layers"].push_back({{"name", l.name}, {"op", l.op}, {"kind", l.kind},
                           {"out_shape", l.out_shape}, {"params", l.params},
                           {"detail", l.detail}});
  return j.dump();
}

std::string version() { return "0.1.0"; }

}  // namespace shiftadd
