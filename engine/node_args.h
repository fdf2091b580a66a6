#pragma once
// Kernel arguments of a graph node: what every backend passes its kernels for one node at one
// batch size. Pointers come from the node's named weight slots (host memory) and the
// NodeBuffers; a device backend swaps the weight pointers for their device copies
// (engine/cuda_backend.cpp). Planning calls these with null buffers (sizes only).
#include <cstddef>
#include <cstdint>

#include "engine/backend.h"
#include "kernels/kernels.h"
#include "kernels/shift_kernels.h"

namespace shiftadd::node_args {

using namespace kernels;

// Rows of the node's input seen as a matrix [rows, last dim].
inline int64_t rows_of(const Graph& g, const Node& n, int64_t batch) {
  const Shape& in = g.sample_shape(n.inputs[0]);
  return batch * shape_numel(in) / in.back();
}

// Elements of the node's output at this batch size.
inline int64_t out_numel(const Graph& g, const Node& n, int64_t batch) {
  return batch * shape_numel(g.sample_shape(n.output));
}

// Whether the node adds a residual input (input 1 of Linear, ShiftLinear, MoeLinear).
inline bool has_residual(const Node& n) { return n.inputs.size() > 1; }

// x W^T + bias over a node's rows (input 0), W [out, in] as stored, with the node's GELU and
// fused residual (input 1): Linear, and MoE's dense expert before its rows are routed.
inline GemmArgs dense_node_args(const Graph& g, const Node& n, const NodeBuffers& b, const Tensor& w,
                                const float* bias) {
  GemmArgs a;
  a.M = rows_of(g, n, b.batch);
  a.K = w.dim(1);
  a.N = w.dim(0);
  a.A = b.in[0];
  a.lda = a.K;
  a.B = w.data<float>();
  a.ldb = a.K;
  a.b_is_nk = true;
  a.C = b.out;
  a.ldc = a.N;
  a.epi.bias = bias;
  a.epi.gelu = n.p.gelu;
  if (has_residual(n)) {
    a.epi.residual = b.in[1];
    a.epi.ldr = a.N;
  }
  return a;
}

inline GemmArgs linear_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  return dense_node_args(g, n, b, n.w(LinearW::Weight), n.f32_or_null(LinearW::Bias));
}

inline AttentionArgs attention_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  AttentionArgs a;
  // Planning calls this without buffers (null); offsetting a null pointer is UB, so k and v
  // stay null then.
  auto at = [](const float* p, int64_t offset) { return p ? p + offset : p; };
  a.B = b.batch;
  a.H = n.p.heads;
  a.scale = n.p.scale;
  int64_t C = 0;
  if (n.inputs.size() == 2) {  // q [Nq, C], k|v [Nkv, 2C]
    const Shape& sq = g.sample_shape(n.inputs[0]);
    const Shape& skv = g.sample_shape(n.inputs[1]);
    C = sq[1];
    a.Nq = sq[0];
    a.Nkv = skv[0];
    a.q = b.in[0];
    a.q_ld = C;
    a.q_bstride = a.Nq * C;
    a.k = b.in[1];
    a.v = at(b.in[1], C);
    a.k_ld = a.v_ld = 2 * C;
    a.k_bstride = a.v_bstride = a.Nkv * 2 * C;
  } else {  // q|k|v [N, 3C]
    const Shape& s = g.sample_shape(n.inputs[0]);
    const int64_t N = s[0];
    C = s[1] / 3;
    a.Nq = a.Nkv = N;
    a.q = b.in[0];
    a.k = at(b.in[0], C);
    a.v = at(b.in[0], 2 * C);
    a.q_ld = a.k_ld = a.v_ld = 3 * C;
    a.q_bstride = a.k_bstride = a.v_bstride = N * 3 * C;
  }
  a.d = C / n.p.heads;
  a.out = b.out;
  a.o_ld = C;
  a.o_bstride = a.Nq * C;
  return a;
}

inline Conv2dArgs conv_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);  // [Cin, H, W], or [H*W, Cin] with a grid
  const Tensor& w = n.w(Conv2dW::Weight);
  Conv2dArgs a;
  a.B = b.batch;
  a.channels_last = n.p.grid_h > 0;
  a.Cin = a.channels_last ? s[1] : s[0];
  a.H = a.channels_last ? n.p.grid_h : s[1];
  a.W = a.channels_last ? n.p.grid_w : s[2];
  a.Cout = w.dim(0);
  a.kh = w.dim(2);
  a.kw = w.dim(3);
  a.stride = n.p.stride;
  a.pad = n.p.pad;
  a.x = b.in[0];
  a.w = w.data<float>();
  a.bias = n.f32_or_null(Conv2dW::Bias);
  a.out = b.out;
  return a;
}

inline DwConv3x3Args dwconv_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  DwConv3x3Args a;
  a.B = b.batch;
  a.H = n.p.grid_h;
  a.W = n.p.grid_w;
  a.C = g.sample_shape(n.inputs[0])[1];
  a.x = b.in[0];
  a.w = n.w(DwConvW::Taps).data<float>();
  a.bias = n.f32_or_null(DwConvW::Bias);
  a.gelu = n.p.gelu;
  a.out = b.out;
  return a;
}

inline MeanTokensArgs mean_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);  // [N, C]
  MeanTokensArgs a;
  a.B = b.batch;
  a.N = s[0];
  a.C = s[1];
  a.x = b.in[0];
  a.out = b.out;
  return a;
}

inline TakeTokensArgs take_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);  // [N, C]
  TakeTokensArgs a;
  a.B = b.batch;
  a.N = s[0];
  a.C = s[1];
  a.first = n.p.first;
  a.count = n.p.count;
  a.x = b.in[0];
  a.out = b.out;
  return a;
}

inline EmbedTokensArgs embed_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);  // [Np, C]
  const Tensor& prefix = n.w(EmbedW::Prefix);
  EmbedTokensArgs a;
  a.B = b.batch;
  a.Np = s[0];
  a.C = s[1];
  a.P = prefix.defined() ? prefix.numel() / s[1] : 0;
  a.patches = b.in[0];
  a.prefix = a.P ? prefix.data<float>() : nullptr;
  a.pos = n.f32_or_null(EmbedW::Pos);
  a.out = b.out;
  return a;
}

inline LayerNormArgs layernorm_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);
  LayerNormArgs a;
  a.cols = s.back();
  a.rows = b.batch * shape_numel(s) / a.cols;
  a.x = b.in[0];
  a.ldx = a.cols;
  a.gamma = n.w(LayerNormW::Gamma).data<float>();
  a.beta = n.w(LayerNormW::Beta).data<float>();
  a.eps = n.p.eps;
  a.y = b.out;
  a.ldy = a.cols;
  return a;
}

// ----- shift layers: ShiftLinear, and the shift expert of a MoeLinear ---------------------

// The slots of a node's shift weights: ShiftLinear's own, or MoeLinear's expert 1.
struct ShiftSlots {
  const Tensor& codes;
  const float* bias;   // raw, or null
  const float* scale;  // per output, or null
};
inline ShiftSlots shift_slots(const Node& n) {
  if (n.op == OpKind::MoeLinear)
    return {n.w(MoeW::Codes1), n.f32_or_null(MoeW::Bias1), n.f32_or_null(MoeW::Scale1)};
  return {n.w(ShiftW::Codes), n.f32_or_null(ShiftW::Bias), n.f32_or_null(ShiftW::Scale)};
}

inline ShiftPanel shift_panel(const Node& n) {
  const ShiftPanelTensors& t = n.prepared.shift;
  ShiftPanel p;
  if (!t.w.defined()) return p;
  p.w = t.w.data<int8_t>();
  p.colsum = t.colsum.data<int32_t>();
  p.row_scale = t.row_scale.data<float>();
  return p;
}

// An MoE node's combine: upstream's log(exp(y) + eps) in exact mode, its limits in fast mode
// (kernels.h Combine); none when the layer has no combine.
inline Combine moe_combine(const Node& n, ShiftMode mode) {
  if (!n.p.log_exp_combine) return Combine::None;
  return mode == ShiftMode::Exact ? Combine::LogExp : Combine::Limits;
}

// A ShiftLinear node, or the shift expert of a MoeLinear, over all the node's rows in token
// order, with the op's epilogue (scale, MoE combine, GELU, residual); `work` is the exact mode's
// work buffer (cpu::shift_linear_work_bytes). An MoE backend narrows it to the expert's rows.
inline ShiftLinearArgs shift_args(const Graph& g, const Node& n, const NodeBuffers& b, ShiftMode mode,
                                  void* work = nullptr) {
  const ShiftSlots w = shift_slots(n);
  ShiftLinearArgs a;
  a.M = rows_of(g, n, b.batch);
  a.K = w.codes.dim(1);
  a.N = w.codes.dim(0);
  a.x = b.in[0];
  a.ldx = a.K;
  a.codes = w.codes.data<uint8_t>();
  a.ldw = a.K;
  a.bias = w.bias;
  a.y = b.out;
  a.ldy = a.N;
  a.mode = mode;
  a.scale = w.scale;
  if (n.op == OpKind::MoeLinear) a.combine = moe_combine(n, mode);
  a.gelu = n.p.gelu;
  if (has_residual(n)) {
    a.residual = b.in[1];
    a.ldr = a.N;
  }
  a.panel = shift_panel(n);
  a.work = work;
  return a;
}

// ----- MoeLinear: router, then expert 0 (dense) and expert 1 (shift_args) -----------------

// The router over all the node's rows (its `expert` and `logits` outputs are the backend's).
inline RouterArgs moe_router_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Tensor& wg = n.w(MoeW::RouterW);
  RouterArgs r;
  r.M = rows_of(g, n, b.batch);
  r.K = wg.dim(1);
  r.x = b.in[0];
  r.ldx = r.K;
  r.Wg = wg.data<float>();
  r.bg = n.f32_or_null(MoeW::RouterB);
  return r;
}

// Expert 0 (dense) over all the node's rows in token order, with the op's epilogue (bias, MoE
// combine, GELU, residual). An MoE backend narrows it to the expert's rows.
inline GemmArgs moe_dense_args(const Graph& g, const Node& n, const NodeBuffers& b, ShiftMode mode) {
  GemmArgs a = dense_node_args(g, n, b, n.w(MoeW::W0), n.f32_or_null(MoeW::B0));
  a.epi.combine = moe_combine(n, mode);
  return a;
}

// ----- KshAttention -------------------------------------------------------------------------

// KSH attention over a packed q|k|v input (ViT blocks; one input) rather than qk and v (two).
inline bool ksh_from_qkv(const Node& n) { return n.inputs.size() == 1; }

// Hashed streams: the shared qk (upstream), or q then k of a packed q|k|v.
inline int64_t ksh_streams(const Node& n) { return ksh_from_qkv(n) ? 2 : 1; }

// Bytes of one stream's codes, [B, H, N] uint16 (nbits <= 16) or uint64.
inline size_t ksh_stream_code_bytes(const Graph& g, const Node& n, int64_t batch) {
  return static_cast<size_t>((n.p.nbits <= 16 ? 2 : 8) * batch * n.p.heads * g.sample_shape(n.output)[0]);
}

// Hash arguments over the node's raw input rows: every stream, codes into `codes` (one stream
// after the other).
inline KshArgs ksh_args(const Graph& g, const Node& n, const NodeBuffers& b, void* codes) {
  const Shape& s = g.sample_shape(n.output);
  const int64_t C = s[1];
  KshArgs a;
  a.B = b.batch;
  a.H = n.p.heads;
  a.N = s[0];
  a.d = C / n.p.heads;
  a.m = n.p.anchors;
  a.nbits = n.p.nbits;
  a.qk = b.in[0];
  a.qk_ld = (ksh_from_qkv(n) ? 3 : 1) * C;
  a.qk_bstride = s[0] * a.qk_ld;
  a.streams = ksh_streams(n);
  a.stream_offset = C;
  a.anchors = n.w(KshW::Anchor).data<float>();
  a.mvec = n.w(KshW::Mvec).data<float>();
  a.A = n.w(KshW::A).data<float>();
  a.codes = codes;
  a.prepared = n.prepared.ksh.defined() && n.prepared.ksh.numel() ? n.prepared.ksh.raw() : nullptr;
  return a;
}

// `codes`: key (or shared) codes; `qcodes`: query codes of the packed-qkv form.
inline AdditiveAttentionArgs additive_args(const Graph& g, const Node& n, const NodeBuffers& b,
                                           const void* codes, const void* qcodes = nullptr) {
  const Shape& s = g.sample_shape(n.output);
  const int64_t C = s[1];
  AdditiveAttentionArgs a;
  a.B = b.batch;
  a.H = n.p.heads;
  a.N = s[0];
  a.d = C / n.p.heads;
  a.nbits = n.p.nbits;
  a.codes = codes;
  a.qcodes = qcodes;
  if (ksh_from_qkv(n)) {
    a.v = b.in[0] ? b.in[0] + 2 * C : nullptr;
    a.v_ld = 3 * C;
  } else {
    a.v = b.in[1];
    a.v_ld = C;
  }
  a.v_bstride = s[0] * a.v_ld;
  a.taps = n.w(KshW::Taps).data<float>();
  a.out = b.out;
  a.o_ld = C;
  a.o_bstride = s[0] * C;
  return a;
}

}  // namespace shiftadd::node_args
