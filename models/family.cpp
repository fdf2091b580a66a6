#include "models/family.h"

#include <algorithm>
#include <cstdio>

#include "core/shift_codes.h"
#include "models/pvt/shiftadd_pvt.h"
#include "models/vit/vit_names.h"
#include "shiftadd/error.h"

namespace shiftadd {

namespace {

const nlohmann::json* config_of(const ModelSource& src) { return src.config ? &*src.config : nullptr; }

// ----- ViT / DeiT (models/vit) ---------------------------------------------------------------

WeightStore vit_canonical_names(const ModelSource& src, std::string* naming) {
  if (src.files.onnx) {  // the ONNX recognizer names the initializers as timm does
    *naming = "onnx-graph";
    return src.stored;
  }
  if (src.converted.is) {  // shiftadd files are written with canonical names
    *naming = "shiftadd";
    return src.stored;
  }
  *naming = vit_naming_name(detect_vit_naming(src.stored));
  return canonicalize_vit_names(src.stored);
}

ModelConfig vit_config(const WeightStore& w, const ModelSource& src) {
  VitConfig c = infer_vit_config(w, config_of(src), src.preprocessor ? &*src.preprocessor : nullptr);
  c.layer_kinds = src.converted.layers;
  return c;
}

void describe_vit(const ModelConfig& mc, const std::string& naming, ModelInfo& info) {
  const VitConfig& c = std::get<VitConfig>(mc);
  info.architecture = c.distilled ? "deit-distilled" : "vit";
  if (naming == "shiftadd") info.architecture = "shiftadd_" + info.architecture;
  info.image_size = c.image_size;
  info.patch_size = c.patch_size;
  info.in_chans = c.in_chans;
  info.dim = c.dim;
  info.depth = c.depth;
  info.heads = c.heads;
  info.mlp_hidden = c.mlp_hidden;
  info.num_classes = c.num_classes;
  info.tokens = c.tokens();
  info.layer_norm_eps = c.eps;
  info.labels = c.labels;
}

// ----- PVTv2, dense and ShiftAddViT (models/pvt) ---------------------------------------------

bool is_pvt_v2(const ModelSource& src) { return looks_like_timm_pvt_v2(src.stored) || looks_like_pvt_v2(src.stored); }

WeightStore pvt_canonical_names(const ModelSource& src, std::string* naming) {
  if (looks_like_timm_pvt_v2(src.stored)) {
    *naming = "timm";
    return timm_pvt_v2_to_upstream(src.stored);
  }
  *naming = src.converted.is ? "shiftadd" : "upstream";
  return src.stored;
}

ModelConfig pvt_config(const WeightStore& w, const ModelSource& src) {
  PvtConfig c = infer_pvt_v2_config(w, config_of(src));
  c.layer_kinds = src.converted.layers;
  return c;
}

// dim, heads, mlp_hidden and tokens describe the last stage; depth counts all blocks;
// patch_size is the stem's stride (4).
void describe_pvt(const ModelConfig& mc, const std::string&, ModelInfo& info) {
  const PvtConfig& c = std::get<PvtConfig>(mc);
  const PvtStage& last = c.stages.back();
  info.image_size = c.image_size;
  info.patch_size = c.stages.front().stride;
  info.in_chans = c.in_chans;
  info.dim = last.dim;
  info.depth = c.total_depth();
  info.heads = last.heads;
  info.mlp_hidden = last.mlp_hidden;
  info.num_classes = c.num_classes;
  info.tokens = last.grid * last.grid;
  info.layer_norm_eps = c.eps;
  info.labels = c.labels;
}

// ----- the table -----------------------------------------------------------------------------

constexpr const char* kPvtMismatch = "holds PVTv2 tensors";

const ModelFamily kFamilies[] = {
    {"shiftadd_pvt_v2", {"pvt_v2", "shiftadd_pvt_v2"}, kPvtMismatch,
     [](const ModelSource& s) { return is_pvt_v2(s) && has_shiftadd_pvt_tensors(s.stored); }, pvt_canonical_names,
     pvt_config, [](const ModelConfig& c, const WeightStore& w) { return build_shiftadd_pvt(std::get<PvtConfig>(c), w); },
     describe_pvt},
    {"pvt_v2", {"pvt_v2", "shiftadd_pvt_v2"}, kPvtMismatch, is_pvt_v2, pvt_canonical_names, pvt_config,
     [](const ModelConfig& c, const WeightStore& w) { return build_pvt_v2(std::get<PvtConfig>(c), w); }, describe_pvt},
    {"vit", {"vit", nullptr}, "does not hold PVTv2 tensors ('patch_embed1.proj.weight')",
     [](const ModelSource&) { return true; }, vit_canonical_names, vit_config,
     [](const ModelConfig& c, const WeightStore& w) { return build_vit(std::get<VitConfig>(c), w); }, describe_vit},
};

// ----- the family-independent description ----------------------------------------------------

// "shift codes, exponent [lo, hi], P% nonzero" and how fast mode's int8 window holds them.
std::string shift_detail(const Tensor& codes, int64_t dropped) {
  const uint8_t* c = codes.data<uint8_t>();
  int lo = 1, hi = -15;
  int64_t nonzero = 0;
  for (int64_t i = 0; i < codes.numel(); ++i) {
    if (shift_code_is_zero(c[i])) continue;
    ++nonzero;
    lo = std::min(lo, shift_code_exponent(c[i]));
    hi = std::max(hi, shift_code_exponent(c[i]));
  }
  std::string r = "shift codes";
  if (nonzero) r += ", exponent [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  const int64_t pct = codes.numel() ? (100 * nonzero + codes.numel() / 2) / codes.numel() : 0;
  r += ", " + std::to_string(pct) + "% nonzero";
  if (dropped == 0) return r + ", int8-exact (7 exponents per row)";
  char d[64];
  std::snprintf(d, sizeof d, ", %.2f%% below fast mode's int8 window", 100.0 * dropped / std::max<int64_t>(1, nonzero));
  return r + d;
}

std::string layer_detail(const Node& n) {
  switch (n.op) {
    case OpKind::ShiftLinear: return shift_detail(n.w(ShiftW::Codes), n.prepared.shift.dropped);
    case OpKind::MoeLinear:
      return "top-1 of 2: dense fp32 | " + shift_detail(n.w(MoeW::Codes1), n.prepared.shift.dropped);
    case OpKind::KshAttention:
      return std::to_string(n.p.nbits) + "-bit KSH codes, " + std::to_string(n.p.anchors) +
             " anchors, " + std::to_string(n.p.heads) + " heads";
    case OpKind::Linear:
    case OpKind::Attention:
    case OpKind::Conv2d: return "fp32";
    default: return "";
  }
}

}  // namespace

const ModelFamily& model_family(const ModelSource& src) {
  for (const ModelFamily& f : kFamilies) {
    if (!f.detect(src)) continue;
    const std::string& arch = src.converted.architecture;
    if (src.converted.is && arch != (f.converted_as[0] ? f.converted_as[0] : "") &&
        arch != (f.converted_as[1] ? f.converted_as[1] : ""))
      throw Error(src.files.weights.string() + ": shiftadd file of architecture '" + arch + "' " +
                  f.converted_mismatch);
    return f;
  }
  throw Error(src.files.weights.string() + ": no model family recognises its tensors");  // the last row takes all
}

ModelInfo describe_model(const ModelFamily& family, const ModelSource& src, const std::string& naming,
                         const ModelConfig& c, const Graph& g) {
  ModelInfo info;
  info.path = src.files.weights.string();
  info.format = src.files.onnx ? "onnx" : "safetensors";
  info.naming = naming;
  for (const auto& [name, t] : src.stored.tensors) {
    ++info.stored_dtypes[std::string(dtype_name(t.dtype()))];
    info.params += t.numel();
  }
  info.architecture = family.name;
  family.describe(c, naming, info);
  for (const Node& n : g.nodes()) {
    if (n.op == OpKind::Input) continue;
    LayerInfo l;
    l.name = n.name;
    l.op = op_traits(n.op).name;
    l.kind = op_traits(n.op).kind;
    l.out_shape = g.sample_shape(n.output);
    for (const Tensor& w : n.weights) l.params += w.numel();
    l.detail = layer_detail(n);
    info.layers.push_back(std::move(l));
  }
  return info;
}

}  // namespace shiftadd
