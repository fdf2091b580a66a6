#include "engine/graph.h"

#include "core/shift_codes.h"
#include "kernels/shift_kernels.h"
#include "shiftadd/error.h"

namespace shiftadd {

static const OpTraits kOpTraits[] = {
    {"input", "input"},         {"conv2d", "conv"},
    {"embed_tokens", "embed"},  {"layernorm", "norm"},
    {"linear", "dense linear"}, {"attention", "softmax attention"},
    {"add", "elementwise"},     {"take_tokens", "select"},
    {"dwconv3x3", "depthwise conv"}, {"mean_tokens", "pool"},
    {"shift_linear", "shift linear"}, {"moe_linear", "MoE linear"},
    {"ksh_attention", "KSH attention"},
};
static_assert(sizeof(kOpTraits) / sizeof(kOpTraits[0]) == static_cast<size_t>(OpKind::Count));

const OpTraits& op_traits(OpKind op) { return kOpTraits[static_cast<size_t>(op)]; }

// Shape errors name the node being built, both shapes and what was expected.
[[noreturn]] static void shape_error(const std::string& node, const std::string& what) {
  throw Error("graph: node '" + node + "': " + what);
}

static void expect_f32(const std::string& node, const char* what, const Tensor& t) {
  if (t.dtype() != DType::F32 || !t.is_contiguous())
    shape_error(node, std::string(what) + " must be a contiguous float32 tensor, got " +
                          std::string(dtype_name(t.dtype())));
}

int Graph::add_node(Node n, Shape out_shape) {
  n.output = static_cast<int>(values_.size());
  values_.push_back({std::move(out_shape), static_cast<int>(nodes_.size())});
  nodes_.push_back(std::move(n));
  return nodes_.back().output;
}

int Graph::input(Shape sample_shape) {
  Node n;
  n.op = OpKind::Input;
  n.name = "input";
  input_ = add_node(std::move(n), std::move(sample_shape));
  return input_;
}

// Shared by both conv layouts: weight, bias, stride and output-size checks, and the node.
// grid_h/grid_w are 0 for an NCHW input, else the token grid of a [H*W, C] input.
int Graph::conv_node(int x, int64_t cin, int64_t h, int64_t wd, int64_t grid_h, int64_t grid_w,
                     Tensor w, Tensor b, int64_t stride, int64_t pad, std::string name) {
  expect_f32(name, "weight", w);
  if (w.ndim() != 4 || w.dim(1) != cin)
    shape_error(name, "conv2d weight " + shape_str(w.shape()) + " does not fit input " +
                          shape_str(sample_shape(x)) + " (expected [Cout, " + std::to_string(cin) +
                          ", kh, kw])");
  if (b.defined() && b.numel() > 0 && b.numel() != w.dim(0))
    shape_error(name, "bias has " + std::to_string(b.numel()) + " elements, expected " +
                          std::to_string(w.dim(0)));
  if (stride < 1 || pad < 0) shape_error(name, "bad stride/padding");
  const int64_t oh = (h + 2 * pad - w.dim(2)) / stride + 1;
  const int64_t ow = (wd + 2 * pad - w.dim(3)) / stride + 1;
  if (oh <= 0 || ow <= 0)
    shape_error(name, "input " + std::to_string(h) + "x" + std::to_string(wd) +
                          " is smaller than the kernel " + shape_str(w.shape()));
  const int64_t cout = w.dim(0);
  Node n;
  n.op = OpKind::Conv2d;
  n.name = std::move(name);
  n.inputs = {x};
  n.set(Conv2dW::Weight, std::move(w));
  n.set(Conv2dW::Bias, std::move(b));
  n.p.stride = stride;
  n.p.pad = pad;
  n.p.grid_h = grid_h;
  n.p.grid_w = grid_w;
  return add_node(std::move(n), {oh * ow, cout});
}

int Graph::conv2d(int x, Tensor w, Tensor b, int64_t stride, int64_t pad, std::string name) {
  const Shape& s = sample_shape(x);  // [Cin, H, W]
  if (s.size() != 3)
    shape_error(name, "conv2d expects input [C, H, W], got " + shape_str(s));
  return conv_node(x, s[0], s[1], s[2], 0, 0, std::move(w), std::move(b), stride, pad, std::move(name));
}

int Graph::conv2d_tokens(int x, int64_t grid_h, int64_t grid_w, Tensor w, Tensor b,
                         int64_t stride, int64_t pad, std::string name) {
  const Shape& s = sample_shape(x);  // [H*W, Cin]
  if (s.size() != 2 || grid_h <= 0 || grid_w <= 0 || s[0] != grid_h * grid_w)
    shape_error(name, "conv2d on tokens expects input [" + std::to_string(grid_h) + "*" +
                          std::to_string(grid_w) + ", C], got " + shape_str(s));
  return conv_node(x, s[1], grid_h, grid_w, grid_h, grid_w, std::move(w), std::move(b), stride, pad,
                   std::move(name));
}

int Graph::embed_tokens(int patches, Tensor prefix, Tensor pos, std::string name) {
  const Shape& s = sample_shape(patches);  // [Np, C]
  if (s.size() != 2) shape_error(name, "expects patch tokens [N, C], got " + shape_str(s));
  const int64_t P = prefix.defined() ? prefix.numel() / s[1] : 0;
  if (prefix.defined() && prefix.numel() != P * s[1])
    shape_error(name, "prefix tokens " + shape_str(prefix.shape()) + " do not match dim " +
                          std::to_string(s[1]));
  if (pos.defined() && pos.numel() != (P + s[0]) * s[1])
    shape_error(name, "position embedding " + shape_str(pos.shape()) + " does not match " +
                          std::to_string(P + s[0]) + " tokens of dim " + std::to_string(s[1]) +
                          " (is the image size right?)");
  Node n;
  n.op = OpKind::EmbedTokens;
  n.name = std::move(name);
  n.inputs = {patches};
  n.set(EmbedW::Prefix, std::move(prefix));
  n.set(EmbedW::Pos, std::move(pos));
  return add_node(std::move(n), {P + s[0], s[1]});
}

int Graph::layernorm(int x, Tensor gamma, Tensor beta, float eps, std::string name) {
  const Shape& s = sample_shape(x);
  if (gamma.numel() != s.back() || beta.numel() != s.back())
    shape_error(name, "LayerNorm weight " + shape_str(gamma.shape()) + " / bias " +
                          shape_str(beta.shape()) + " do not match input " + shape_str(s));
  expect_f32(name, "weight", gamma);
  expect_f32(name, "bias", beta);
  Node n;
  n.op = OpKind::LayerNorm;
  n.name = std::move(name);
  n.inputs = {x};
  n.set(LayerNormW::Gamma, std::move(gamma));
  n.set(LayerNormW::Beta, std::move(beta));
  n.p.eps = eps;
  return add_node(std::move(n), s);
}

void Graph::add_residual(Node& n, int residual, const Shape& out) const {
  if (residual < 0) return;
  if (sample_shape(residual) != out)
    shape_error(n.name, "residual " + shape_str(sample_shape(residual)) + " does not match output " + shape_str(out));
  n.inputs.push_back(residual);
}

int Graph::linear(int x, Tensor w, Tensor b, std::string name, bool gelu, int residual) {
  Shape s = sample_shape(x);
  expect_f32(name, "weight", w);
  if (w.ndim() != 2 || w.dim(1) != s.back())
    shape_error(name, "linear weight " + shape_str(w.shape()) + " does not fit input " +
                          shape_str(s) + " (expected [out, " + std::to_string(s.back()) + "])");
  if (b.defined() && b.numel() != w.dim(0))
    shape_error(name, "bias " + shape_str(b.shape()) + " does not match weight " +
                          shape_str(w.shape()));
  s.back() = w.dim(0);
  Node n;
  n.op = OpKind::Linear;
  n.name = std::move(name);
  n.inputs = {x};
  add_residual(n, residual, s);
  n.set(LinearW::Weight, std::move(w));
  n.set(LinearW::Bias, std::move(b));
  n.p.gelu = gelu;
  return add_node(std::move(n), s);
}

int Graph::attention(int qkv, int64_t heads, float scale, std::string name) {
  const Shape& s = sample_shape(qkv);  // [N, 3C]
  if (s.size() != 2 || s[1] % 3 != 0 || heads <= 0 || (s[1] / 3) % heads != 0)
    shape_error(name, "attention expects packed q|k|v [N, 3C] with C divisible by heads=" +
                          std::to_string(heads) + ", got " + shape_str(s));
  Node n;
  n.op = OpKind::Attention;
  n.name = std::move(name);
  n.inputs = {qkv};
  n.p.heads = heads;
  n.p.scale = scale;
  return add_node(std::move(n), {s[0], s[1] / 3});
}

int Graph::attention(int q, int kv, int64_t heads, float scale, std::string name) {
  const Shape& sq = sample_shape(q);    // [Nq, C]
  const Shape& skv = sample_shape(kv);  // [Nkv, 2C]
  if (sq.size() != 2 || skv.size() != 2 || skv[1] != 2 * sq[1] || heads <= 0 ||
      sq[1] % heads != 0)
    shape_error(name, "attention expects q [Nq, C] and packed k|v [Nkv, 2C] with C divisible by "
                      "heads=" + std::to_string(heads) + ", got q " + shape_str(sq) + " and kv " +
                          shape_str(skv));
  Node n;
  n.op = OpKind::Attention;
  n.name = std::move(name);
  n.inputs = {q, kv};
  n.p.heads = heads;
  n.p.scale = scale;
  return add_node(std::move(n), sq);
}

int Graph::dwconv3x3(int x, int64_t grid_h, int64_t grid_w, const Tensor& w, Tensor b, bool gelu,
                     std::string name) {
  const Shape& s = sample_shape(x);  // [H*W, C]
  expect_f32(name, "weight", w);
  if (s.size() != 2 || grid_h <= 0 || grid_w <= 0 || s[0] != grid_h * grid_w)
    shape_error(name, "depthwise conv expects input [" + std::to_string(grid_h) + "*" +
                          std::to_string(grid_w) + ", C], got " + shape_str(s));
  const int64_t C = s[1];
  if (w.shape() != Shape{C, 1, 3, 3})
    shape_error(name, "depthwise weight " + shape_str(w.shape()) + " does not fit input " +
                          shape_str(s) + " (expected [" + std::to_string(C) + ", 1, 3, 3])");
  if (b.defined() && b.numel() > 0 && b.numel() != C)
    shape_error(name, "bias has " + std::to_string(b.numel()) + " elements, expected " +
                          std::to_string(C));
  // [C, 1, 3, 3] -> taps-major [3, 3, C], the layout the kernels read.
  Tensor wt = Tensor::empty(DType::F32, {3, 3, C});
  const float* src = w.data<float>();
  float* dst = wt.data<float>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < 9; ++t) dst[t * C + c] = src[c * 9 + t];
  Node n;
  n.op = OpKind::DwConv3x3;
  n.name = std::move(name);
  n.inputs = {x};
  n.set(DwConvW::Taps, std::move(wt));
  n.set(DwConvW::Bias, std::move(b));
  n.p.grid_h = grid_h;
  n.p.grid_w = grid_w;
  n.p.gelu = gelu;
  return add_node(std::move(n), s);
}

int Graph::mean_tokens(int x, std::string name) {
  const Shape& s = sample_shape(x);
  if (s.size() != 2 || s[0] <= 0) shape_error(name, "mean over tokens expects [N, C], got " + shape_str(s));
  Node n;
  n.op = OpKind::MeanTokens;
  n.name = std::move(name);
  n.inputs = {x};
  return add_node(std::move(n), {1, s[1]});
}

int Graph::add(int a, int b, float alpha, std::string name) {
  if (sample_shape(a) != sample_shape(b))
    shape_error(name, "add of mismatched shapes " + shape_str(sample_shape(a)) + " and " +
                          shape_str(sample_shape(b)));
  Node n;
  n.op = OpKind::Add;
  n.name = std::move(name);
  n.inputs = {a, b};
  n.p.alpha = alpha;
  return add_node(std::move(n), sample_shape(a));
}

int Graph::take_tokens(int x, int64_t first, int64_t count, std::string name) {
  Shape s = sample_shape(x);
  if (s.size() != 2 || first < 0 || count <= 0 || first + count > s[0])
    shape_error(name, "cannot take tokens [" + std::to_string(first) + ", " +
                          std::to_string(first + count) + ") of " + shape_str(s));
  Node n;
  n.op = OpKind::TakeTokens;
  n.name = std::move(name);
  n.inputs = {x};
  n.p.first = first;
  n.p.count = count;
  s[0] = count;
  return add_node(std::move(n), s);
}

namespace {
// Packs raw float shift/sign [out, in] into U8 codes [out, in].
Tensor pack_codes(const std::string& node, const Tensor& shift, const Tensor& sign) {
  expect_f32(node, "shift", shift);
  expect_f32(node, "sign", sign);
  if (shift.ndim() != 2 || sign.shape() != shift.shape())
    shape_error(node, "shift " + shape_str(shift.shape()) + " and sign " + shape_str(sign.shape()) +
                          " must both be [out, in]");
  Tensor codes = Tensor::empty(DType::U8, shift.shape());
  const float* s = shift.data<float>();
  const float* g = sign.data<float>();
  uint8_t* c = codes.data<uint8_t>();
  for (int64_t i = 0; i < shift.numel(); ++i) c[i] = pack_shift_weight(s[i], g[i]);
  return codes;
}

void expect_bias(const std::string& node, const char* what, const Tensor& b, int64_t n) {
  if (!b.defined() || b.numel() == 0) return;
  expect_f32(node, what, b);
  if (b.numel() != n)
    shape_error(node, std::string(what) + " " + shape_str(b.shape()) + " has " +
                          std::to_string(b.numel()) + " elements, expected " + std::to_string(n));
}
}  // namespace

ShiftWeights ShiftWeights::from_raw(const std::string& node, const Tensor& shift, const Tensor& sign,
                                    Tensor bias) {
  return {pack_codes(node, shift, sign), std::move(bias), Tensor()};
}

namespace {
// Checks one shift expert against input width K; returns its output width.
int64_t check_shift(const std::string& node, const char* what, const ShiftWeights& w, const Shape& in) {
  const int64_t K = in.back();
  if (!w.codes.defined() || w.codes.dtype() != DType::U8 || w.codes.ndim() != 2 || !w.codes.is_contiguous())
    shape_error(node, std::string(what) + " codes must be a contiguous U8 [out, in] tensor");
  if (w.codes.dim(1) != K)
    shape_error(node, std::string(what) + " codes " + shape_str(w.codes.shape()) + " do not fit input " +
                          shape_str(in) + " (expected [out, " + std::to_string(K) + "])");
  const int64_t N = w.codes.dim(0);
  expect_bias(node, (std::string(what) + " bias").c_str(), w.bias, N);
  if (w.scale.defined()) {
    expect_f32(node, "scale", w.scale);
    if (w.scale.numel() != N)
      shape_error(node, std::string(what) + " scale " + shape_str(w.scale.shape()) + " has " +
                            std::to_string(w.scale.numel()) + " elements, expected " + std::to_string(N));
  }
  return N;
}
}  // namespace

namespace {
ShiftPanelTensors make_panel(const Tensor& codes) {
  const int64_t N = codes.dim(0), K = codes.dim(1);
  ShiftPanelTensors p;
  p.w = Tensor::empty(DType::I8, {static_cast<int64_t>(kernels::cpu::shift_panel_bytes(N, K))});
  p.colsum = Tensor::empty(DType::I32, {N});
  p.row_scale = Tensor::empty(DType::F32, {N});
  p.dropped = kernels::cpu::pack_shift_panel(codes.data<uint8_t>(), N, K, K, p.w.data<int8_t>(),
                                             p.colsum.data<int32_t>(), p.row_scale.data<float>());
  return p;
}
}  // namespace

int Graph::shift_linear(int x, ShiftWeights w, std::string name, bool gelu, int residual) {
  Shape s = sample_shape(x);
  s.back() = check_shift(name, "shift", w, s);
  Node n;
  n.op = OpKind::ShiftLinear;
  n.name = std::move(name);
  n.inputs = {x};
  add_residual(n, residual, s);
  n.prepared.shift = make_panel(w.codes);
  n.set(ShiftW::Codes, std::move(w.codes));
  n.set(ShiftW::Bias, std::move(w.bias));
  n.set(ShiftW::Scale, std::move(w.scale));
  n.p.gelu = gelu;
  return add_node(std::move(n), s);
}

int Graph::shift_linear(int x, const Tensor& shift, const Tensor& sign, Tensor b, std::string name) {
  return shift_linear(x, ShiftWeights::from_raw(name, shift, sign, std::move(b)), std::move(name));
}

int Graph::moe_linear(int x, Tensor wg, Tensor bg, Tensor w0, Tensor b0, ShiftWeights w1,
                      std::string name, bool log_exp_combine, bool gelu, int residual) {
  Shape s = sample_shape(x);
  const int64_t K = s.back();
  expect_f32(name, "router weight", wg);
  expect_f32(name, "expert 0 weight", w0);
  if (wg.shape() != Shape{2, K})
    shape_error(name, "router weight " + shape_str(wg.shape()) + " does not fit input " +
                          shape_str(s) + " (expected [2, " + std::to_string(K) + "])");
  expect_bias(name, "router bias", bg, 2);
  if (w0.ndim() != 2 || w0.dim(1) != K)
    shape_error(name, "expert 0 weight " + shape_str(w0.shape()) + " does not fit input " +
                          shape_str(s) + " (expected [out, " + std::to_string(K) + "])");
  const int64_t N = w0.dim(0);
  expect_bias(name, "expert 0 bias", b0, N);
  if (check_shift(name, "expert 1", w1, s) != N)
    shape_error(name, "expert 1 codes " + shape_str(w1.codes.shape()) + " do not match expert 0 " +
                          shape_str(w0.shape()));
  s.back() = N;
  Node n;
  n.op = OpKind::MoeLinear;
  n.name = std::move(name);
  n.inputs = {x};
  add_residual(n, residual, s);
  n.prepared.shift = make_panel(w1.codes);
  n.set(MoeW::RouterW, std::move(wg));
  n.set(MoeW::RouterB, std::move(bg));
  n.set(MoeW::W0, std::move(w0));
  n.set(MoeW::B0, std::move(b0));
  n.set(MoeW::Codes1, std::move(w1.codes));
  n.set(MoeW::Bias1, std::move(w1.bias));
  n.set(MoeW::Scale1, std::move(w1.scale));
  n.p.log_exp_combine = log_exp_combine;
  n.p.gelu = gelu;
  return add_node(std::move(n), s);
}

int Graph::moe_linear(int x, Tensor wg, Tensor bg, Tensor w0, Tensor b0, const Tensor& shift1,
                      const Tensor& sign1, Tensor b1, std::string name, int residual) {
  ShiftWeights w1 = ShiftWeights::from_raw(name, shift1, sign1, std::move(b1));
  if (w0.defined() && w1.codes.shape() != w0.shape())
    shape_error(name, "expert 1 shift " + shape_str(shift1.shape()) + " does not match expert 0 " +
                          shape_str(w0.shape()));
  return moe_linear(x, std::move(wg), std::move(bg), std::move(w0), std::move(b0), std::move(w1),
                    std::move(name), true, false, residual);
}

namespace {
// KSH buffers in the engine's layout: anchor [H, m, d], mvec [H, m], A [H, nbits, m], taps [H, 9].
void check_ksh(const std::string& name, int64_t H, int64_t d, const Tensor& anchor, const Tensor& mvec,
               const Tensor& A, const Tensor& taps) {
  for (auto [what, t] : {std::pair<const char*, const Tensor*>{"anchor", &anchor},
                         {"mvec", &mvec}, {"A", &A}, {"dconv weight", &taps}})
    expect_f32(name, what, *t);
  if (A.ndim() != 3 || A.dim(0) != H || A.dim(1) < 1 || A.dim(1) > 64 || A.dim(2) < 1)
    shape_error(name, "KSH A " + shape_str(A.shape()) + " must be [" + std::to_string(H) +
                          ", nbits <= 64, m]");
  const int64_t m = A.dim(2);
  if (anchor.numel() != H * m * d)
    shape_error(name, "KSH anchor " + shape_str(anchor.shape()) + ", expected " + std::to_string(H) +
                          " x " + std::to_string(m) + " x " + std::to_string(d) + " values");
  if (mvec.numel() != H * m)
    shape_error(name, "KSH mvec " + shape_str(mvec.shape()) + ", expected " + std::to_string(H) +
                          " x " + std::to_string(m) + " values");
  if (taps.numel() != H * 9)
    shape_error(name, "dconv weight " + shape_str(taps.shape()) + ", expected " + std::to_string(H) +
                          " x 9 values");
}

// A KSH node over `inputs` with its weights in the engine's layout (anchor [H, m, d], mvec
// [H, m], A [H, nbits, m], taps [H, 9]) and its hash constants prepared for the CPU kernels.
Node ksh_node(std::string name, std::vector<int> inputs, int64_t H, int64_t d, const Tensor& anchor,
              const Tensor& mvec, const Tensor& A, const Tensor& taps) {
  const int64_t nbits = A.dim(1), m = A.dim(2);
  Node n;
  n.op = OpKind::KshAttention;
  n.name = std::move(name);
  n.inputs = std::move(inputs);
  n.set(KshW::Anchor, anchor.reshape({H, m, d}));
  n.set(KshW::Mvec, mvec.reshape({H, m}));
  n.set(KshW::A, A);
  n.set(KshW::Taps, taps.reshape({H, 9}));
  n.p.heads = H;
  n.p.nbits = nbits;
  n.p.anchors = m;
  kernels::KshArgs a;
  a.H = H, a.m = m, a.d = d, a.nbits = nbits;
  a.anchors = n.w(KshW::Anchor).data<float>();
  a.mvec = n.w(KshW::Mvec).data<float>();
  a.A = n.w(KshW::A).data<float>();
  n.prepared.ksh = Tensor::empty(DType::U8, {static_cast<int64_t>(kernels::cpu::ksh_prepared_bytes(a))});
  kernels::cpu::ksh_prepare(a, n.prepared.ksh.data<uint8_t>());
  return n;
}
}  // namespace

int Graph::ksh_attention(int qk, int v, int64_t heads, const Tensor& anchor, const Tensor& mvec,
                         const Tensor& A, const Tensor& dconv, std::string name) {
  const Shape& sq = sample_shape(qk);
  const Shape& sv = sample_shape(v);
  if (sq.size() != 2 || sq != sv || heads <= 0 || sq[1] % heads != 0)
    shape_error(name, "KSH attention expects qk and v [N, C] with C divisible by heads=" +
                          std::to_string(heads) + ", got qk " + shape_str(sq) + " and v " +
                          shape_str(sv));
  const int64_t H = heads, d = sq[1] / heads;
  check_ksh(name, H, d, anchor, mvec, A, dconv);
  const int64_t m = A.dim(2);
  // Upstream layouts, checked exactly.
  if (anchor.shape() != Shape{1, H, m, d})
    shape_error(name, "KSH anchor " + shape_str(anchor.shape()) + ", expected " +
                          shape_str(Shape{1, H, m, d}));
  if (mvec.shape() != Shape{1, H, 1, m})
    shape_error(name, "KSH mvec " + shape_str(mvec.shape()) + ", expected " +
                          shape_str(Shape{1, H, 1, m}));
  if (dconv.shape() != Shape{H, 1, 9, 1})
    shape_error(name, "dconv weight " + shape_str(dconv.shape()) + ", expected " +
                          shape_str(Shape{H, 1, 9, 1}));
  return add_node(ksh_node(std::move(name), {qk, v}, H, d, anchor, mvec, A, dconv), sq);
}

int Graph::ksh_attention_qkv(int qkv, int64_t heads, const Tensor& anchor, const Tensor& mvec,
                             const Tensor& A, const Tensor& taps, std::string name) {
  const Shape& s = sample_shape(qkv);
  if (s.size() != 2 || s[1] % 3 != 0 || heads <= 0 || (s[1] / 3) % heads != 0)
    shape_error(name, "KSH attention expects a packed q|k|v [N, 3C] with C divisible by heads=" +
                          std::to_string(heads) + ", got " + shape_str(s));
  const int64_t C = s[1] / 3, H = heads, d = C / heads;
  check_ksh(name, H, d, anchor, mvec, A, taps);
  return add_node(ksh_node(std::move(name), {qkv}, H, d, anchor, mvec, A, taps), {s[0], C});
}

int64_t Graph::weight_params() const {
  int64_t total = 0;
  for (const Node& n : nodes_)
    for (const Tensor& w : n.weights) total += w.numel();
  return total;
}

}  // namespace shiftadd
