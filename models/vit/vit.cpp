#include "models/vit/vit.h"

#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "loaders/safetensors.h"
#include "models/common/builder_support.h"
#include "core/log.h"
#include "shiftadd/error.h"

namespace shiftadd {

namespace {

using json = nlohmann::json;

const Tensor& expect(const WeightStore& w, const std::string& name, int ndim) {
  const Tensor& t = w.at(name);
  if (t.ndim() != ndim)
    throw Error(w.source + ": tensor '" + name + "' has shape " + shape_str(t.shape()) +
                ", expected " + std::to_string(ndim) + " dimensions");
  return t;
}

// Looks a key up at the top level of a config, then in timm's nested dicts.
// A per-channel list from a config: one value is replicated; three values for a one-channel
// model (HF processors always write RGB statistics) are averaged.
std::vector<float> float_list(const json& v, size_t channels, const char* key) {
  std::vector<float> out;
  if (v.is_number()) out.assign(channels, v.get<float>());
  if (v.is_array())
    for (const auto& x : v) {
      if (!x.is_number()) throw Error(std::string("config: '") + key + "' must hold numbers");
      out.push_back(x.get<float>());
    }
  if (out.size() == 1 && channels > 1) out.assign(channels, out[0]);
  if (out.size() == 3 && channels == 1) out = {(out[0] + out[1] + out[2]) / 3.0f};
  if (out.size() != channels)
    throw Error(std::string("config: '") + key + "' has " + std::to_string(out.size()) +
                " values for a " + std::to_string(channels) + "-channel model");
  return out;
}

// An integer size from an HF processor config: an int, or {"height"/"shortest_edge": n}.
int64_t hf_size(const json& j, const char* key, int64_t fallback) {
  if (!j.contains(key)) return fallback;
  const json& s = j[key];
  if (s.is_number_integer()) return s.get<int64_t>();
  if (s.is_object())
    for (const char* k : {"shortest_edge", "height"})
      if (s.contains(k) && s[k].is_number_integer()) return s[k].get<int64_t>();
  return fallback;
}

// Preprocessing: timm pretrained_cfg, then HF preprocessor_config.json, else DeiT defaults.
PreprocessConfig infer_preprocess(const VitConfig& c, const json* cfg, const json* pre) {
  PreprocessConfig p;
  p.channels = static_cast<int>(c.in_chans);
  p.size = static_cast<int>(c.image_size);
  p.crop_pct = 0.875f;
  const size_t ch = static_cast<size_t>(c.in_chans);
  if (p.mean.size() != ch) p.mean.assign(ch, p.mean[0]);
  if (p.std.size() != ch) p.std.assign(ch, p.std[0]);
  const json* pc = cfg && cfg->is_object() && cfg->contains("pretrained_cfg") ? &(*cfg)["pretrained_cfg"] : nullptr;
  if (pc && pc->is_object()) {
    if (pc->contains("crop_pct") && (*pc)["crop_pct"].is_number()) p.crop_pct = (*pc)["crop_pct"].get<float>();
    if (pc->contains("interpolation") && (*pc)["interpolation"].is_string())
      p.interpolation = (*pc)["interpolation"].get<std::string>();
    if (pc->contains("mean")) p.mean = float_list((*pc)["mean"], ch, "mean");
    if (pc->contains("std")) p.std = float_list((*pc)["std"], ch, "std");
  }
  // shiftadd files carry the source model's whole pipeline (docs/format.md), whatever its origin.
  if (read_shiftadd_preprocess(cfg, p)) return p;
  if (pre && pre->is_object()) {
    // Hugging Face image processors resize to a fixed square (default bilinear), then
    // optionally center-crop to crop_size.
    const json& j = *pre;
    if (j.contains("image_mean")) p.mean = float_list(j["image_mean"], ch, "image_mean");
    if (j.contains("image_std")) p.std = float_list(j["image_std"], ch, "image_std");
    p.interpolation = "bilinear";
    if (j.contains("resample") && j["resample"].is_number_integer()) {
      const int r = j["resample"].get<int>();  // PIL codes
      if (r != 0 && r != 2 && r != 3)
        logger().warn("preprocessor_config.json: resample {} (PIL code) is not supported; using bicubic", r);
      p.interpolation = r == 0 ? "nearest" : r == 2 ? "bilinear" : "bicubic";
    }
    p.resize_exact = true;
    p.resize_exact_size = static_cast<int>(hf_size(j, "size", c.image_size));
    const bool crop = j.contains("do_center_crop") && j["do_center_crop"].is_boolean() &&
                      j["do_center_crop"].get<bool>();
    const int64_t crop_size = crop ? hf_size(j, "crop_size", c.image_size) : p.resize_exact_size;
    if (crop_size != c.image_size)
      throw Error("preprocessor_config.json: the processor produces " + std::to_string(crop_size) +
                  " x " + std::to_string(crop_size) + " images, but the model takes " +
                  std::to_string(c.image_size) + " x " + std::to_string(c.image_size));
  }
  return p;
}

// timm hub configs name the architecture but not the head count. Every timm ViT/DeiT size has
// head dim 64 except these (ViT-Huge: 1280 / 16 heads, ViT-Giant/gigantic: 16 heads).
int64_t heads_from_architecture(const json* cfg) {
  const json* arch = config_find(cfg, "architecture");
  if (!arch || !arch->is_string()) return 0;
  const std::string a = arch->get<std::string>();
  for (const char* size : {"_huge_", "_giant_", "_gigantic_"})
    if (a.find(size) != std::string::npos) return 16;
  return 0;
}

// The head count: config.json (num_heads, num_attention_heads), the file's __metadata__
// (num_heads), the KSH tensors of a converted file ([heads, bits, anchors]) or a timm
// architecture name. The weights of a plain ViT fit any divisor of dim, so there is no guess.
int64_t heads_of(const WeightStore& w, const json* cfg, int64_t dim, std::string* source) {
  if (int64_t h = config_int(cfg, {"num_heads", "num_attention_heads"}, 0); h > 0) {
    *source = "config";
    return h;
  }
  if (auto it = w.metadata.find("num_heads"); it != w.metadata.end()) {
    int64_t h = 0;
    const auto [end, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), h);
    if (ec != std::errc() || end != it->second.data() + it->second.size() || h <= 0)
      throw Error(w.source + ": __metadata__ num_heads '" + it->second + "' is not a positive integer");
    *source = "file metadata";
    return h;
  }
  for (int64_t i = 0; w.has("blocks." + std::to_string(i) + ".norm1.weight"); ++i) {
    const std::string ksh = "blocks." + std::to_string(i) + ".attn.ksh.A";
    if (w.has(ksh) && w.at(ksh).ndim() == 3 && w.at(ksh).dim(0) > 0) {
      *source = "KSH tensors";
      return w.at(ksh).dim(0);
    }
  }
  if (int64_t h = heads_from_architecture(cfg); h > 0) {
    *source = "architecture name";
    return h;
  }
  if (dim == 1) {  // the one count that is not a choice
    *source = "dim 1";
    return 1;
  }
  throw Error(w.source + ": cannot tell the number of attention heads: the weights fit any divisor of dim " +
              std::to_string(dim) + ". Put a config.json with {\"num_heads\": N} beside the model (Hugging "
              "Face: \"num_attention_heads\"), or store \"num_heads\" in the safetensors __metadata__");
}

}  // namespace

VitConfig infer_vit_config(const WeightStore& w, const json* cfg, const json* pre) {
  VitConfig c;
  const Tensor& pw = expect(w, "patch_embed.proj.weight", 4);
  c.dim = pw.dim(0);
  c.in_chans = pw.dim(1);
  c.patch_size = pw.dim(2);
  if (pw.dim(3) != c.patch_size)
    throw Error(w.source + ": 'patch_embed.proj.weight' " + shape_str(pw.shape()) +
                " has a non-square kernel; only square patches are supported");
  if (c.dim <= 0 || c.in_chans <= 0 || c.patch_size <= 0)
    throw Error(w.source + ": 'patch_embed.proj.weight' " + shape_str(pw.shape()) +
                " has a zero dimension");
  c.distilled = w.has("dist_token");
  c.dist_head = c.distilled && w.has("head_dist.weight");
  c.prefix_tokens = c.distilled ? 2 : 1;
  const Tensor& pos = expect(w, "pos_embed", 3);
  const int64_t patches = pos.dim(1) - c.prefix_tokens;
  const int64_t grid = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(patches))));
  if (patches <= 0 || grid * grid != patches || pos.dim(2) != c.dim)
    throw Error(w.source + ": 'pos_embed' " + shape_str(pos.shape()) + " is not [1, " +
                std::to_string(c.prefix_tokens) + " + g*g, " + std::to_string(c.dim) +
                "] for a square grid of patches");
  c.image_size = grid * c.patch_size;
  const int64_t cfg_size = config_int(cfg, {"image_size", "img_size"}, c.image_size);
  if (cfg_size != c.image_size)
    throw Error(w.source + ": config image size " + std::to_string(cfg_size) +
                " disagrees with 'pos_embed' " + shape_str(pos.shape()) + " (image size " +
                std::to_string(c.image_size) + ")");

  while (w.has("blocks." + std::to_string(c.depth) + ".norm1.weight")) ++c.depth;
  if (c.depth == 0) throw Error(w.source + ": no transformer blocks ('blocks.0.norm1.weight' missing)");
  c.mlp_hidden = 0;
  for (const char* t : {".weight", ".codes", ".experts.0.weight"})
    if (w.has(std::string("blocks.0.mlp.fc1") + t)) c.mlp_hidden = expect(w, std::string("blocks.0.mlp.fc1") + t, 2).dim(0);
  if (c.mlp_hidden == 0) expect(w, "blocks.0.mlp.fc1.weight", 2);  // names the missing tensor
  const Tensor& head = expect(w, "head.weight", 2);
  c.num_classes = head.dim(0);
  if (c.mlp_hidden <= 0 || c.num_classes <= 0)
    throw Error(w.source + ": 'blocks.0.mlp.fc1.weight' and 'head.weight' must have non-zero sizes");
  // Checked before the class count sizes anything (labels), as the builder would check it later.
  if (head.dim(1) != c.dim)
    throw Error(w.source + ": 'head.weight' " + shape_str(head.shape()) + " does not read the embedding dim " +
                std::to_string(c.dim) + "; expected [classes, " + std::to_string(c.dim) + "]");
  if (const json* act = config_find(cfg, "hidden_act"); act && act->is_string() && act->get<std::string>() != "gelu")
    throw Error(w.source + ": config hidden_act '" + act->get<std::string>() +
                "' is not supported (only the exact erf GELU, \"gelu\")");

  c.heads = heads_of(w, cfg, c.dim, &c.heads_source);
  if (c.dim % c.heads != 0)
    throw Error(w.source + ": dim " + std::to_string(c.dim) + " is not divisible by " +
                std::to_string(c.heads) + " heads");
  if (const json* eps = config_find(cfg, "layer_norm_eps"); eps && eps->is_number()) c.eps = eps->get<float>();
  c.labels = config_labels(cfg, c.num_classes);
  c.preprocess = infer_preprocess(c, cfg, pre);
  return c;
}

Graph build_vit(const VitConfig& c, const WeightStore& w) {
  WeightTaker weights(w);
  auto W = [&](const std::string& name, const Shape& shape) { return weights.take(name, shape); };
  const int64_t C = c.dim, F = c.mlp_hidden;

  Graph g;
  int x = g.input({c.in_chans, c.image_size, c.image_size});
  x = g.conv2d(x, W("patch_embed.proj.weight", {C, c.in_chans, c.patch_size, c.patch_size}),
               W("patch_embed.proj.bias", {C}), c.patch_size, 0, "patch_embed.proj");

  // cls (and dist) tokens become one [P, C] prefix.
  Tensor prefix = W("cls_token", {1, 1, C});
  if (c.distilled) {
    Tensor both = Tensor::empty(DType::F32, {2, C});
    std::copy_n(prefix.data<float>(), C, both.data<float>());
    std::copy_n(W("dist_token", {1, 1, C}).data<float>(), C, both.data<float>() + C);
    prefix = both;
  }
  x = g.embed_tokens(x, prefix, W("pos_embed", {1, c.tokens(), C}), "embed");

  const float scale = 1.0f / std::sqrt(static_cast<float>(C / c.heads));
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    int h = g.layernorm(x, W(b + "norm1.weight", {C}), W(b + "norm1.bias", {C}), c.eps, b + "norm1");
    // timm models built with qkv_bias=False have no qkv bias.
    h = converted_linear(g, weights, c.layer_kinds, b + "attn.qkv", h, C, 3 * C, false, -1, /*bias_optional=*/true);
    if (w.has(b + "attn.ksh.A")) {
      // Hamming-space attention of a converted block (docs/format.md): q and k hashed apart.
      const Tensor& A = w.at(b + "attn.ksh.A");
      if (A.ndim() != 3 || A.dim(0) != c.heads)
        throw Error(w.source + ": tensor '" + b + "attn.ksh.A' has shape " + shape_str(A.shape()) +
                    ", expected [" + std::to_string(c.heads) + ", bits, anchors]");
      const int64_t nbits = A.dim(1), m = A.dim(2), d = C / c.heads;
      h = g.ksh_attention_qkv(h, c.heads, W(b + "attn.ksh.anchor", {c.heads, m, d}),
                              W(b + "attn.ksh.mvec", {c.heads, m}), W(b + "attn.ksh.A", {c.heads, nbits, m}),
                              W(b + "attn.dconv.weight", {c.heads, 9}), b + "attn");
    } else {
      h = g.attention(h, c.heads, scale, b + "attn");
    }
    x = converted_linear(g, weights, c.layer_kinds, b + "attn.proj", h, C, C, false, x);
    h = g.layernorm(x, W(b + "norm2.weight", {C}), W(b + "norm2.bias", {C}), c.eps, b + "norm2");
    h = converted_linear(g, weights, c.layer_kinds, b + "mlp.fc1", h, C, F, true);
    x = converted_linear(g, weights, c.layer_kinds, b + "mlp.fc2", h, F, C, false, x);
  }
  // Only the prefix tokens reach the head, and LayerNorm is per token: normalise just those.
  x = g.take_tokens(x, 0, c.prefix_tokens, "prefix_tokens");
  x = g.layernorm(x, W("norm.weight", {C}), W("norm.bias", {C}), c.eps, "norm");
  const int64_t K = c.num_classes;
  if (c.dist_head) {
    const int cls = g.take_tokens(x, 0, 1, "cls");
    const int dist = g.take_tokens(x, 1, 1, "dist");
    const int a = g.linear(cls, W("head.weight", {K, C}), W("head.bias", {K}), "head");
    const int d = g.linear(dist, W("head_dist.weight", {K, C}), W("head_dist.bias", {K}), "head_dist");
    x = g.add(a, d, 0.5f, "head_mean");
  } else {
    // HF DeiTForImageClassification keeps the distillation token but classifies token 0 only.
    if (c.distilled) x = g.take_tokens(x, 0, 1, "cls");
    x = g.linear(x, W("head.weight", {K, C}), W("head.bias", {K}), "head");
  }
  g.set_output(x);

  weights.check_all_used("a ViT/DeiT with depth " + std::to_string(c.depth) +
                         (c.distilled ? " (distilled)" : ""));
  return g;
}

}  // namespace shiftadd
