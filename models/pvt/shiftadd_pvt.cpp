#include "models/pvt/shiftadd_pvt.h"

#include <cmath>

#include "models/common/builder_support.h"
#include "shiftadd/error.h"

namespace shiftadd {

namespace {
bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}
}  // namespace

bool has_shiftadd_pvt_tensors(const WeightStore& w) {
  for (const auto& [name, t] : w.tensors)
    if (name.find(".attn.to_qk.") != std::string::npos ||
        name.find(".attn.qk_quant.") != std::string::npos ||
        name.find(".experts.1.shift") != std::string::npos || ends_with(name, ".shift") ||
        name.find(".attn.qkv.") != std::string::npos)
      return true;
  return false;
}

bool looks_like_shiftadd_pvt(const WeightStore& w) { return looks_like_pvt_v2(w) && has_shiftadd_pvt_tensors(w); }

Graph build_shiftadd_pvt(const PvtConfig& c, const WeightStore& w) {
  WeightTaker weights(w);
  auto W = [&](const std::string& name, const Shape& shape) { return weights.take(name, shape); };
  // Optional bias: absent means none.
  auto Bopt = [&](const std::string& name, int64_t n) -> Tensor {
    return w.has(name) ? W(name, {n}) : Tensor();
  };
  PvtLayers layers;
  // A projection `p` (in -> out): plain Linear, MoE or shift layer; `residual` >= 0 adds it.
  layers.linear = [&](Graph& g, int x, const std::string& p, int64_t in, int64_t out, int residual) -> int {
    if (w.has(p + ".gate.gate.weight")) {
      const std::string e0 = p + ".experts.0.", e1 = p + ".experts.1.";
      return g.moe_linear(x, W(p + ".gate.gate.weight", {2, in}), Bopt(p + ".gate.gate.bias", 2),
                          W(e0 + "weight", {out, in}), Bopt(e0 + "bias", out), W(e1 + "shift", {out, in}),
                          W(e1 + "sign", {out, in}), Bopt(e1 + "bias", out), p, residual);
    }
    if (w.has(p + ".shift")) {
      const int y =
          g.shift_linear(x, W(p + ".shift", {out, in}), W(p + ".sign", {out, in}), Bopt(p + ".bias", out), p);
      return residual >= 0 ? g.add(residual, y, 1.0f, p + ".residual") : y;
    }
    return g.linear(x, W(p + ".weight", {out, in}), Bopt(p + ".bias", out), p, false, residual);
  };
  auto has_proj = [&](const std::string& p) {
    return w.has(p + ".weight") || w.has(p + ".gate.gate.weight") || w.has(p + ".shift");
  };
  layers.attention = [&](Graph& g, const PvtStage& s, int64_t grid, const std::string& b, int h, int x) -> int {
    const int64_t C = s.dim, H = s.heads, d = C / s.heads;
    const std::string a = b + "attn.";
    if (has_proj(a + "to_qk")) {  // LinAngular + KSH
      const int qk = layers.linear(g, h, a + "to_qk", C, C, -1);
      const int v = layers.linear(g, h, a + "to_v", C, C, -1);
      const std::string k = a + "qk_quant.ksh.";
      const Tensor& A = w.has(k + "A") ? w.at(k + "A") : W(k + "A", {H, 16, 25});
      if (A.ndim() != 3)
        throw Error(w.source + ": tensor '" + k + "A' has shape " + shape_str(A.shape()) +
                    ", expected [heads, nbits, m]");
      const int64_t nbits = A.dim(1), m = A.dim(2);
      const int z = g.ksh_attention(qk, v, H, W(k + "anchor", {1, H, m, d}), W(k + "mvec", {1, H, 1, m}),
                                    W(k + "A", {H, nbits, m}), W(a + "dconv.weight", {H, 1, 9, 1}), a + "ksh");
      if (w.has(a + "qk_quant.projection_matrix")) weights.skip(a + "qk_quant.projection_matrix");
      return layers.linear(g, z, a + "proj", C, C, x);
    }
    if (has_proj(a + "qkv")) {  // softmax MSA with fused q|k|v (stage 4)
      const int qkv = layers.linear(g, h, a + "qkv", C, 3 * C, -1);
      h = g.attention(qkv, H, 1.0f / std::sqrt(static_cast<float>(d)), b + "attn");
      return layers.linear(g, h, a + "proj", C, C, x);
    }
    return pvt_sr_attention(g, weights, c, s, grid, b, h, x, layers.linear);  // dense, as in PVTv2
  };
  return build_pvt(c, weights, layers, "a ShiftAddViT PVTv2");
}

}  // namespace shiftadd
