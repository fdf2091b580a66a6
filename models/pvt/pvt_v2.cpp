#include "models/pvt/pvt_v2.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "loaders/safetensors.h"
#include "models/common/builder_support.h"
#include "shiftadd/error.h"

namespace shiftadd {

namespace {

using json = nlohmann::json;

std::string S(int64_t v) { return std::to_string(v); }

const Tensor& expect(const WeightStore& w, const std::string& name, int ndim) {
  if (!w.has(name)) throw Error(w.source + ": PVTv2 tensor '" + name + "' is missing");
  const Tensor& t = w.at(name);
  if (t.ndim() != ndim)
    throw Error(w.source + ": tensor '" + name + "' has shape " + shape_str(t.shape()) +
                ", expected " + S(ndim) + " dimensions");
  return t;
}

std::string block(int64_t i, int64_t j) { return "block" + S(i) + "." + S(j) + "."; }

}  // namespace

int64_t PvtConfig::total_depth() const {
  int64_t d = 0;
  for (const PvtStage& s : stages) d += s.depth;
  return d;
}

bool looks_like_pvt_v2(const WeightStore& w) {
  return w.has("patch_embed1.proj.weight") && w.has("block1.0.norm1.weight");
}

bool looks_like_timm_pvt_v2(const WeightStore& w) {
  return w.has("patch_embed.proj.weight") && w.has("stages.0.blocks.0.norm1.weight");
}

WeightStore timm_pvt_v2_to_upstream(const WeightStore& w) {
  WeightStore out;
  out.source = w.source;
  out.metadata = w.metadata;
  auto starts = [](const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; };
  for (const auto& [name, t] : w.tensors) {
    std::string n = name;
    if (starts(n, "patch_embed.")) {
      n = "patch_embed1." + n.substr(12);
    } else if (starts(n, "stages.")) {
      const size_t dot = n.find('.', 7);
      const std::string stage = n.substr(7, dot - 7);
      const std::string rest = dot == std::string::npos ? "" : n.substr(dot + 1);
      int i = -1;
      try {
        i = std::stoi(stage);
      } catch (const std::exception&) {
      }
      if (i >= 0) {
        const std::string s1 = std::to_string(i + 1);
        if (starts(rest, "downsample.")) n = "patch_embed" + s1 + "." + rest.substr(11);
        else if (starts(rest, "norm.")) n = "norm" + s1 + "." + rest.substr(5);
        else if (starts(rest, "blocks.")) {
          n = "block" + s1 + "." + rest.substr(7);
          const size_t dw = n.find(".mlp.dwconv.");
          if (dw != std::string::npos) n.insert(dw + 12, "dwconv.");
        }
      }
    }
    out.tensors[n] = t;
  }
  return out;
}

PvtConfig infer_pvt_v2_config(const WeightStore& w, const json* cfg) {
  PvtConfig c;
  if (const json* v = config_find(cfg, "img_size"); v && v->is_number_integer()) c.image_size = v->get<int64_t>();
  else if (const json* v2 = config_find(cfg, "image_size"); v2 && v2->is_number_integer()) c.image_size = v2->get<int64_t>();
  if (c.image_size <= 0) throw Error(w.source + ": config image size must be positive");

  for (int64_t i = 1; w.has("patch_embed" + S(i) + ".proj.weight"); ++i) {
    const std::string pe = "patch_embed" + S(i) + ".proj.weight";
    const Tensor& pw = expect(w, pe, 4);
    PvtStage s;
    s.dim = pw.dim(0);
    s.patch = pw.dim(2);
    if (pw.dim(3) != s.patch || s.patch < 1 || s.dim < 1)
      throw Error(w.source + ": '" + pe + "' " + shape_str(pw.shape()) + " is not a square kernel");
    const int64_t cin = c.stages.empty() ? pw.dim(1) : c.stages.back().dim;
    if (c.stages.empty()) c.in_chans = cin;
    if (pw.dim(1) != cin)
      throw Error(w.source + ": '" + pe + "' " + shape_str(pw.shape()) + " expects " + S(pw.dim(1)) +
                  " input channels but stage " + S(i - 1) + " has dim " + S(cin));
    // OverlapPatchEmbed: stride 4 for the stem, 2 later; padding patch / 2.
    s.stride = c.stages.empty() ? 4 : 2;
    const int64_t prev = c.stages.empty() ? c.image_size : c.stages.back().grid;
    s.grid = (prev + 2 * (s.patch / 2) - s.patch) / s.stride + 1;
    if (s.grid < 1)
      throw Error(w.source + ": image size " + S(c.image_size) + " is too small for stage " + S(i));
    while (w.has(block(i, s.depth) + "norm1.weight")) ++s.depth;
    if (s.depth == 0)
      throw Error(w.source + ": stage " + S(i) + " has no blocks ('" + block(i, 0) + "norm1.weight' missing)");
    const std::string sr = block(i, 0) + "attn.sr.weight";
    if (w.has(sr)) {
      const Tensor& t = expect(w, sr, 4);
      s.sr_ratio = t.dim(2);
      if (t.dim(3) != s.sr_ratio || s.sr_ratio < 2)
        throw Error(w.source + ": '" + sr + "' " + shape_str(t.shape()) + " is not a square sr conv");
      if (s.grid < s.sr_ratio)
        throw Error(w.source + ": image size " + S(c.image_size) + " gives a " + S(s.grid) + "x" +
                    S(s.grid) + " grid in stage " + S(i) + ", smaller than its sr ratio " + S(s.sr_ratio));
    }
    // fc1 is a plain Linear, or (ShiftAddViT) a MoE layer or a shift layer.
    std::string fc1 = block(i, 0) + "mlp.fc1.weight";
    for (const char* alt : {"mlp.fc1.experts.0.weight", "mlp.fc1.shift", "mlp.fc1.codes"})
      if (!w.has(fc1) && w.has(block(i, 0) + alt)) fc1 = block(i, 0) + alt;
    s.mlp_hidden = expect(w, fc1, 2).dim(0);
    c.stages.push_back(s);
  }
  if (c.stages.empty()) throw Error(w.source + ": no PVTv2 stages ('patch_embed1.proj.weight' missing)");
  c.num_classes = expect(w, "head.weight", 2).dim(0);

  // Heads cannot be read off the weights.
  const size_t ns = c.stages.size();
  std::vector<int64_t> heads;
  if (const json* h = config_find(cfg, "num_heads"); h && (h->is_array() || h->is_number_integer())) {
    if (h->is_number_integer()) heads.assign(ns, h->get<int64_t>());
    else
      for (const auto& v : *h) {
        if (!v.is_number_integer()) throw Error(w.source + ": config num_heads must hold integers");
        heads.push_back(v.get<int64_t>());
      }
    if (heads.size() != ns)
      throw Error(w.source + ": config num_heads has " + S(static_cast<int64_t>(heads.size())) +
                  " values for " + S(static_cast<int64_t>(ns)) + " stages");
    c.heads_source = "config";
  } else {
    heads = {1, 2, 5, 8};
    heads.resize(ns, 8);
    c.heads_source = "PVTv2 convention [1, 2, 5, 8]";
  }
  // ShiftAddViT stages with KSH attention do carry their head count: ksh.A is [H, bits, m].
  for (size_t i = 0; i < ns; ++i) {
    const std::string a = "block" + S(static_cast<int64_t>(i + 1)) + ".0.attn.qk_quant.ksh.A";
    const auto it = w.tensors.find(a);
    if (it == w.tensors.end() || it->second.ndim() != 3) continue;
    const int64_t h = it->second.dim(0);
    if (c.heads_source == "config" && heads[i] != h)
      throw Error(w.source + ": config num_heads says " + S(heads[i]) + " heads for stage " +
                  S(static_cast<int64_t>(i + 1)) + " but '" + a + "' has " + S(h));
    if (heads[i] != h && c.heads_source != "config") c.heads_source += " (stages with KSH: from ksh.A)";
    heads[i] = h;
  }
  for (size_t i = 0; i < ns; ++i) {
    c.stages[i].heads = heads[i];
    if (heads[i] <= 0 || c.stages[i].dim % heads[i] != 0)
      throw Error(w.source + ": stage " + S(static_cast<int64_t>(i + 1)) + " dim " + S(c.stages[i].dim) +
                  " is not divisible by " + S(heads[i]) + " heads (" + c.heads_source +
                  "); put \"num_heads\": [...] in config.json");
  }
  c.labels = config_labels(cfg, c.num_classes);
  c.preprocess.channels = static_cast<int>(c.in_chans);
  c.preprocess.size = static_cast<int>(c.image_size);
  c.preprocess.crop_pct = 0.875f;
  if (c.in_chans != 3) {
    c.preprocess.mean.assign(c.in_chans, 0.5f);
    c.preprocess.std.assign(c.in_chans, 0.5f);
  }
  read_shiftadd_preprocess(cfg, c.preprocess);
  return c;
}

int pvt_sr_attention(Graph& g, WeightTaker& weights, const PvtConfig& c, const PvtStage& s, int64_t grid,
                     const std::string& b, int h, int x, const PvtLinear& linear) {
  auto W = [&](const std::string& name, const Shape& shape) { return weights.take(name, shape); };
  const int64_t C = s.dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(C / s.heads));
  const int q = linear(g, h, b + "attn.q", C, C, -1);
  int kv_in = h;
  if (s.sr_ratio > 1) {
    kv_in = g.conv2d_tokens(h, grid, grid, W(b + "attn.sr.weight", {C, C, s.sr_ratio, s.sr_ratio}),
                            W(b + "attn.sr.bias", {C}), s.sr_ratio, 0, b + "attn.sr");
    kv_in = g.layernorm(kv_in, W(b + "attn.norm.weight", {C}), W(b + "attn.norm.bias", {C}), c.embed_eps,
                        b + "attn.norm");
  }
  const int kv = linear(g, kv_in, b + "attn.kv", C, 2 * C, -1);
  h = g.attention(q, kv, s.heads, scale, b + "attn");
  return linear(g, h, b + "attn.proj", C, C, x);
}

Graph build_pvt(const PvtConfig& c, WeightTaker& weights, const PvtLayers& layers, const std::string& what) {
  auto W = [&](const std::string& name, const Shape& shape) { return weights.take(name, shape); };
  Graph g;
  int x = g.input({c.in_chans, c.image_size, c.image_size});
  int64_t cin = c.in_chans, grid = c.image_size;
  for (size_t si = 0; si < c.stages.size(); ++si) {
    const PvtStage& s = c.stages[si];
    const int64_t C = s.dim, F = s.mlp_hidden, i = static_cast<int64_t>(si + 1);
    const std::string pe = "patch_embed" + S(i) + ".";
    Tensor pw = W(pe + "proj.weight", {C, cin, s.patch, s.patch}), pb = W(pe + "proj.bias", {C});
    x = si == 0 ? g.conv2d(x, pw, pb, s.stride, s.patch / 2, pe + "proj")
                : g.conv2d_tokens(x, grid, grid, pw, pb, s.stride, s.patch / 2, pe + "proj");
    grid = s.grid;
    x = g.layernorm(x, W(pe + "norm.weight", {C}), W(pe + "norm.bias", {C}), c.embed_eps, pe + "norm");
    for (int64_t j = 0; j < s.depth; ++j) {
      const std::string b = block(i, j);
      int h = g.layernorm(x, W(b + "norm1.weight", {C}), W(b + "norm1.bias", {C}), c.eps, b + "norm1");
      x = layers.attention ? layers.attention(g, s, grid, b, h, x)
                           : pvt_sr_attention(g, weights, c, s, grid, b, h, x, layers.linear);
      h = g.layernorm(x, W(b + "norm2.weight", {C}), W(b + "norm2.bias", {C}), c.eps, b + "norm2");
      h = layers.linear(g, h, b + "mlp.fc1", C, F, -1);
      h = g.dwconv3x3(h, grid, grid, W(b + "mlp.dwconv.dwconv.weight", {F, 1, 3, 3}),
                      W(b + "mlp.dwconv.dwconv.bias", {F}), true, b + "mlp.dwconv");
      x = layers.linear(g, h, b + "mlp.fc2", F, C, x);
    }
    const std::string n = "norm" + S(i);
    x = g.layernorm(x, W(n + ".weight", {C}), W(n + ".bias", {C}), c.eps, n);
    cin = C;
  }
  x = g.mean_tokens(x, "pool");
  const int64_t K = c.num_classes;
  x = g.linear(x, W("head.weight", {K, cin}), W("head.bias", {K}), "head");
  g.set_output(x);

  weights.check_all_used(what + " with " + S(static_cast<int64_t>(c.stages.size())) + " stages");
  return g;
}

Graph build_pvt_v2(const PvtConfig& c, const WeightStore& w) {
  WeightTaker weights(w);
  PvtLayers layers;
  // Linear layers may be converted (shift / MoE, docs/format.md).
  layers.linear = [&](Graph& g, int x, const std::string& name, int64_t K, int64_t N, int residual) {
    return converted_linear(g, weights, c.layer_kinds, name, x, K, N, false, residual);
  };
  return build_pvt(c, weights, layers, "a dense PVTv2");
}

}  // namespace shiftadd
