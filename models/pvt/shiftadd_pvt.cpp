#include "models/pvt/shiftadd_pvt.h"

#include <cmath>
#include <set>

#include "loaders/safetensors.h"
#include "models/common/builder_support.h"
#include "shiftadd/error.h"

namespace shiftadd {

namespace {
std::string S(int64_t v) { return std::to_string(v); }
std::string block(int64_t i, int64_t j) { return "block" + S(i) + "." + S(j) + "."; }
bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}
}  // namespace

bool looks_like_shiftadd_pvt(const WeightStore& w) {
  if (!looks_like_pvt_v2(w)) return false;
  for (const auto& [name, t] : w.tensors)
    if (name.find(".attn.to_qk.") != std::string::npos ||
        name.find(".attn.qk_quant.") != std::string::npos ||
        name.find(".experts.1.shift") != std::string::npos || ends_with(name, ".shift") ||
        name.find(".attn.qkv.") != std::string::npos)
      return true;
  return false;
}

Graph build_shiftadd_pvt(const PvtConfig& c, const WeightStore& w) {
  WeightTaker weights(w);
  auto W = [&](const std::string& name, const Shape& shape) { return weights.take(name, shape); };
  // Optional bias: absent means none.
  auto Bopt = [&](const std::string& name, int64_t n) -> Tensor {
    return w.has(name) ? W(name, {n}) : Tensor();
  };

  Graph g;
  // A projection `p` (in -> out): plain Linear, MoE or shift layer; `residual` >= 0 adds it.
  auto lin = [&](int x, const std::string& p, int64_t in, int64_t out, int residual) -> int {
    int y;
    if (w.has(p + ".gate.gate.weight")) {
      const std::string e0 = p + ".experts.0.", e1 = p + ".experts.1.";
      return g.moe_linear(x, W(p + ".gate.gate.weight", {2, in}), Bopt(p + ".gate.gate.bias", 2),
                          W(e0 + "weight", {out, in}), Bopt(e0 + "bias", out), W(e1 + "shift", {out, in}),
                          W(e1 + "sign", {out, in}), Bopt(e1 + "bias", out), p, residual);
    } else if (w.has(p + ".shift")) {
      y = g.shift_linear(x, W(p + ".shift", {out, in}), W(p + ".sign", {out, in}), Bopt(p + ".bias", out), p);
    } else {
      return g.linear(x, W(p + ".weight", {out, in}), Bopt(p + ".bias", out), p, false, residual);
    }
    return residual >= 0 ? g.add(residual, y, 1.0f, p + ".residual") : y;
  };

  int x = g.input({c.in_chans, c.image_size, c.image_size});
  int64_t cin = c.in_chans, grid = c.image_size;
  for (size_t si = 0; si < c.stages.size(); ++si) {
    const PvtStage& s = c.stages[si];
    const int64_t C = s.dim, F = s.mlp_hidden, H = s.heads, d = C / s.heads;
    const int64_t i = static_cast<int64_t>(si + 1);
    const std::string pe = "patch_embed" + S(i) + ".";
    Tensor pw = W(pe + "proj.weight", {C, cin, s.patch, s.patch}), pb = W(pe + "proj.bias", {C});
    x = si == 0 ? g.conv2d(x, pw, pb, s.stride, s.patch / 2, pe + "proj")
                : g.conv2d_tokens(x, grid, grid, pw, pb, s.stride, s.patch / 2, pe + "proj");
    grid = s.grid;
    x = g.layernorm(x, W(pe + "norm.weight", {C}), W(pe + "norm.bias", {C}), c.embed_eps, pe + "norm");

    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    for (int64_t j = 0; j < s.depth; ++j) {
      const std::string b = block(i, j), a = b + "attn.";
      int h = g.layernorm(x, W(b + "norm1.weight", {C}), W(b + "norm1.bias", {C}), c.eps, b + "norm1");
      auto has_proj = [&](const std::string& p) {
        return w.has(p + ".weight") || w.has(p + ".gate.gate.weight") || w.has(p + ".shift");
      };
      if (has_proj(a + "to_qk")) {  // LinAngular + KSH
        const int qk = lin(h, a + "to_qk", C, C, -1);
        const int v = lin(h, a + "to_v", C, C, -1);
        const std::string k = a + "qk_quant.ksh.";
        const Tensor& A = w.has(k + "A") ? w.at(k + "A") : W(k + "A", {H, 16, 25});
        if (A.ndim() != 3)
          throw Error(w.source + ": tensor '" + k + "A' has shape " + shape_str(A.shape()) +
                      ", expected [heads, nbits, m]");
        const int64_t nbits = A.dim(1), m = A.dim(2);
        const int z = g.ksh_attention(qk, v, H, W(k + "anchor", {1, H, m, d}), W(k + "mvec", {1, H, 1, m}),
                                      W(k + "A", {H, nbits, m}), W(a + "dconv.weight", {H, 1, 9, 1}), a + "ksh");
        if (w.has(a + "qk_quant.projection_matrix")) weights.skip(a + "qk_quant.projection_matrix");
        x = lin(z, a + "proj", C, C, x);
      } else if (has_proj(a + "qkv")) {  // softmax MSA with fused q|k|v (stage 4)
        const int qkv = lin(h, a + "qkv", C, 3 * C, -1);
        h = g.attention(qkv, H, scale, a.substr(0, a.size() - 1));
        x = lin(h, a + "proj", C, C, x);
      } else {  // dense spatial-reduction attention as in PVTv2
        const int q = lin(h, a + "q", C, C, -1);
        int kv_in = h;
        if (s.sr_ratio > 1) {
          kv_in = g.conv2d_tokens(h, grid, grid, W(a + "sr.weight", {C, C, s.sr_ratio, s.sr_ratio}),
                                  W(a + "sr.bias", {C}), s.sr_ratio, 0, a + "sr");
          kv_in = g.layernorm(kv_in, W(a + "norm.weight", {C}), W(a + "norm.bias", {C}), c.embed_eps,
                              a + "norm");
        }
        const int kv = lin(kv_in, a + "kv", C, 2 * C, -1);
        h = g.attention(q, kv, H, scale, a.substr(0, a.size() - 1));
        x = lin(h, a + "proj", C, C, x);
      }
      h = g.layernorm(x, W(b + "norm2.weight", {C}), W(b + "norm2.bias", {C}), c.eps, b + "norm2");
      h = lin(h, b + "mlp.fc1", C, F, -1);
      h = g.dwconv3x3(h, grid, grid, W(b + "mlp.dwconv.dwconv.weight", {F, 1, 3, 3}),
                      W(b + "mlp.dwconv.dwconv.bias", {F}), true, b + "mlp.dwconv");
      x = lin(h, b + "mlp.fc2", F, C, x);
    }
    const std::string n = "norm" + S(i);
    x = g.layernorm(x, W(n + ".weight", {C}), W(n + ".bias", {C}), c.eps, n);
    cin = C;
  }
  x = g.mean_tokens(x, "pool");
  const int64_t K = c.num_classes;
  x = g.linear(x, W("head.weight", {K, cin}), W("head.bias", {K}), "head");
  g.set_output(x);

  weights.check_all_used("a ShiftAddViT PVTv2 with " + S(static_cast<int64_t>(c.stages.size())) + " stages");
  return g;
}

}  // namespace shiftadd
