#include "models/vit/vit_names.h"

#include <cstring>
#include <optional>
#include <string_view>
#include <set>

#include "loaders/safetensors.h"
#include "shiftadd/error.h"

namespace shiftadd {

namespace {

// Hugging Face suffix (after "<prefix>.encoder.layer.{i}.") -> timm suffix (after "blocks.{i}.").
struct NameRow {
  const char* hf;
  const char* timm;
};
const NameRow kHfBlockNames[] = {
    {"layernorm_before.weight", "norm1.weight"},
    {"layernorm_before.bias", "norm1.bias"},
    {"attention.output.dense.weight", "attn.proj.weight"},
    {"attention.output.dense.bias", "attn.proj.bias"},
    {"layernorm_after.weight", "norm2.weight"},
    {"layernorm_after.bias", "norm2.bias"},
    {"intermediate.dense.weight", "mlp.fc1.weight"},
    {"intermediate.dense.bias", "mlp.fc1.bias"},
    {"output.dense.weight", "mlp.fc2.weight"},
    {"output.dense.bias", "mlp.fc2.bias"},
};
// Top-level names; {} stands for the model prefix ("vit" or "deit").
const NameRow kHfTopNames[] = {
    {"{}.embeddings.cls_token", "cls_token"},
    {"{}.embeddings.distillation_token", "dist_token"},
    {"{}.embeddings.position_embeddings", "pos_embed"},
    {"{}.embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"},
    {"{}.embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias"},
    {"{}.layernorm.weight", "norm.weight"},
    {"{}.layernorm.bias", "norm.bias"},
    {"classifier.weight", "head.weight"},
    {"classifier.bias", "head.bias"},
    {"cls_classifier.weight", "head.weight"},
    {"cls_classifier.bias", "head.bias"},
    {"distillation_classifier.weight", "head_dist.weight"},
    {"distillation_classifier.bias", "head_dist.bias"},
};

std::string hf_prefix(const WeightStore& w) {
  for (const char* p : {"vit", "deit"})
    if (w.has(std::string(p) + ".embeddings.patch_embeddings.projection.weight")) return p;
  return "";
}

std::string replace_prefix(const char* pattern, const std::string& prefix) {
  std::string s = pattern;
  const auto at = s.find("{}");
  if (at != std::string::npos) s.replace(at, 2, prefix);
  return s;
}

// Concatenates tensors along dim 0 into a new owned float32 tensor (F16/BF16 converted).
Tensor concat_rows(const std::vector<const Tensor*>& stored, const std::string& what) {
  std::vector<Tensor> parts;
  for (const Tensor* t : stored) {
    if (!dtype_traits(t->dtype()).is_float || t->ndim() < 1)
      throw Error("cannot fuse " + what + ": expected float tensors, got " +
                  std::string(dtype_name(t->dtype())) + " " + shape_str(t->shape()));
    parts.push_back(to_f32(*t));
  }
  int64_t rows = 0;
  Shape rest;
  for (const Tensor& p : parts) {
    const Tensor* t = &p;
    Shape r(t->shape().begin() + 1, t->shape().end());
    if (rows && r != rest) throw Error("cannot fuse " + what + ": q/k/v shapes differ");
    rest = r;
    rows += t->dim(0);
  }
  Shape s{rows};
  s.insert(s.end(), rest.begin(), rest.end());
  Tensor out = Tensor::empty(DType::F32, s);
  char* dst = static_cast<char*>(out.raw());
  for (const Tensor& t : parts) {
    std::memcpy(dst, t.raw(), t.nbytes());
    dst += t.nbytes();
  }
  return out;
}

// i of "<prefix>.encoder.layer.<i>.<rest>" (i up to 5 digits, rest non-empty). A plain scan:
// std::regex recurses per character and overflows the stack on long names.
std::optional<int> hf_layer_index(std::string_view name, const std::string& prefix) {
  const std::string head = prefix + ".encoder.layer.";
  if (name.substr(0, head.size()) != head) return std::nullopt;
  name.remove_prefix(head.size());
  size_t digits = 0;
  int index = 0;
  while (digits < name.size() && name[digits] >= '0' && name[digits] <= '9') {
    if (++digits > 5) return std::nullopt;
    index = index * 10 + (name[digits - 1] - '0');
  }
  if (digits == 0 || digits + 1 >= name.size() || name[digits] != '.') return std::nullopt;
  return index;
}

}  // namespace

VitNaming detect_vit_naming(const WeightStore& w) {
  if (w.has("patch_embed.proj.weight")) return VitNaming::Timm;
  if (!hf_prefix(w).empty()) return VitNaming::HuggingFace;
  return VitNaming::Unknown;
}

const char* vit_naming_name(VitNaming n) {
  switch (n) {
    case VitNaming::Timm: return "timm";
    case VitNaming::HuggingFace: return "huggingface";
    default: return "unknown";
  }
}

WeightStore canonicalize_vit_names(const WeightStore& w) {
  const VitNaming naming = detect_vit_naming(w);
  if (naming == VitNaming::Timm) return w;
  if (naming == VitNaming::Unknown)
    throw Error(w.source + ": not a ViT/DeiT checkpoint: found neither 'patch_embed.proj.weight' "
                "(timm) nor 'vit.embeddings.patch_embeddings.projection.weight' (Hugging Face)");

  const std::string prefix = hf_prefix(w);
  WeightStore out;
  out.source = w.source;
  out.metadata = w.metadata;
  std::set<std::string> used;
  auto take = [&](const std::string& from, const std::string& to) {
    if (!w.has(from)) return;
    out.tensors[to] = w.at(from);
    used.insert(from);
  };
  for (const NameRow& r : kHfTopNames) take(replace_prefix(r.hf, prefix), r.timm);

  std::set<int> layers;
  for (const auto& [name, t] : w.tensors)
    if (auto layer = hf_layer_index(name, prefix)) layers.insert(*layer);
  for (int i : layers) {
    const std::string hf = prefix + ".encoder.layer." + std::to_string(i) + ".";
    const std::string timm = "blocks." + std::to_string(i) + ".";
    for (const NameRow& r : kHfBlockNames) take(hf + r.hf, timm + r.timm);
    for (const char* kind : {"weight", "bias"}) {
      std::vector<const Tensor*> qkv;
      for (const char* part : {"query", "key", "value"}) {
        const std::string name = hf + "attention.attention." + part + "." + kind;
        if (w.has(name)) {
          qkv.push_back(&w.at(name));
          used.insert(name);
        }
      }
      if (qkv.size() == 3)
        out.tensors[timm + "attn.qkv." + kind] = concat_rows(qkv, hf + "attention.attention.*." + kind);
      else if (!qkv.empty() || std::string(kind) == "weight")
        throw Error(w.source + ": layer " + std::to_string(i) + " needs query, key and value " +
                    kind + " tensors ('" + hf + "attention.attention.{query,key,value}." + kind + "')");
    }
  }
  for (const auto& [name, t] : w.tensors) {
    if (used.count(name)) continue;
    if (name.rfind(prefix + ".pooler.", 0) == 0) continue;  // ViTModel pooler: unused by the classifier
    throw Error(w.source + ": unexpected tensor '" + name + "' " + shape_str(t.shape()) +
                " in a Hugging Face ViT checkpoint");
  }
  return out;
}

}  // namespace shiftadd
