#pragma once
// The graph IR: one op enum, one builder method per op, shape rules checked as the graph is
// built. Every value is a float32 activation of shape [batch, sample_shape...]; the batch size
// is only fixed when a plan is made, so one Graph serves every batch size.
#include <cassert>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace shiftadd {

enum class OpKind : uint8_t {
  Input,        // the image batch [B, C, H, W]
  Conv2d,       // conv (groups 1) with bias, input [C, H, W] or token-major [H*W, C] (grid in
                // params), output token-major [B, OH*OW, Cout]
  EmbedTokens,  // prepend cls/dist tokens and add the position embedding
  LayerNorm,    // over the last dim
  Linear,       // x W^T + b, optional fused GELU, optional fused residual add (input 1)
  Attention,    // multi-head softmax attention from a packed q|k|v [N, 3C] -> [N, C], or from
                // q [Nq, C] and a packed k|v [Nkv, 2C] (two inputs) -> [Nq, C]
  Add,          // alpha * (a + b)
  TakeTokens,   // x[:, first:first+count, :]
  DwConv3x3,    // depthwise 3x3 conv (pad 1, bias) over the [H*W, C] token grid, optional GELU
  MeanTokens,   // mean over tokens [N, C] -> [1, C]
  ShiftLinear,  // DeepShift-PS linear q(x) W^T + q(b), W = g * 2^s packed as 5-bit codes
                // (core/shift_codes.h), times an optional per-output scale, optional GELU,
                // optional fused residual add (input 1)
  MoeLinear,    // top-1 mixture of a dense (expert 0) and a shift (expert 1) linear, combined
                // by log(exp(y) + eps) when p.log_exp_combine, optional GELU, optional fused
                // residual add (input 1)
  KshAttention, // LinAngular attention: per image and head L2-norm rows, KSH codes, additive
                // attention, L2 norm, 9-tap dconv; merged [N, C]. Inputs qk [N, C] and v [N, C]
                // (upstream: q = k), or one packed q|k|v [N, 3C] (ViT: q and k hashed apart).
  Count
};

// ----- named weight slots ------------------------------------------------------------------
// Node::weights is indexed by its op's slot enum (Node::w); an op has every slot of its enum
// (an absent optional weight is an empty Tensor). Ops not listed have no weights.
enum class Conv2dW : uint8_t { Weight, Bias, Count };     // [Cout, Cin, kh, kw], [Cout] or empty
enum class EmbedW : uint8_t { Prefix, Pos, Count };       // [P, C] (cls, dist) or empty, [P + N, C] or empty
enum class LayerNormW : uint8_t { Gamma, Beta, Count };   // [C], [C]
enum class LinearW : uint8_t { Weight, Bias, Count };     // [out, in], [out] or empty
enum class DwConvW : uint8_t { Taps, Bias, Count };       // taps-major [3, 3, C], [C] or empty
// codes U8 [out, in], raw bias [out] or empty, per-output scale [out] or empty (= 1)
enum class ShiftW : uint8_t { Codes, Bias, Scale, Count };
// router Wg [2, in], bg [2]; expert 0 (dense) W0 [out, in], b0 [out]; expert 1 (shift) as ShiftW
enum class MoeW : uint8_t { RouterW, RouterB, W0, B0, Codes1, Bias1, Scale1, Count };
// anchor [H, m, d], mvec [H, m], A [H, nbits, m], dconv taps [H, 9]
enum class KshW : uint8_t { Anchor, Mvec, A, Taps, Count };

// The op a slot enum belongs to (checked by Node::w in debug builds).
constexpr OpKind slot_op(Conv2dW) { return OpKind::Conv2d; }
constexpr OpKind slot_op(EmbedW) { return OpKind::EmbedTokens; }
constexpr OpKind slot_op(LayerNormW) { return OpKind::LayerNorm; }
constexpr OpKind slot_op(LinearW) { return OpKind::Linear; }
constexpr OpKind slot_op(DwConvW) { return OpKind::DwConv3x3; }
constexpr OpKind slot_op(ShiftW) { return OpKind::ShiftLinear; }
constexpr OpKind slot_op(MoeW) { return OpKind::MoeLinear; }
constexpr OpKind slot_op(KshW) { return OpKind::KshAttention; }

// One row per op: its name and its kind as shown to users (inspect, profiler).
struct OpTraits {
  const char* name;
  const char* kind;
};
const OpTraits& op_traits(OpKind op);

struct OpParams {
  float eps = 0.0f;          // LayerNorm
  bool gelu = false;         // Linear, DwConv3x3
  int64_t heads = 0;         // Attention
  float scale = 1.0f;        // Attention
  int64_t stride = 1, pad = 0;  // Conv2d
  int64_t grid_h = 0, grid_w = 0;  // Conv2d on token-major input (0: NCHW input), DwConv3x3
  int64_t first = 0, count = 0; // TakeTokens
  float alpha = 1.0f;        // Add
  int64_t nbits = 0, anchors = 0;  // KshAttention: hash bits, anchors m (heads in `heads`)
  bool log_exp_combine = true;     // MoeLinear: upstream's log(exp(y) + eps) combine
};

// A shift linear's weights: packed codes U8 [out, in], raw bias [out] (may be undefined) and an
// optional per-output-channel scale [out] (shiftadd's extension; undefined = 1).
struct ShiftWeights {
  Tensor codes, bias, scale;
  // Packs raw upstream float `shift` and `sign` [out, in] (exponent clamped to [-14, 0], round
  // half to even) once.
  static ShiftWeights from_raw(const std::string& node, const Tensor& shift, const Tensor& sign,
                               Tensor bias);
};

// What the optimized CPU kernels read of a layer in their own layout, derived once from its
// weights when the graph is built (not model parameters):
// - a shift layer's int8 panels, column sums and row scales (kernels::ShiftPanel);
// - a KSH layer's hash constants (kernels::cpu::ksh_prepare).
struct ShiftPanelTensors {
  Tensor w, colsum, row_scale;
  int64_t dropped = 0;  // nonzero weights below the int8 window (zero in fast mode)
};
struct PreparedWeights {
  ShiftPanelTensors shift;  // ShiftLinear, MoeLinear (its shift expert)
  Tensor ksh;               // KshAttention
};

struct Node {
  OpKind op = OpKind::Input;
  std::string name;             // e.g. "blocks.3.mlp.fc1"
  std::vector<int> inputs;      // value ids
  int output = -1;              // value id
  std::vector<Tensor> weights;  // one per slot of the op's slot enum, in its order
  OpParams p;
  PreparedWeights prepared;

  template <class Slot>
  const Tensor& w(Slot s) const {
    assert(op == slot_op(s) && static_cast<size_t>(s) < weights.size());
    return weights[static_cast<size_t>(s)];
  }
  // Float data of an optional weight (bias, scale), null when the slot is empty.
  template <class Slot>
  const float* f32_or_null(Slot s) const {
    const Tensor& t = w(s);
    return t.defined() && t.numel() > 0 ? t.data<float>() : nullptr;
  }
  // Fills slot `s` (the builders), giving the node every slot of its op.
  template <class Slot>
  void set(Slot s, Tensor t) {
    assert(op == slot_op(s));
    weights.resize(static_cast<size_t>(Slot::Count));
    weights[static_cast<size_t>(s)] = std::move(t);
  }
};

struct ValueInfo {
  Shape sample_shape;  // shape without the leading batch dim
  int producer = -1;   // node index
};

class Graph {
 public:
  int input(Shape sample_shape);
  int conv2d(int x, Tensor w, Tensor b, int64_t stride, int64_t pad, std::string name);
  int embed_tokens(int patches, Tensor prefix, Tensor pos, std::string name);
  int layernorm(int x, Tensor gamma, Tensor beta, float eps, std::string name);
  int linear(int x, Tensor w, Tensor b, std::string name, bool gelu = false, int residual = -1);
  // Conv2d over token-major x [grid_h * grid_w, C] viewed as a grid_h x grid_w image.
  int conv2d_tokens(int x, int64_t grid_h, int64_t grid_w, Tensor w, Tensor b, int64_t stride,
                    int64_t pad, std::string name);
  int attention(int qkv, int64_t heads, float scale, std::string name);
  // Attention with separate queries q [Nq, C] and packed keys|values kv [Nkv, 2C].
  int attention(int q, int kv, int64_t heads, float scale, std::string name);
  // w: PyTorch's depthwise weight [C, 1, 3, 3] (stored transposed to [3, 3, C] in the node).
  int dwconv3x3(int x, int64_t grid_h, int64_t grid_w, const Tensor& w, Tensor b, bool gelu,
                std::string name);
  int mean_tokens(int x, std::string name);
  // Optional fused residual add (input 1), as Linear.
  int shift_linear(int x, ShiftWeights w, std::string name, bool gelu = false, int residual = -1);
  // Shift linear from raw upstream float `shift` and `sign` [out, in] and bias [out].
  int shift_linear(int x, const Tensor& shift, const Tensor& sign, Tensor b, std::string name);
  // MoE linear: router gate Wg [2, in], bg [2]; expert 0 dense W0 [out, in], b0 [out];
  // expert 1 shift.
  // Optional fused residual add (input 1) after the combine and GELU, as Linear.
  int moe_linear(int x, Tensor wg, Tensor bg, Tensor w0, Tensor b0, ShiftWeights w1, std::string name,
                 bool log_exp_combine = true, bool gelu = false, int residual = -1);
  // ... with expert 1 from raw upstream shift1/sign1 [out, in] and b1 [out].
  int moe_linear(int x, Tensor wg, Tensor bg, Tensor w0, Tensor b0, const Tensor& shift1,
                 const Tensor& sign1, Tensor b1, std::string name, int residual = -1);
  // KSH (LinAngular) attention; anchor [1, H, m, d], mvec [1, H, 1, m], A [H, nbits, m],
  // dconv [H, 1, 9, 1] as upstream stores them.
  int ksh_attention(int qk, int v, int64_t heads, const Tensor& anchor, const Tensor& mvec,
                    const Tensor& A, const Tensor& dconv, std::string name);
  // KSH attention of a ViT block from its packed q|k|v [N, 3C]: q and k hashed apart with the
  // same hash (docs/format.md); anchor [H, m, d], mvec [H, m], A [H, nbits, m], taps [H, 9].
  int ksh_attention_qkv(int qkv, int64_t heads, const Tensor& anchor, const Tensor& mvec,
                        const Tensor& A, const Tensor& taps, std::string name);
  int add(int a, int b, float alpha, std::string name);
  int take_tokens(int x, int64_t first, int64_t count, std::string name);
  void set_output(int v) { output_ = v; }

  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<ValueInfo>& values() const { return values_; }
  const Shape& sample_shape(int v) const { return values_.at(v).sample_shape; }
  int input_value() const { return input_; }
  int output_value() const { return output_; }
  int64_t weight_params() const;  // total weight elements

 private:
  int add_node(Node n, Shape out_shape);
  // Input 1 of a node with a fused residual add (residual >= 0), checked against its output.
  void add_residual(Node& n, int residual, const Shape& out) const;
  int conv_node(int x, int64_t cin, int64_t h, int64_t wd, int64_t grid_h, int64_t grid_w,
                Tensor w, Tensor b, int64_t stride, int64_t pad, std::string name);
  int input_ = -1, output_ = -1;
  std::vector<Node> nodes_;
  std::vector<ValueInfo> values_;
};

}  // namespace shiftadd
