#include "loaders/onnx_vit.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

#include "loaders/onnx_graph.h"
#include "shiftadd/error.h"

namespace shiftadd {
namespace {

constexpr int kMinOpset = 13;
constexpr int kMaxOpset = 20;  // Gelu arrived in opset 20
// How far a constant of the math (sqrt 2, the attention scale) may be from its exact value,
// relative: fp16 exports round it to 11 bits, two fp16 factors to about 2^-10.
constexpr double kConstTolerance = 2e-3;
constexpr int kMaxTargetDepth = 32;

// Everything a torch.onnx.export of a ViT/DeiT contains; an op outside this set means the graph
// computes something the recognizer would silently drop.
// Each maps to the fewest inputs the op has, so that the recognizer can index them safely.
const std::map<std::string, int>& supported_ops() {
  static const std::map<std::string, int> ops = {
      {"Conv", 2}, {"Reshape", 2}, {"Flatten", 1}, {"Transpose", 1}, {"Concat", 1}, {"Expand", 2},
      {"Tile", 2}, {"Shape", 1}, {"Gather", 2}, {"Unsqueeze", 1}, {"Squeeze", 1}, {"Slice", 3},
      {"Split", 1}, {"Add", 2}, {"Sub", 2}, {"Mul", 2}, {"Div", 2}, {"Pow", 2}, {"Sqrt", 1},
      {"Erf", 1}, {"Gelu", 1}, {"ReduceMean", 1}, {"LayerNormalization", 2}, {"MatMul", 2},
      {"Gemm", 2}, {"Softmax", 1}, {"Constant", 0}, {"ConstantOfShape", 1}, {"Cast", 1},
      {"Where", 3}, {"Equal", 2}, {"Identity", 1}, {"Range", 3}, {"Reciprocal", 1}, {"Neg", 1},
      {"IsNaN", 1}};  // IsNaN: only the softmax NaN guard of torch 2.x SDPA exports
  return ops;
}

// Ops that compute on activations: each must end up in a recognized structure.
const std::set<std::string>& compute_ops() {
  static const std::set<std::string> ops = {
      "Conv", "MatMul", "Gemm", "Softmax", "LayerNormalization", "Erf", "Gelu", "ReduceMean", "Pow"};
  return ops;
}

std::string number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// A fully connected layer: MatMul by a constant (+ Add of a 1-D constant), or Gemm.
struct Linear {
  int node = -1;
  int bias_node = -1;
  int flatten = -1;  // Reshape(x, [-1, in]) before a Gemm on 2-D rows (onnxsim), or -1
  std::string input, output;
  int64_t out = 0, in = 0;
  std::vector<float> weight;  // [out, in]
  std::vector<float> bias;    // [out], zeros when the layer has none
};

struct LayerNorm {
  std::vector<int> nodes;        // all nodes of the LayerNorm
  std::vector<int> entry_nodes;  // those reading the input
  std::string output;
  std::vector<float> weight, bias;
  float eps = 0;
};

// Axis bookkeeping for the attention paths between a linear layer and the attention MatMuls:
// the linear output is [batch, token, features]; a Reshape splits the features into factors
// (timm (3, H, d), HF (H, d)); Split/Gather/Slice pick one index of a factor (q, k or v).
// A Merged axis is several of these flattened into one (torch 2.x SDPA reshapes k to
// [batch*heads, tokens, head_dim] to transpose it); `parts` lists them.
enum class Role : uint8_t { Batch, Token, Features, Factor, Merged };
struct Axis {
  Role role = Role::Batch;
  int factor = -1;
  int64_t size = 0;
  std::vector<Axis> parts;
  Axis() = default;
  Axis(Role r, int f = -1, int64_t s = 0, std::vector<Axis> p = {})
      : role(r), factor(f), size(s), parts(std::move(p)) {}
};

// One entry of a Reshape target: a constant, dimension `index` of tensor `tensor` (read with
// Shape), or something else computed from shapes.
struct Dim {
  enum Kind : uint8_t { Value, Ref, Unknown } kind = Unknown;
  int64_t value = 0;
  std::string tensor;
  int64_t index = 0;
  Dim() = default;
  Dim(Kind k, int64_t v, std::string t = {}, int64_t i = 0)
      : kind(k), value(v), tensor(std::move(t)), index(i) {}
};

struct Step {
  int node;
  int output_index;  // which output of the node the path continues from (Split)
};

struct AttentionPath {
  std::vector<Axis> axes;
  std::vector<int64_t> factor_sizes;
  std::map<int, int64_t> selected;  // factor -> index picked by Split/Gather/Slice
  double scale = 1.0;               // product of the (folded) scale factors
  std::map<int64_t, float> bias;    // linear output row -> bias added on the path (onnxsim)
};

using Dims = std::vector<Dim>;

class Recognizer {
 public:
  explicit Recognizer(OnnxGraph& g) : g_(g), claimed_(g.size(), false) {}

  WeightStore run(OnnxVitInfo* info) {
    check_ops();
    find_linears();
    std::string x = embeddings();
    int depth = 0;
    while (true) {
      LayerNorm ln = layernorm_at(x, depth);
      std::vector<int> others;
      for (int c : g_.consumers(x))
        if (std::find(ln.entry_nodes.begin(), ln.entry_nodes.end(), c) == ln.entry_nodes.end())
          others.push_back(c);
      if (others.empty()) {  // no residual branch: the final norm
        put_layernorm("norm", ln);
        classifier(ln.output);
        break;
      }
      x = block(depth, x, ln, others);
      ++depth;
    }
    if (depth == 0) g_.fail("no transformer blocks found before the final LayerNorm");
    for (int i = 0; i < g_.size(); ++i)
      if (!claimed_[i] && compute_ops().count(g_.op(i)) && !g_.folded(i))
        g_.fail(i, "is not part of the recognized ViT structure (embedding, " + std::to_string(depth) +
                       " blocks, final norm, head)");

    info->heads = heads_;
    info->eps = eps_;
    info->image_size = image_size_;
    info->in_chans = in_chans_;
    WeightStore store;
    store.source = g_.file();
    for (auto& [name, value] : out_) {
      Tensor t = Tensor::empty(DType::F32, value.first);
      std::memcpy(t.raw(), value.second.data(), value.second.size() * sizeof(float));
      store.tensors.emplace(name, std::move(t));
    }
    return store;
  }

 private:
  // --- validation and discovery -------------------------------------------------------------
  void check_ops() {
    for (int i = 0; i < g_.size(); ++i) {
      const auto& n = g_.node(i);
      bool default_domain = n.domain().empty() || n.domain() == "ai.onnx";
      if (!default_domain || !supported_ops().count(n.op_type())) {
        std::string op = default_domain ? n.op_type() : n.domain() + "." + n.op_type();
        std::string name = n.name().empty() ? "#" + std::to_string(i) : n.name();
        g_.fail("unsupported ONNX op '" + op + "' at node '" + name + "' (opset " +
                std::to_string(g_.opset()) +
                "): the loader recognizes ViT/DeiT exports (Conv patch embedding, LayerNorm, "
                "softmax attention, erf GELU MLP), not arbitrary ONNX graphs");
      }
      if (n.input_size() < supported_ops().at(n.op_type()) || n.output_size() < 1)
        g_.fail(i, "has " + std::to_string(n.input_size()) + " inputs and " +
                       std::to_string(n.output_size()) + " outputs; malformed node");
    }
  }

  void find_linears() {
    for (int i = 0; i < g_.size(); ++i) {
      const auto& n = g_.node(i);
      if (n.op_type() != "MatMul" && n.op_type() != "Gemm") continue;
      if (g_.constant(n.input(0))) g_.fail(i, "constant first operand; expected activations");
      const OnnxConst* w = g_.constant(n.input(1));
      if (!w) continue;  // both operands computed: an attention MatMul
      if (w->dims.size() != 2 || !w->is_float)
        g_.fail(i, "weight '" + n.input(1) + "' has shape " + shape_str(w->dims) +
                       ", expected a 2-D float matrix");
      Linear l;
      l.node = i;
      l.input = n.input(0);
      l.output = n.output(0);
      bool w_is_out_in = false;  // MatMul weights are [in, out]
      float alpha = 1, beta = 1;
      if (n.op_type() == "Gemm") {
        if (onnx_attr_int(n, "transA", 0) != 0) g_.fail(i, "transA=1 is not a linear layer on activations");
        w_is_out_in = onnx_attr_int(n, "transB", 0) != 0;
        alpha = onnx_attr_float(n, "alpha", 1.0f);
        beta = onnx_attr_float(n, "beta", 1.0f);
      }
      l.out = w_is_out_in ? w->dims[0] : w->dims[1];
      l.in = w_is_out_in ? w->dims[1] : w->dims[0];
      l.weight.resize(w->f.size());
      for (int64_t o = 0; o < l.out; ++o)
        for (int64_t k = 0; k < l.in; ++k)
          l.weight[o * l.in + k] = alpha * (w_is_out_in ? w->f[o * l.in + k] : w->f[k * l.out + o]);
      l.bias.assign(l.out, 0.0f);
      if (n.op_type() == "Gemm" && n.input_size() > 2 && !n.input(2).empty()) {
        const OnnxConst& b = g_.require_const(i, 2, "bias");
        if (b.numel() != l.out || !b.is_float)
          g_.fail(i, "bias has shape " + shape_str(b.dims) + ", expected [" + std::to_string(l.out) + "]");
        for (int64_t o = 0; o < l.out; ++o) l.bias[o] = beta * b.f[o];
      } else if (n.op_type() == "MatMul") {
        auto cons = g_.consumers(l.output);
        if (cons.size() == 1 && g_.op(cons[0]) == "Add") {
          const auto& add = g_.node(cons[0]);
          const std::string& other = add.input(0) == l.output ? add.input(1) : add.input(0);
          const OnnxConst* b = g_.constant(other);
          if (b && b->is_float && b->dims.size() == 1 && b->dims[0] == l.out) {
            l.bias = b->f;
            l.bias_node = cons[0];
            l.output = add.output(0);
          }
        }
      }
      unflatten(l);
      by_output_[l.output] = static_cast<int>(linears_.size());
      linears_.push_back(std::move(l));
    }
  }

  // onnxsim (and some exporters) run a linear on [batch, tokens, in] as Reshape(x, [-1, in]) ->
  // Gemm -> Reshape(y, [batch, tokens, out]). The layer then reads x and, when the second
  // Reshape restores x's leading dims, writes its output; without it (a reshape straight into
  // heads) the rows keep x's leading dims in order, as the flattening keeps them.
  void unflatten(Linear& l) {
    const int flatten = g_.producer(l.input);
    if (flatten < 0 || g_.op(flatten) != "Reshape") return;
    const std::string& x = g_.node(flatten).input(0);
    const PartialInts* shape = g_.shape(x);
    const OnnxConst* target = g_.constant(g_.node(flatten).input(1));
    if (!shape || shape->v.size() < 2 || !target || target->is_float || target->i.size() != 2 ||
        target->i[0] != -1 || target->i[1] != l.in)
      return;
    // x = [lead..., trailing...] with the trailing dims multiplying to `in` (heads x head_dim of
    // the attention output, or the features).
    size_t lead = shape->v.size();
    int64_t product = 1;
    while (lead > 1 && product < l.in && shape->v[lead - 1] && *shape->v[lead - 1] > 0 &&
           !__builtin_mul_overflow(product, *shape->v[lead - 1], &product))
      --lead;
    if (product != l.in) return;
    l.flatten = flatten;
    l.input = x;
    auto cons = g_.consumers(l.output);
    if (cons.size() != 1 || g_.op(cons[0]) != "Reshape") return;
    const OnnxConst* restore = g_.constant(g_.node(cons[0]).input(1));
    if (!restore || restore->is_float || restore->i.size() != lead + 1 || restore->i.back() != l.out) return;
    int inferred = 0;
    for (size_t k = 0; k < lead; ++k) {
      const auto& dim = shape->v[k];
      const int64_t want = restore->i[k];
      const bool known = dim && *dim > 0;
      if (want == -1 && !known) ++inferred;  // the one unknown leading dim (the batch)
      else if (!known || want != *dim) return;
    }
    if (inferred > 1) return;
    l.output = g_.node(cons[0]).output(0);
  }

  // The node that reads a linear's input.
  static int reader(const Linear& l) { return l.flatten >= 0 ? l.flatten : l.node; }

  const Linear* linear_at(const std::string& output) const {
    auto it = by_output_.find(output);
    return it == by_output_.end() ? nullptr : &linears_[it->second];
  }

  // The one linear layer reading t; `what` names the role for the error message.
  const Linear& sole_linear_reading(const std::string& t, int context_node, const std::string& what) {
    auto cons = g_.consumers(t);
    for (const auto& l : linears_)
      if (l.input == t && cons.size() == 1 && cons[0] == reader(l)) return claim(l);
    g_.fail(
        cons.size() == 1 ? cons[0] : context_node,
        "expected " + what + " (a MatMul by a constant weight or a Gemm) as the only reader of '" + t + "'");
  }

  const Linear& claim(const Linear& l) {
    claimed_[l.node] = true;
    if (l.bias_node >= 0) claimed_[l.bias_node] = true;
    return l;
  }

  // --- embeddings ---------------------------------------------------------------------------
  std::string embeddings() {
    std::vector<const onnx::ValueInfoProto*> inputs;
    for (const auto& in : g_.proto().input())
      if (!g_.is_initializer(in.name())) inputs.push_back(&in);
    if (inputs.size() != 1)
      g_.fail("expected exactly one graph input (the image batch), found " + std::to_string(inputs.size()));
    const auto& input = *inputs[0];
    const auto& shape = input.type().tensor_type().shape();
    if (shape.dim_size() != 4)
      g_.fail("graph input '" + input.name() + "' has rank " + std::to_string(shape.dim_size()) +
              ", expected an NCHW image batch");
    auto static_dim = [&](int i) -> int64_t {
      return shape.dim(i).has_dim_value() ? shape.dim(i).dim_value() : 0;
    };

    auto cons = g_.consumers(input.name());
    if (cons.size() != 1 || g_.op(cons[0]) != "Conv")
      g_.fail("graph input '" + input.name() + "' must feed exactly one Conv (the patch embedding)");
    int conv = cons[0];
    claimed_[conv] = true;
    const auto& cn = g_.node(conv);
    const OnnxConst& w = g_.require_const(conv, 1, "patch embedding weight");
    if (w.dims.size() != 4 || w.dims[2] != w.dims[3] || !w.is_float)
      g_.fail(conv, "weight shape " + shape_str(w.dims) + ", expected [C, in_chans, p, p]");
    const int64_t dim = w.dims[0], patch = w.dims[2];
    in_chans_ = w.dims[1];
    if (static_dim(1) && static_dim(1) != in_chans_)
      g_.fail(conv, "weight expects " + std::to_string(in_chans_) + " input channels, graph input has " +
                        std::to_string(static_dim(1)));
    auto ints_or = [&](const char* name, std::vector<int64_t> fallback) {
      return onnx_attr_ints(cn, name).value_or(fallback);
    };
    if (ints_or("strides", {1, 1}) != std::vector<int64_t>{patch, patch} ||
        ints_or("pads", {0, 0, 0, 0}) != std::vector<int64_t>{0, 0, 0, 0} ||
        ints_or("dilations", {1, 1}) != std::vector<int64_t>{1, 1} || onnx_attr_int(cn, "group", 1) != 1)
      g_.fail(conv, "expected a patch embedding: stride == kernel == " + std::to_string(patch) +
                        ", no padding, no dilation, one group");
    std::vector<float> conv_bias(dim, 0.0f);
    if (cn.input_size() > 2 && !cn.input(2).empty()) {
      const OnnxConst& b = g_.require_const(conv, 2, "patch embedding bias");
      if (b.numel() != dim || !b.is_float)
        g_.fail(conv, "bias shape " + shape_str(b.dims) + ", expected [" + std::to_string(dim) + "]");
      conv_bias = b.f;
    }
    put("patch_embed.proj.weight", w.dims, w.f);
    put("patch_embed.proj.bias", {dim}, conv_bias);

    // Conv [B,C,h,w] -> Reshape [B,C,hw] -> Transpose [B,hw,C] -> Concat with the class tokens.
    std::string t = cn.output(0);
    int reshape = sole_consumer(t, conv, "Reshape", "flatten of the patch grid");
    t = g_.node(reshape).output(0);
    int transpose = sole_consumer(t, reshape, "Transpose", "patch tokens transposed to [B, N, C]");
    if (onnx_attr_ints(g_.node(transpose), "perm") != std::vector<int64_t>{0, 2, 1})
      g_.fail(transpose, "expected perm [0, 2, 1]");
    t = g_.node(transpose).output(0);
    int concat = sole_consumer(t, transpose, "Concat", "class token(s) prepended to the patch tokens");
    const auto& cc = g_.node(concat);
    int64_t axis = onnx_attr_int(cc, "axis", 0);
    if (axis != 1 && axis != -2) g_.fail(concat, "expected concatenation along the token axis 1");
    if (cc.input(cc.input_size() - 1) != t)
      g_.fail(concat, "expected the class token(s) before the patch tokens");
    ntok_ = cc.input_size() - 1;
    if (ntok_ < 1 || ntok_ > 2)
      g_.fail(concat, "expected 1 (cls) or 2 (cls, dist) prefix tokens, found " + std::to_string(ntok_));
    for (int k = 0; k < ntok_; ++k) {
      const OnnxConst* tok = token_constant(cc.input(k));
      if (!tok || tok->dims != Shape{1, 1, dim} || !tok->is_float)
        g_.fail(concat, "input '" + cc.input(k) + "' should be a [1, 1, " + std::to_string(dim) +
                            "] token (possibly Expand-ed to the batch)");
      put(k == 0 ? "cls_token" : "dist_token", tok->dims, tok->f);
    }

    auto pos_cons = g_.consumers(cc.output(0));
    if (pos_cons.size() != 1 || g_.op(pos_cons[0]) != "Add")
      g_.fail(concat, "expected the position embedding Add as the only reader of the tokens");
    int pos_add = pos_cons[0];
    claimed_[pos_add] = true;
    const auto& pa = g_.node(pos_add);
    const OnnxConst* pos = g_.constant(pa.input(0) == cc.output(0) ? pa.input(1) : pa.input(0));
    if (!pos || pos->dims.size() != 3 || pos->dims[0] != 1 || pos->dims[2] != dim || !pos->is_float)
      g_.fail(pos_add, "expected a constant [1, T, " + std::to_string(dim) + "] position embedding");
    put("pos_embed", pos->dims, pos->f);

    const int64_t npatch = pos->dims[1] - ntok_;
    const int64_t grid =
        static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(std::max<int64_t>(npatch, 0)))));
    if (npatch <= 0 || grid * grid != npatch)
      g_.fail(pos_add, "position embedding has " + std::to_string(pos->dims[1]) + " tokens: not " +
                           std::to_string(ntok_) + " prefix token(s) plus a square patch grid");
    image_size_ = grid * patch;
    tokens_ = pos->dims[1];
    batch_ = static_dim(0);
    if ((static_dim(2) && static_dim(2) != image_size_) || (static_dim(3) && static_dim(3) != image_size_))
      g_.fail("graph input '" + input.name() + "' is " + std::to_string(static_dim(2)) + "x" +
              std::to_string(static_dim(3)) + " but the position embedding fits " +
              std::to_string(image_size_) + "x" + std::to_string(image_size_) + " images");
    dim_ = dim;
    return pa.output(0);
  }

  int sole_consumer(const std::string& t, int context, const std::string& op, const std::string& what) {
    auto cons = g_.consumers(t);
    if (cons.size() != 1 || g_.op(cons[0]) != op)
      g_.fail(cons.size() == 1 ? cons[0] : context, "expected " + op + " (" + what + ")");
    return cons[0];
  }

  // cls/dist token: a constant, possibly broadcast to the batch with Expand or Tile.
  // (Walked back before it is read: a static-batch export folds Expand(token) to [B, 1, C].)
  const OnnxConst* token_constant(std::string t) {
    for (int p = g_.producer(t); p >= 0; p = g_.producer(t)) {
      const std::string& op = g_.op(p);
      if (op != "Expand" && op != "Tile" && op != "Cast" && op != "Identity") break;
      t = g_.node(p).input(0);
    }
    return g_.constant(t);
  }

  // --- LayerNorm ----------------------------------------------------------------------------
  LayerNorm layernorm_at(const std::string& x, int index) {
    for (int c : g_.consumers(x)) {
      if (g_.op(c) == "LayerNormalization" && g_.node(c).input(0) == x) return fused_layernorm(c);
      if (g_.op(c) == "ReduceMean" && g_.node(c).input(0) == x) return decomposed_layernorm(x, c);
    }
    g_.fail(
        "expected a LayerNorm (LayerNormalization or ReduceMean/Sub/Pow/.../Add) on the token "
        "stream '" +
        x + "' before block " + std::to_string(index) + " or the final norm");
  }

  LayerNorm fused_layernorm(int n) {
    const auto& node = g_.node(n);
    int64_t axis = onnx_attr_int(node, "axis", -1);
    if (axis != -1 && axis != 2) g_.fail(n, "expected normalization over the last axis");
    for (int k = 1; k < node.output_size(); ++k)
      if (!node.output(k).empty() && !g_.consumers(node.output(k)).empty())
        g_.fail(n, "mean/inv_std_dev outputs are used; expected a plain LayerNorm");
    LayerNorm ln;
    ln.nodes = ln.entry_nodes = {n};
    ln.output = node.output(0);
    ln.weight = norm_param(n, 1, "scale");
    ln.bias = node.input_size() > 2 && !node.input(2).empty() ? norm_param(n, 2, "bias")
                                                              : std::vector<float>(dim_, 0.0f);
    ln.eps = onnx_attr_float(node, "epsilon", 1e-5f);
    return finish_layernorm(ln);
  }

  std::vector<float> norm_param(int n, int input, const std::string& what) {
    const OnnxConst& c = g_.require_const(n, input, "LayerNorm " + what);
    if (c.numel() != dim_ || !c.is_float)
      g_.fail(n, "LayerNorm " + what + " has shape " + shape_str(c.dims) + ", expected [" +
                     std::to_string(dim_) + "]");
    return c.f;
  }

  // torch < opset 17: ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div ->
  // Mul(weight) -> Add(bias).
  LayerNorm decomposed_layernorm(const std::string& x, int mean1) {
    LayerNorm ln;
    auto reduce_last_axis = [&](int n) {
      std::vector<int64_t> axes;
      if (g_.opset() >= 18 && g_.node(n).input_size() > 1)
        axes = g_.require_const(n, 1, "axes").ints();
      else
        axes = onnx_attr_ints(g_.node(n), "axes").value_or(std::vector<int64_t>{});
      if ((axes != std::vector<int64_t>{-1} && axes != std::vector<int64_t>{2}) ||
          onnx_attr_int(g_.node(n), "keepdims", 1) != 1)
        g_.fail(n, "expected a mean over the last axis with keepdims (LayerNorm)");
    };
    reduce_last_axis(mean1);
    const std::string& mean = g_.node(mean1).output(0);
    int sub = next_in_pattern(mean, "Sub", mean1, "x - mean");
    if (g_.node(sub).input(0) != x || g_.node(sub).input(1) != mean) g_.fail(sub, "expected x - mean");
    const std::string& centered = g_.node(sub).output(0);
    int pow = -1, div = -1;
    for (int c : g_.consumers(centered)) {
      if (g_.op(c) == "Pow")
        pow = c;
      else if (g_.op(c) == "Div")
        div = c;
      else
        g_.fail(c, "unexpected reader of the centered LayerNorm input");
    }
    if (pow < 0 || div < 0) g_.fail(sub, "expected Pow (variance) and Div (normalization) after x - mean");
    const OnnxConst* two = g_.constant(g_.node(pow).input(1));
    if (!two || two->numel() != 1 || two->scalar() != 2.0) g_.fail(pow, "expected the square (exponent 2)");
    int mean2 = next_in_pattern(g_.node(pow).output(0), "ReduceMean", pow, "variance");
    reduce_last_axis(mean2);
    int add_eps = next_in_pattern(g_.node(mean2).output(0), "Add", mean2, "variance + eps");
    const OnnxConst* eps = other_constant(add_eps, g_.node(mean2).output(0));
    if (!eps || eps->numel() != 1 || !eps->is_float) g_.fail(add_eps, "expected a constant epsilon");
    int sqrt = next_in_pattern(g_.node(add_eps).output(0), "Sqrt", add_eps, "standard deviation");
    if (g_.node(div).input(0) != centered || g_.node(div).input(1) != g_.node(sqrt).output(0))
      g_.fail(div, "expected (x - mean) / sqrt(var + eps)");
    int mul = next_in_pattern(g_.node(div).output(0), "Mul", div, "LayerNorm weight");
    const OnnxConst* w = other_constant(mul, g_.node(div).output(0));
    int add = next_in_pattern(g_.node(mul).output(0), "Add", mul, "LayerNorm bias");
    const OnnxConst* b = other_constant(add, g_.node(mul).output(0));
    for (auto [c, n] : {std::pair{w, mul}, std::pair{b, add}})
      if (!c || c->numel() != dim_ || !c->is_float)
        g_.fail(n, "expected a constant [" + std::to_string(dim_) + "] LayerNorm parameter");
    ln.entry_nodes = {mean1, sub};
    ln.nodes = {mean1, sub, pow, mean2, add_eps, sqrt, div, mul, add};
    ln.output = g_.node(add).output(0);
    ln.weight = w->f;
    ln.bias = b->f;
    ln.eps = eps->f[0];
    return finish_layernorm(ln);
  }

  LayerNorm finish_layernorm(LayerNorm& ln) {
    for (int n : ln.nodes) claimed_[n] = true;
    if (!have_eps_) {
      eps_ = ln.eps;
      have_eps_ = true;
    } else if (std::fabs(ln.eps - eps_) > 1e-6f * eps_) {
      g_.fail(ln.nodes.back(),
              "LayerNorm epsilon " + number(ln.eps) + " differs from the first LayerNorm's " + number(eps_));
    }
    return ln;
  }

  // The one reader of t, which must be `op`.
  int next_in_pattern(const std::string& t, const std::string& op, int from, const std::string& what) {
    auto cons = g_.consumers(t);
    if (cons.size() != 1 || g_.op(cons[0]) != op)
      g_.fail(cons.size() == 1 ? cons[0] : from, "expected " + op + " (" + what + ")");
    return cons[0];
  }

  // The constant operand of binary node n beside `operand`; null for other nodes.
  const OnnxConst* other_constant(int n, const std::string& operand) {
    const auto& node = g_.node(n);
    if (node.input_size() != 2) return nullptr;
    return g_.constant(node.input(0) == operand ? node.input(1) : node.input(0));
  }

  void put_layernorm(const std::string& prefix, const LayerNorm& ln) {
    put(prefix + ".weight", {dim_}, ln.weight);
    put(prefix + ".bias", {dim_}, ln.bias);
  }

  void put_linear(const std::string& prefix, const Linear& l) {
    put(prefix + ".weight", {l.out, l.in}, l.weight);
    put(prefix + ".bias", {l.out}, l.bias);
  }

  // --- transformer block --------------------------------------------------------------------
  std::string block(int index, const std::string& x, const LayerNorm& norm1, const std::vector<int>& others) {
    const std::string prefix = "blocks." + std::to_string(index) + ".";
    int res1 = residual_add(others, x, "attention");
    const auto& r1 = g_.node(res1);
    const std::string& attn_out = r1.input(0) == x ? r1.input(1) : r1.input(0);
    const Linear* proj = linear_at(attn_out);
    if (!proj) g_.fail(res1, "expected the attention output projection added to the residual stream");
    attention(prefix, norm1.output, claim(*proj));
    put_layernorm(prefix + "norm1", norm1);

    const std::string x1 = r1.output(0);
    LayerNorm norm2 = layernorm_at(x1, index);
    std::vector<int> others2;
    for (int c : g_.consumers(x1))
      if (std::find(norm2.entry_nodes.begin(), norm2.entry_nodes.end(), c) == norm2.entry_nodes.end())
        others2.push_back(c);
    int res2 = residual_add(others2, x1, "MLP");
    const Linear& fc1 = sole_linear_reading(norm2.output, norm2.nodes.back(), "the MLP fc1");
    std::string act = gelu(fc1.output, fc1.node);
    const Linear& fc2 = sole_linear_reading(act, fc1.node, "the MLP fc2");
    const auto& r2 = g_.node(res2);
    if (!((r2.input(0) == x1 && r2.input(1) == fc2.output) ||
          (r2.input(1) == x1 && r2.input(0) == fc2.output)))
      g_.fail(res2, "expected the residual Add of the token stream and the MLP output");
    if (fc1.in != dim_ || fc2.out != dim_ || fc2.in != fc1.out)
      g_.fail(fc2.node, "MLP shapes fc1 [" + std::to_string(fc1.out) + ", " + std::to_string(fc1.in) +
                            "], fc2 [" + std::to_string(fc2.out) + ", " + std::to_string(fc2.in) +
                            "] do not chain");
    put_layernorm(prefix + "norm2", norm2);
    put_linear(prefix + "mlp.fc1", fc1);
    put_linear(prefix + "mlp.fc2", fc2);
    return r2.output(0);
  }

  int residual_add(const std::vector<int>& readers, const std::string& x, const std::string& branch) {
    const std::string what =
        "expected only the " + branch + " residual Add and the LayerNorm to read '" + x + "'";
    if (readers.empty()) g_.fail(what);
    if (readers.size() != 1 || g_.op(readers[0]) != "Add") g_.fail(readers[0], what);
    claimed_[readers[0]] = true;
    return readers[0];
  }

  // Exact GELU: a Gelu op (opset 20) or x * (1 + erf(x / sqrt2)) * 0.5 in either Mul order.
  std::string gelu(const std::string& x, int fc1) {
    auto cons = g_.consumers(x);
    if (cons.size() == 1 && g_.op(cons[0]) == "Gelu") {
      const auto* approx = onnx_attr(g_.node(cons[0]), "approximate");
      if (approx && approx->s() != "none")
        g_.fail(cons[0], "tanh-approximated GELU; expected the exact (erf) GELU");
      claimed_[cons[0]] = true;
      return g_.node(cons[0]).output(0);
    }
    const double inv_sqrt2 = 1.0 / std::sqrt(2.0);
    int scale = -1, product = -1;
    for (int c : cons) {
      const auto& n = g_.node(c);
      const OnnxConst* k = other_constant(c, x);
      bool scaled =
          k && k->numel() == 1 &&
          ((n.op_type() == "Div" && n.input(0) == x && std::fabs(k->scalar() - std::sqrt(2.0)) < kConstTolerance) ||
           (n.op_type() == "Mul" && std::fabs(k->scalar() - inv_sqrt2) < kConstTolerance));
      if (scaled)
        scale = c;
      else if (n.op_type() == "Mul")
        product = c;
      else
        g_.fail(c, "expected the exact GELU x * 0.5 * (1 + erf(x / sqrt(2))) after the MLP fc1");
    }
    if (scale < 0 || product < 0 || cons.size() != 2)
      g_.fail(fc1, "expected the exact GELU x * 0.5 * (1 + erf(x / sqrt(2))) after the MLP fc1");
    int erf = next_in_pattern(g_.node(scale).output(0), "Erf", scale, "erf of the exact GELU");
    int one = next_in_pattern(g_.node(erf).output(0), "Add", erf, "1 + erf");
    const OnnxConst* k1 = other_constant(one, g_.node(erf).output(0));
    if (!k1 || k1->numel() != 1 || k1->scalar() != 1.0) g_.fail(one, "expected 1 + erf(x / sqrt(2))");
    // Either (x * (1 + erf)) * 0.5 or (x * 0.5) * (1 + erf).
    int mul = next_in_pattern(g_.node(one).output(0), "Mul", one, "GELU product");
    int half = -1;
    std::string out;
    const std::string& x_side =
        g_.node(mul).input(0) == g_.node(one).output(0) ? g_.node(mul).input(1) : g_.node(mul).input(0);
    if (x_side == x && product == mul) {
      half = next_in_pattern(g_.node(mul).output(0), "Mul", mul, "GELU * 0.5");
      out = g_.node(half).output(0);
      const OnnxConst* h = other_constant(half, g_.node(mul).output(0));
      if (!h || h->numel() != 1 || h->scalar() != 0.5) g_.fail(half, "expected the GELU factor 0.5");
    } else if (const OnnxConst* h = g_.constant(x_side); h && product != mul) {
      // x * ((1 + erf) * 0.5)  (torch.onnx dynamo)
      if (h->numel() != 1 || h->scalar() != 0.5) g_.fail(mul, "expected the GELU factor 0.5");
      half = mul;
      const auto& pn = g_.node(product);
      if (!((pn.input(0) == x && pn.input(1) == g_.node(mul).output(0)) ||
            (pn.input(1) == x && pn.input(0) == g_.node(mul).output(0))))
        g_.fail(product, "expected x * (0.5 * (1 + erf(x / sqrt(2)))) of the exact GELU");
      mul = product;
      out = pn.output(0);
    } else if (g_.producer(x_side) == product) {
      half = product;
      const OnnxConst* h = other_constant(product, x);
      if (!h || h->numel() != 1 || h->scalar() != 0.5) g_.fail(product, "expected x * 0.5 of the GELU");
      out = g_.node(mul).output(0);
    } else {
      g_.fail(mul, "expected x * (1 + erf(x / sqrt(2))) of the exact GELU");
    }
    for (int n : {scale, erf, one, mul, half}) claimed_[n] = true;
    return out;
  }

  // --- attention ----------------------------------------------------------------------------
  // Walks back from the projection through layout ops to softmax(q k^T * scale) v, then from
  // q, k and v back to their linear layer(s), replaying the layout ops to learn which output
  // rows of the linear(s) hold each head's q, k and v.
  void attention(const std::string& prefix, const std::string& normed, const Linear& proj) {
    std::vector<Step> out_path;
    std::string t = trace_back(proj.input, proj.node, out_path,
                               [&](const std::string& s) { return is_attention_matmul(s); });
    int attn_v = g_.producer(t);
    int softmax = g_.producer(skip_nan_guard(skip_casts(g_.node(attn_v).input(0))));
    if (softmax < 0 || g_.op(softmax) != "Softmax")
      g_.fail(attn_v, "expected the attention probabilities (Softmax) as first operand");
    int64_t sm_axis = onnx_attr_int(g_.node(softmax), "axis", -1);
    if (sm_axis != -1 && sm_axis != 3) g_.fail(softmax, "expected softmax over the last axis");
    std::vector<Step> score_path;
    std::string s = trace_back(skip_zero_mask(g_.node(softmax).input(0)), softmax, score_path,
                               [&](const std::string& v) { return is_attention_matmul(v); });
    int attn_qk = g_.producer(s);
    for (int n : {attn_v, softmax, attn_qk}) claimed_[n] = true;

    auto path_to_linear = [&](const std::string& from, int at, std::vector<Step>& steps) -> const Linear& {
      std::string src =
          trace_back(from, at, steps, [&](const std::string& v) { return linear_at(v) != nullptr; });
      const Linear& l = *linear_at(src);
      if (l.input != normed)
        g_.fail(l.node, "expected the q/k/v projection to read the block's first LayerNorm output");
      return claim(l);
    };
    std::vector<Step> q_steps, k_steps, v_steps;
    const Linear& lq = path_to_linear(g_.node(attn_qk).input(0), attn_qk, q_steps);
    const Linear& lk = path_to_linear(g_.node(attn_qk).input(1), attn_qk, k_steps);
    const Linear& lv = path_to_linear(g_.node(attn_v).input(1), attn_v, v_steps);
    AttentionPath q = replay(lq, q_steps), k = replay(lk, k_steps), v = replay(lv, v_steps);
    AttentionPath scores;  // between q k^T and the softmax only scale factors are allowed
    for (const Step& st : score_path) {
      const std::string& op = g_.op(st.node);
      if (op != "Mul" && op != "Div" && op != "Cast" && op != "Identity")
        g_.fail(st.node, "unexpected op between the attention scores and the softmax");
      apply(scores, st);
    }

    // q [B, head, N, d], k [B, head, d, N], v [B, head, N, d]
    auto head_dim = [&](const AttentionPath& p, const Linear& l, bool transposed, const char* name) {
      auto bad = [&]() {
        g_.fail(l.node,
                std::string("the ") + name + " path from this layer does not produce [batch, heads, " +
                    (transposed ? "head_dim, tokens" : "tokens, head_dim") + "] for the attention MatMul");
      };
      if (p.axes.size() != 4 || p.axes[0].role != Role::Batch || p.axes[1].role != Role::Factor) bad();
      const Axis& tok = p.axes[transposed ? 3 : 2];
      const Axis& dim = p.axes[transposed ? 2 : 3];
      if (tok.role != Role::Token || dim.role != Role::Factor) bad();
      return std::pair{p.axes[1].factor, dim.factor};
    };
    auto [qh, qd] = head_dim(q, lq, false, "query");
    auto [kh, kd] = head_dim(k, lk, true, "key");
    auto [vh, vd] = head_dim(v, lv, false, "value");
    const int64_t heads = q.factor_sizes[qh], d = q.factor_sizes[qd];
    if (k.factor_sizes[kh] != heads || k.factor_sizes[kd] != d || v.factor_sizes[vh] != heads ||
        v.factor_sizes[vd] != d)
      g_.fail(attn_v, "query, key and value disagree on heads x head_dim");
    for (const Linear* l : {&lq, &lk, &lv})
      if (l->in != dim_) g_.fail(l->node, "q/k/v projection input size differs from the embedding dim");
    if (heads * d != dim_)
      g_.fail(attn_qk, std::to_string(heads) + " heads x " + std::to_string(d) + " != embedding dim " +
                           std::to_string(dim_));
    if (heads_ && heads_ != heads)
      g_.fail(attn_qk, std::to_string(heads) + " heads, but earlier blocks have " + std::to_string(heads_));
    heads_ = heads;

    check_scale(q, k, v, scores, d, softmax);
    check_output_path(out_path, heads, d, proj);

    // Gather the q|k|v rows (heads-major) into timm's stacked layout.
    std::vector<float> w(3 * dim_ * dim_), b(3 * dim_);
    std::map<int, std::vector<int>> rows_used;  // linear node -> how often each row is taken
    int64_t dst = 0;
    using Part = std::tuple<const AttentionPath*, const Linear*, int, int>;
    for (auto [p, l, fh, fd] : {Part{&q, &lq, qh, qd}, Part{&k, &lk, kh, kd}, Part{&v, &lv, vh, vd}}) {
      auto& used = rows_used[l->node];
      used.resize(l->out, 0);
      for (int64_t row : source_rows(*p, fh, fd, *l)) {
        ++used[row];
        std::copy_n(&l->weight[row * dim_], dim_, &w[dst * dim_]);
        const auto extra = p->bias.find(row);
        b[dst++] = l->bias[row] + (extra == p->bias.end() ? 0.0f : extra->second);
      }
    }
    for (auto& [node, used] : rows_used)
      if (std::any_of(used.begin(), used.end(), [](int n) { return n != 1; }))
        g_.fail(node, "q, k and v do not each take a distinct part of this layer's outputs");
    put(prefix + "attn.qkv.weight", {3 * dim_, dim_}, w);
    put(prefix + "attn.qkv.bias", {3 * dim_}, b);
    put_linear(prefix + "attn.proj", proj);
  }

  bool is_attention_matmul(const std::string& t) {
    int p = g_.producer(t);
    return p >= 0 && g_.op(p) == "MatMul" && !linear_at(t) && !g_.constant(g_.node(p).input(1));
  }

  // torch 2.x SDPA (dynamo) guards the probabilities: Where(IsNaN(p), 0, p). Softmax of finite
  // scores is never NaN, so the guard is the identity; returns p.
  std::string skip_nan_guard(const std::string& t) {
    int w = g_.producer(t);
    if (w < 0 || g_.op(w) != "Where") return t;
    const auto& n = g_.node(w);
    int isnan = g_.producer(n.input(0));
    if (isnan < 0 || g_.op(isnan) != "IsNaN" || g_.node(isnan).input(0) != n.input(2) || !is_zeros(n.input(1)))
      g_.fail(w, "expected the NaN guard Where(IsNaN(p), 0, p) of the attention probabilities");
    return n.input(2);
  }

  // Scores + mask where the mask is all zeros (an all-true boolean mask turned additive by
  // Where(mask, 0, -inf), as transformers 5 passes to SDPA): the mask is a no-op; returns the scores.
  std::string skip_zero_mask(const std::string& t) {
    int a = g_.producer(t);
    if (a < 0 || g_.op(a) != "Add") return t;
    const auto& n = g_.node(a);
    for (int side : {0, 1})
      if (is_zeros(n.input(1 - side)) && !is_zeros(n.input(side))) return n.input(side);
    g_.fail(a, "the attention scores get an additive mask that is not all zeros; masked attention is not supported");
  }

  // t is all zeros: a zero constant, possibly broadcast (Expand) or selected by an all-true mask.
  bool is_zeros(std::string t) {
    while (true) {
      if (const OnnxConst* c = g_.constant(t)) return is_all(*c, false);
      const int p = g_.producer(t);
      if (p < 0) return false;
      const auto& n = g_.node(p);
      if (n.op_type() == "Where") {
        if (!is_all_true(n.input(0))) return false;
        t = n.input(1);
      } else if (n.op_type() == "Expand" || n.op_type() == "Cast" || n.op_type() == "Identity") {
        t = n.input(0);
      } else {
        return false;
      }
    }
  }

  bool is_all_true(std::string t) {
    t = skip_to_constant(t);
    const OnnxConst* c = g_.constant(t);
    return c && c->numel() > 0 && is_all(*c, true);
  }

  // Every value of c is nonzero (nonzero true) or zero (nonzero false).
  static bool is_all(const OnnxConst& c, bool nonzero) {
    if (c.is_float) return std::all_of(c.f.begin(), c.f.end(), [&](float v) { return (v != 0.0f) == nonzero; });
    return std::all_of(c.i.begin(), c.i.end(), [&](int64_t v) { return (v != 0) == nonzero; });
  }

  // Follows Expand / Cast / Identity back to a constant (or to where the chain ends).
  std::string skip_to_constant(std::string t) {
    for (int p = g_.producer(t); !g_.constant(t) && p >= 0 &&
                                 (g_.op(p) == "Expand" || g_.op(p) == "Cast" || g_.op(p) == "Identity");
         p = g_.producer(t))
      t = g_.node(p).input(0);
    return t;
  }

  std::string skip_casts(std::string t) {
    for (int p = g_.producer(t); p >= 0 && (g_.op(p) == "Cast" || g_.op(p) == "Identity"); p = g_.producer(t))
      t = g_.node(p).input(0);
    return t;
  }

  // Follows producers from t through layout and scale ops until stop(t); records the ops in
  // forward order.
  std::string trace_back(std::string t, int context, std::vector<Step>& steps,
                         const std::function<bool(const std::string&)>& stop) {
    static const std::set<std::string> layout = {"Reshape", "Transpose", "Squeeze", "Split", "Gather",
                                                 "Slice", "Cast", "Identity", "Mul", "Div", "Add"};
    std::vector<Step> reversed;
    while (!stop(t)) {
      int p = g_.producer(t);
      if (p < 0) g_.fail(context, "'" + t + "' is not computed from the attention's linear layers");
      if (!layout.count(g_.op(p)))
        g_.fail(p, "unexpected op between the attention MatMuls and their linear layers");
      const auto& n = g_.node(p);
      int out_index =
          static_cast<int>(std::find(n.output().begin(), n.output().end(), t) - n.output().begin());
      reversed.push_back({p, out_index});
      t = data_operand(p);
      context = p;
    }
    steps.insert(steps.end(), reversed.rbegin(), reversed.rend());
    return t;
  }

  // The activation operand of a layout op or of a Mul/Div by a scale.
  std::string data_operand(int p) {
    const auto& n = g_.node(p);
    if (n.op_type() == "Add") {  // a bias: the constant is the other operand
      const bool bias0 = g_.constant(n.input(0)) != nullptr, bias1 = g_.constant(n.input(1)) != nullptr;
      if (bias0 != bias1) return bias0 ? n.input(1) : n.input(0);
      g_.fail(p, "expected a constant bias added to the projection output");
    }
    if (n.op_type() != "Mul" && n.op_type() != "Div") return n.input(0);
    bool scale0 = g_.shape_only(n.input(0)), scale1 = g_.shape_only(n.input(1));
    if (n.op_type() == "Div" && !scale0 && scale1) return n.input(0);
    if (n.op_type() == "Mul" && scale0 != scale1) return scale0 ? n.input(1) : n.input(0);
    g_.fail(p, "expected a multiplication or division of attention activations by a scalar scale");
  }

  // Batch and token axes carry their sizes where the graph fixes them (the token count from the
  // position embedding; the batch only in a static-batch export), so reshape targets that
  // folding turned into constants still name them.
  Axis batch_axis() const { return {Role::Batch, -1, batch_}; }
  Axis token_axis() const { return {Role::Token, -1, tokens_}; }

  AttentionPath replay(const Linear& l, const std::vector<Step>& steps) {
    AttentionPath p;
    p.axes = {batch_axis(), token_axis(), {Role::Features, -1, l.out}};
    known_axes_.emplace(l.input, std::vector<Axis>{batch_axis(), token_axis(), {Role::Features, -1, l.in}});
    for (const Step& s : steps) apply(p, s);
    return p;
  }

  int normalize_axis(int64_t axis, size_t rank, int node) {
    if (axis < 0) axis += static_cast<int64_t>(rank);
    if (axis < 0 || axis >= static_cast<int64_t>(rank)) g_.fail(node, "axis out of range");
    return static_cast<int>(axis);
  }

  // One layout/scale op applied to the axis bookkeeping.
  void apply(AttentionPath& p, const Step& s) {
    const auto& n = g_.node(s.node);
    known_axes_.emplace(data_operand(s.node), p.axes);
    apply_op(p, s);
    known_axes_.emplace(n.output(s.output_index), p.axes);
  }

  void apply_op(AttentionPath& p, const Step& s) {
    const auto& n = g_.node(s.node);
    const std::string& op = n.op_type();
    auto select = [&](int axis, int64_t index, bool keep_axis) {
      Axis& a = p.axes[axis];
      if (a.role != Role::Factor || p.selected.count(a.factor))
        g_.fail(s.node, "selects along an axis that is not the q/k/v split of the projection");
      if (index < 0) index += a.size;
      if (index < 0 || index >= a.size) g_.fail(s.node, "index out of range");
      p.selected[a.factor] = index;
      if (keep_axis)
        a.size = 1;
      else
        p.axes.erase(p.axes.begin() + axis);
    };
    if (op == "Cast" || op == "Identity") return;
    if (op == "Mul" || op == "Div") {
      const std::string& scale = n.input(0) == data_operand(s.node) ? n.input(1) : n.input(0);
      const OnnxConst* c = g_.constant(scale);
      if (!c)
        g_.fail(s.node, "the attention scale '" + scale +
                            "' depends on the batch size or on activations; expected a constant "
                            "computed from weights and shapes");
      if (c->numel() != 1) g_.fail(s.node, "expected a scalar attention scale");
      p.scale *= op == "Mul" ? c->scalar() : 1.0 / c->scalar();
      return;
    }
    if (op == "Transpose") {
      std::vector<int64_t> perm = onnx_attr_ints(n, "perm").value_or(std::vector<int64_t>{});
      if (perm.empty())
        for (size_t i = p.axes.size(); i-- > 0;) perm.push_back(static_cast<int64_t>(i));
      if (perm.size() != p.axes.size()) g_.fail(s.node, "perm rank differs from the tensor rank");
      std::vector<Axis> out;
      for (int64_t i : perm) out.push_back(p.axes.at(normalize_axis(i, p.axes.size(), s.node)));
      p.axes = out;
      return;
    }
    if (op == "Reshape") return reshape(p, s.node);
    if (op == "Split" && p.axes.back().role == Role::Features &&
        normalize_axis(onnx_attr_int(n, "axis", 0), p.axes.size(), s.node) == static_cast<int>(p.axes.size()) - 1)
      return split_features(p, s);
    if (op == "Add") return add_bias(p, s.node);
    if (op == "Split") {
      int axis = normalize_axis(onnx_attr_int(n, "axis", 0), p.axes.size(), s.node);
      if (n.input_size() > 1 && !n.input(1).empty()) {
        auto sizes = g_.require_const(s.node, 1, "split sizes").ints();
        if (std::any_of(sizes.begin(), sizes.end(), [](int64_t v) { return v != 1; }))
          g_.fail(s.node, "expected a split into single slices (q, k, v)");
      }
      if (n.output_size() != p.axes[axis].size) g_.fail(s.node, "expected one output per slice");
      return select(axis, s.output_index, true);
    }
    if (op == "Gather") {
      int axis = normalize_axis(onnx_attr_int(n, "axis", 0), p.axes.size(), s.node);
      const OnnxConst& idx = g_.require_const(s.node, 1, "index");
      if (idx.numel() != 1) g_.fail(s.node, "expected a single index");
      return select(axis, idx.ints()[0], !idx.dims.empty());
    }
    if (op == "Slice") {
      auto starts = g_.require_const(s.node, 1, "starts").ints();
      auto ends = g_.require_const(s.node, 2, "ends").ints();
      std::vector<int64_t> axes = {0}, steps = {1};
      if (n.input_size() > 3 && !n.input(3).empty()) axes = g_.require_const(s.node, 3, "axes").ints();
      if (n.input_size() > 4 && !n.input(4).empty()) steps = g_.require_const(s.node, 4, "steps").ints();
      if (starts.size() != 1 || ends.size() != 1 || axes.size() != 1 || steps != std::vector<int64_t>{1})
        g_.fail(s.node, "expected a unit-step slice along one axis");
      int axis = normalize_axis(axes[0], p.axes.size(), s.node);
      int64_t size = p.axes[axis].size;
      int64_t start = std::clamp(starts[0] < 0 ? starts[0] + size : starts[0], int64_t{0}, size);
      int64_t end = std::clamp(ends[0] < 0 ? ends[0] + size : ends[0], int64_t{0}, size);
      if (end - start != 1) g_.fail(s.node, "expected a slice of one q/k/v part");
      return select(axis, start, true);
    }
    if (op == "Squeeze") {
      std::vector<int64_t> axes;
      if (n.input_size() > 1 && !n.input(1).empty())
        axes = g_.require_const(s.node, 1, "axes").ints();
      else
        for (size_t i = 0; i < p.axes.size(); ++i)
          if (p.axes[i].size == 1) axes.push_back(static_cast<int64_t>(i));
      std::vector<int> drop;
      for (int64_t a : axes) drop.push_back(normalize_axis(a, p.axes.size(), s.node));
      std::sort(drop.rbegin(), drop.rend());
      for (int a : drop) {
        if (p.axes[a].role != Role::Factor || !p.selected.count(p.axes[a].factor) || p.axes[a].size != 1)
          g_.fail(s.node, "squeezes an axis that is not a selected q/k/v slice");
        p.axes.erase(p.axes.begin() + a);
      }
      return;
    }
    g_.fail(s.node, "unexpected op in the attention");
  }

  // onnxsim fuses the q, k and v MatMuls of a block into one: its output features are Split into
  // equal parts, each biased by an Add. A part is a new factor of the rows, selected.
  void split_features(AttentionPath& p, const Step& s) {
    const auto& n = g_.node(s.node);
    Axis& features = p.axes.back();
    const int64_t parts = n.output_size();
    if (n.input_size() > 1 && !n.input(1).empty()) {
      auto sizes = g_.require_const(s.node, 1, "split sizes").ints();
      if (static_cast<int64_t>(sizes.size()) != parts ||
          std::any_of(sizes.begin(), sizes.end(), [&](int64_t v) { return v != sizes[0]; }))
        g_.fail(s.node, "expected a split of the projection features into equal parts");
    }
    if (parts <= 0 || features.size % parts != 0)
      g_.fail(s.node, "splits " + std::to_string(features.size) + " features into " + std::to_string(parts) + " parts");
    p.selected[static_cast<int>(p.factor_sizes.size())] = s.output_index;
    p.factor_sizes.push_back(parts);
    features.size /= parts;
  }

  // A bias added to whole rows of the linear's output, before they are split into heads.
  void add_bias(AttentionPath& p, int node) {
    const auto& n = g_.node(node);
    const OnnxConst* b = g_.constant(n.input(0) == data_operand(node) ? n.input(1) : n.input(0));
    const Axis& features = p.axes.back();
    if (!b || !b->is_float || b->dims.size() != 1 || features.role != Role::Features || b->numel() != features.size)
      g_.fail(node, "expected a [" + std::to_string(features.size) + "] bias added to the projection features");
    // Rows of this part: the selected factors, each of stride (later factors x what is left).
    int64_t base = 0, stride = features.size;
    for (size_t f = p.factor_sizes.size(); f-- > 0;) {
      base += p.selected.at(static_cast<int>(f)) * stride;
      stride *= p.factor_sizes[f];
    }
    for (int64_t j = 0; j < b->numel(); ++j) p.bias[base + j] += b->f[j];
  }

  // Splits the linear's features into (…, H, d) factors, merges (H, d) back into features, or
  // regroups axes (identity reshapes, [B, H, N, d] <-> [B*H, N, d]) when every target entry is
  // a constant or a dimension read off a tensor whose layout is known.
  void reshape(AttentionPath& p, int node) {
    auto target = target_dims(g_.node(node).input(1));
    if (!target) g_.fail(node, "cannot read the target shape");
    const size_t in_rank = p.axes.size(), out_rank = target->size();
    if (p.axes.back().role == Role::Features && out_rank > in_rank) {
      const int64_t features = p.axes.back().size;
      std::vector<int64_t> factors;
      int inferred = -1;
      for (size_t i = in_rank - 1; i < out_rank; ++i) {
        const Dim& v = (*target)[i];
        if (v.kind == Dim::Value && v.value == -1 && inferred < 0) {
          inferred = static_cast<int>(factors.size());
          factors.push_back(1);
          continue;
        }
        if (v.kind != Dim::Value || v.value <= 0)
          g_.fail(node, "expected constant sizes for the split of the projection features");
        factors.push_back(v.value);
      }
      auto product = [&]() {
        int64_t n = 1;
        for (int64_t f : factors)
          if (__builtin_mul_overflow(n, f, &n)) return int64_t{-1};
        return n;
      };
      if (inferred >= 0 && product() > 0 && features % product() == 0) factors[inferred] = features / product();
      if (product() != features)
        g_.fail(node, "splits " + std::to_string(features) + " features into " + shape_str(factors));
      p.axes.pop_back();
      // After a Split of the features (below) the new factors subdivide what is left.
      const int first = static_cast<int>(p.factor_sizes.size());
      for (size_t i = 0; i < factors.size(); ++i) {
        p.factor_sizes.push_back(factors[i]);
        p.axes.push_back({Role::Factor, first + static_cast<int>(i), factors[i]});
      }
      return;
    }
    if (out_rank + 1 == in_rank && in_rank >= 2) {
      const Axis& a = p.axes[in_rank - 2];
      const Axis& b = p.axes[in_rank - 1];
      if (a.role == Role::Factor && b.role == Role::Factor && a.factor == 0 && b.factor == 1) {
        p.axes.resize(in_rank - 2);
        p.axes.push_back({Role::Features, -1, a.size * b.size});
        return;
      }
    }
    if (auto regrouped = regroup(p.axes, *target)) {
      p.axes = std::move(*regrouped);
      return;
    }
    g_.fail(node,
            "expected a split of the projection features into constant sizes, a merge of [heads, "
            "head_dim] at the end of [batch, tokens, heads, head_dim], or a regrouping of axes whose "
            "sizes the target names");
  }

  static void flatten(const Axis& a, std::vector<Axis>& out) {
    if (a.role == Role::Merged)
      for (const Axis& p : a.parts) flatten(p, out);
    else
      out.push_back(a);
  }

  // The reshape of `axes` to `target` as a regrouping of the same axes, or nullopt.
  std::optional<std::vector<Axis>> regroup(const std::vector<Axis>& axes, const Dims& target) {
    std::vector<Axis> atoms;
    for (const Axis& a : axes) flatten(a, atoms);
    // What each entry must cover: a list of axes (Ref), a constant size, or the rest (-1).
    struct Want {
      bool infer = false;
      bool constant = false;
      int64_t size = 0;
      std::vector<Axis> axes;
    };
    std::vector<Want> wants;
    int infer = -1;
    for (const Dim& d : target) {
      Want w;
      if (d.kind == Dim::Value && d.value == -1 && infer < 0) {
        w.infer = true;
        infer = static_cast<int>(wants.size());
      } else if (d.kind == Dim::Value && d.value > 0) {
        w.constant = true;
        w.size = d.value;
      } else if (d.kind == Dim::Ref) {
        auto it = known_axes_.find(d.tensor);
        if (it == known_axes_.end()) return std::nullopt;
        int64_t idx = d.index < 0 ? d.index + static_cast<int64_t>(it->second.size()) : d.index;
        if (idx < 0 || idx >= static_cast<int64_t>(it->second.size())) return std::nullopt;
        flatten(it->second[idx], w.axes);
      } else {
        return std::nullopt;
      }
      wants.push_back(std::move(w));
    }
    auto same = [](const Axis& a, const Axis& b) {
      if (a.role == Role::Batch || a.role == Role::Token) return a.role == b.role;
      bool sized_a = a.role == Role::Factor || a.role == Role::Features;
      bool sized_b = b.role == Role::Factor || b.role == Role::Features;
      return sized_a && sized_b && a.size == b.size;
    };
    // Atoms [lo, hi) covered by one entry starting at `pos` going `dir` (+1 / -1); -1 if none.
    auto take = [&](const Want& w, const std::vector<Axis>& seq, size_t pos) -> int {
      if (!w.constant) {
        if (pos + w.axes.size() > seq.size()) return -1;
        for (size_t i = 0; i < w.axes.size(); ++i)
          if (!same(seq[pos + i], w.axes[i])) return -1;
        return static_cast<int>(w.axes.size());
      }
      // A constant covers the next atoms whose sizes multiply to it (at least one atom).
      int64_t product = 1;
      size_t i = pos;
      do {
        if (i >= seq.size() || seq[i].size <= 0 || __builtin_mul_overflow(product, seq[i].size, &product)) return -1;
        ++i;
      } while (product < w.size);
      return product == w.size ? static_cast<int>(i - pos) : -1;
    };
    const size_t n = wants.size();
    const size_t left_end = infer < 0 ? n : static_cast<size_t>(infer);
    std::vector<std::vector<Axis>> groups(n);
    size_t pos = 0;
    for (size_t e = 0; e < left_end; ++e) {
      int k = take(wants[e], atoms, pos);
      if (k < 0) return std::nullopt;
      groups[e].assign(atoms.begin() + pos, atoms.begin() + pos + k);
      pos += k;
    }
    size_t end = atoms.size();
    if (infer >= 0) {
      std::vector<Axis> rev(atoms.rbegin(), atoms.rend());
      size_t rpos = 0;
      for (size_t e = n; e-- > left_end + 1;) {
        Want w = wants[e];
        std::reverse(w.axes.begin(), w.axes.end());
        int k = take(w, rev, rpos);
        if (k < 0) return std::nullopt;
        groups[e].assign(atoms.begin() + (atoms.size() - rpos - k), atoms.begin() + (atoms.size() - rpos));
        rpos += k;
      }
      end = atoms.size() - rpos;
      if (end <= pos) return std::nullopt;
      groups[infer].assign(atoms.begin() + pos, atoms.begin() + end);
      pos = atoms.size();
    }
    if (pos != atoms.size()) return std::nullopt;
    std::vector<Axis> out;
    for (auto& g : groups) {
      if (g.size() == 1)
        out.push_back(g[0]);
      else
        out.push_back({Role::Merged, -1, 0, std::move(g)});
    }
    return out;
  }

  // Reshape targets are Concat-ed constants and dimensions read off tensors (Shape, possibly
  // sliced or gathered, Unsqueeze-d scalars).
  std::optional<Dims> target_dims(const std::string& value, int depth = 0) {
    // Exporters nest a Concat or two; a deeper chain is not a reshape target we know.
    if (depth > kMaxTargetDepth) return std::nullopt;
    const std::string t = skip_casts(value);
    if (const OnnxConst* c = g_.constant(t)) {
      if (c->dims.size() > 1) return std::nullopt;
      Dims out;
      for (int64_t v : c->ints()) out.push_back({Dim::Value, v});
      return out;
    }
    int p = g_.producer(t);
    if (p < 0) return std::nullopt;
    const auto& n = g_.node(p);
    const std::string& op = n.op_type();
    if (op == "Concat") {
      Dims out;
      for (const auto& in : n.input()) {
        auto part = target_dims(in, depth + 1);
        if (!part) return std::nullopt;
        out.insert(out.end(), part->begin(), part->end());
      }
      return out;
    }
    if (op == "Shape") {  // of a tensor on an attention path, whose rank is known
      auto it = known_axes_.find(n.input(0));
      if (it == known_axes_.end()) return std::nullopt;
      const int64_t rank = static_cast<int64_t>(it->second.size());
      int64_t start = onnx_attr_int(n, "start", 0), end = onnx_attr_int(n, "end", rank);
      start = std::clamp<int64_t>(start < 0 ? start + rank : start, 0, rank);
      end = std::clamp<int64_t>(end < 0 ? end + rank : end, 0, rank);
      Dims out;
      for (int64_t i = start; i < end; ++i) out.push_back({Dim::Ref, 0, n.input(0), i});
      return out;
    }
    if (op == "Slice") {
      auto v = target_dims(n.input(0), depth + 1);
      const OnnxConst* st = g_.constant(n.input(1));
      const OnnxConst* en = g_.constant(n.input(2));
      if (!v || !st || !en || st->numel() != 1 || en->numel() != 1) return std::nullopt;
      if (n.input_size() > 3 && !n.input(3).empty()) {
        const OnnxConst* ax = g_.constant(n.input(3));
        if (!ax || ax->numel() != 1 || (ax->ints()[0] != 0 && ax->ints()[0] != -1)) return std::nullopt;
      }
      if (n.input_size() > 4 && !n.input(4).empty()) {
        const OnnxConst* sp = g_.constant(n.input(4));
        if (!sp || sp->ints() != std::vector<int64_t>{1}) return std::nullopt;
      }
      const int64_t size = static_cast<int64_t>(v->size());
      int64_t b = st->ints()[0], e = en->ints()[0];
      if (b < 0) b += size;
      if (e < 0) e += size;
      b = std::clamp<int64_t>(b, 0, size);
      e = std::clamp<int64_t>(e, 0, size);
      Dims out;
      for (int64_t i = b; i < e; ++i) out.push_back((*v)[i]);
      return out;
    }
    if (op == "Unsqueeze") {
      auto d = scalar_dim(n.input(0), depth + 1);
      if (!d) return std::nullopt;
      return Dims{*d};
    }
    if (op == "Gather") {
      auto v = target_dims(n.input(0), depth + 1);
      const OnnxConst* idx = g_.constant(n.input(1));
      if (!v || !idx || idx->dims.size() != 1 || onnx_attr_int(n, "axis", 0) != 0) return std::nullopt;
      Dims out;
      for (int64_t i : idx->ints()) {
        if (i < 0) i += static_cast<int64_t>(v->size());
        if (i < 0 || i >= static_cast<int64_t>(v->size())) return std::nullopt;
        out.push_back((*v)[i]);
      }
      return out;
    }
    return std::nullopt;
  }

  // A scalar target entry: a constant, Gather(Shape(x), i) naming a dimension, or other shape
  // arithmetic (Unknown: the batch times something, say).
  std::optional<Dim> scalar_dim(const std::string& value, int depth) {
    const std::string t = skip_casts(value);
    if (const OnnxConst* c = g_.constant(t)) {
      if (c->numel() != 1) return std::nullopt;
      return Dim{Dim::Value, c->ints()[0]};
    }
    int p = g_.producer(t);
    if (p >= 0 && g_.op(p) == "Gather") {
      const auto& n = g_.node(p);
      const OnnxConst* idx = g_.constant(n.input(1));
      if (idx && idx->dims.empty() && onnx_attr_int(n, "axis", 0) == 0) {
        int sp = g_.producer(n.input(0));
        if (sp >= 0 && g_.op(sp) == "Shape" && !onnx_attr(g_.node(sp), "start") &&
            !onnx_attr(g_.node(sp), "end") && idx->ints()[0] >= 0)
          return Dim{Dim::Ref, 0, g_.node(sp).input(0), idx->ints()[0]};
        if (auto v = target_dims(n.input(0), depth + 1)) {
          int64_t i = idx->ints()[0];
          if (i < 0) i += static_cast<int64_t>(v->size());
          if (i >= 0 && i < static_cast<int64_t>(v->size())) return (*v)[i];
        }
      }
    }
    if (g_.shape_only(t)) return Dim{};
    return std::nullopt;
  }

  // The attention scale must be d^-0.5: the product of the folded factors on q, k and the
  // scores, however the exporter wrote them (q * s @ k^T, (q @ k^T) / sqrt(d), torch 2.x SDPA's
  // sqrt(1/sqrt(d)) on each of q and k^T, Pow(d, -0.5) from Shape, ...).
  void check_scale(const AttentionPath& q, const AttentionPath& k, const AttentionPath& v,
                   const AttentionPath& scores, int64_t d, int softmax) {
    if (v.scale != 1.0) g_.fail(softmax, "the value path is scaled; expected plain v");
    const double scale = q.scale * k.scale * scores.scale;
    const double expected = 1.0 / std::sqrt(static_cast<double>(d));
    if (std::fabs(scale - expected) <= kConstTolerance * expected) return;
    std::ostringstream os;
    os << "attention scale " << scale << "; expected head_dim^-0.5 = " << expected;
    g_.fail(softmax, os.str());
  }

  // probs @ v is [B, H, N, d]; it must reach the projection as [B, N, H*d], heads-major.
  void check_output_path(const std::vector<Step>& steps, int64_t heads, int64_t d, const Linear& proj) {
    AttentionPath p;
    p.axes = {batch_axis(), {Role::Factor, 0, heads}, token_axis(), {Role::Factor, 1, d}};
    p.factor_sizes = {heads, d};
    for (const Step& s : steps) {
      const std::string& op = g_.op(s.node);
      if (op != "Transpose" && op != "Reshape" && op != "Cast" && op != "Identity")
        g_.fail(s.node, "unexpected op between the attention and its output projection");
      apply(p, s);
    }
    // A flattening projection (Reshape to [-1, C]) merges [heads, head_dim] itself.
    const bool merged_by_flatten = proj.flatten >= 0 && p.axes.size() == 4 && p.axes[2].role == Role::Factor &&
                                   p.axes[2].factor == 0 && p.axes[3].role == Role::Factor && p.axes[3].factor == 1;
    if (merged_by_flatten) p.axes = {p.axes[0], p.axes[1], {Role::Features, -1, heads * d}};
    if (p.axes.size() != 3 || p.axes[0].role != Role::Batch || p.axes[1].role != Role::Token ||
        p.axes[2].role != Role::Features || proj.in != dim_)
      g_.fail(proj.node,
              "the attention output does not reach the projection as [batch, tokens, heads*head_dim]");
  }

  // Output rows of the linear that hold q (or k, v) for head h, component j, in timm order h*d+j.
  std::vector<int64_t> source_rows(const AttentionPath& p, int head_factor, int dim_factor, const Linear& l) {
    const auto& sizes = p.factor_sizes;
    std::vector<int64_t> stride(sizes.size(), 1);
    for (size_t i = sizes.size() - 1; i-- > 0;) stride[i] = stride[i + 1] * sizes[i + 1];
    int64_t base = 0;
    for (size_t f = 0; f < sizes.size(); ++f) {
      if (static_cast<int>(f) == head_factor || static_cast<int>(f) == dim_factor) continue;
      auto it = p.selected.find(static_cast<int>(f));
      if (it == p.selected.end())
        g_.fail(l.node, "part of this layer's output is never split into q, k or v");
      base += it->second * stride[f];
    }
    std::vector<int64_t> rows;
    for (int64_t h = 0; h < sizes[head_factor]; ++h)
      for (int64_t j = 0; j < sizes[dim_factor]; ++j)
        rows.push_back(base + h * stride[head_factor] + j * stride[dim_factor]);
    return rows;
  }

  // --- classifier ---------------------------------------------------------------------------
  // head on token 0 (and head_dist on token 1 of distilled models, averaged with head).
  void classifier(const std::string& y) {
    std::map<int64_t, const Linear*> heads;
    for (int c : g_.consumers(y)) {
      int64_t token = token_index(c, y);
      std::string t = g_.node(c).output(0);
      claimed_[c] = true;
      while (!linear_at_input(t)) {  // a Slice leaves [B, 1, C] to squeeze
        auto cons = g_.consumers(t);
        if (cons.size() != 1) g_.fail(c, "expected a classifier head on the selected token");
        const std::string& op = g_.op(cons[0]);
        if (op != "Squeeze" && op != "Reshape" && op != "Flatten" && op != "Identity")
          g_.fail(cons[0], "expected a classifier head (Gemm/MatMul) on the selected token");
        t = g_.node(cons[0]).output(0);
      }
      if (heads.count(token)) g_.fail(c, "token " + std::to_string(token) + " feeds two heads");
      heads[token] = &claim(*linear_at_input(t));
    }
    if (static_cast<int>(heads.size()) != ntok_ || !heads.count(0) || (ntok_ == 2 && !heads.count(1)))
      g_.fail("expected " +
              std::string(ntok_ == 2 ? "heads on the class and distillation tokens (0 and 1)"
                                     : "a head on the class token (0)") +
              " after the final LayerNorm");
    const Linear& head = *heads[0];
    if (head.in != dim_) g_.fail(head.node, "head input size differs from the embedding dim");
    put_linear("head", head);
    std::string logits = head.output;
    if (ntok_ == 2) {
      const Linear& dist = *heads[1];
      if (dist.in != dim_ || dist.out != head.out) g_.fail(dist.node, "head_dist shape differs from head");
      put_linear("head_dist", dist);
      int add = next_in_pattern(head.output, "Add", head.node, "head + head_dist");
      const auto& a = g_.node(add);
      if (!((a.input(0) == head.output && a.input(1) == dist.output) ||
            (a.input(1) == head.output && a.input(0) == dist.output)))
        g_.fail(add, "expected head + head_dist");
      auto cons = g_.consumers(a.output(0));
      const OnnxConst* k = cons.size() == 1 ? other_constant(cons[0], a.output(0)) : nullptr;
      bool mean =
          k && k->numel() == 1 &&
          ((g_.op(cons[0]) == "Div" && g_.node(cons[0]).input(0) == a.output(0) && k->scalar() == 2.0) ||
           (g_.op(cons[0]) == "Mul" && k->scalar() == 0.5));
      if (!mean) g_.fail(add, "expected the mean of head and head_dist ((a + b) / 2)");
      claimed_[add] = claimed_[cons[0]] = true;
      logits = g_.node(cons[0]).output(0);
    }
    const auto& outs = g_.proto().output();
    if (std::none_of(outs.begin(), outs.end(), [&](const auto& o) { return o.name() == logits; }) &&
        !is_identity_to_output(logits))
      g_.fail("the classifier output '" + logits + "' is not a graph output");
  }

  const Linear* linear_at_input(const std::string& t) {
    auto cons = g_.consumers(t);
    if (cons.size() != 1) return nullptr;
    for (const auto& l : linears_)
      if (reader(l) == cons[0] && l.input == t) return &l;
    return nullptr;
  }

  bool is_identity_to_output(const std::string& t) {
    auto cons = g_.consumers(t);
    if (cons.size() != 1 || g_.op(cons[0]) != "Identity") return false;
    const std::string& out = g_.node(cons[0]).output(0);
    const auto& outs = g_.proto().output();
    return std::any_of(outs.begin(), outs.end(), [&](const auto& o) { return o.name() == out; });
  }

  // Which token a Gather (x[:, i]) or Slice (x[:, i:i+1]) on the final norm output selects.
  int64_t token_index(int c, const std::string& y) {
    const auto& n = g_.node(c);
    if (n.input(0) != y) g_.fail(c, "expected a token selection on the final norm output");
    if (n.op_type() == "Gather") {
      int64_t axis = onnx_attr_int(n, "axis", 0);
      const OnnxConst* idx = g_.constant(n.input(1));
      if ((axis == 1 || axis == -2) && idx && idx->numel() == 1 && idx->dims.empty() && idx->ints()[0] >= 0)
        return idx->ints()[0];
    } else if (n.op_type() == "Slice" && n.input_size() >= 4) {
      const OnnxConst* s = g_.constant(n.input(1));
      const OnnxConst* e = g_.constant(n.input(2));
      const OnnxConst* a = g_.constant(n.input(3));
      bool unit_step =
          n.input_size() < 5 || n.input(4).empty() ||
          (g_.constant(n.input(4)) && g_.constant(n.input(4))->ints() == std::vector<int64_t>{1});
      if (s && e && a && s->numel() == 1 && e->numel() == 1 && a->numel() == 1 && unit_step &&
          (a->ints()[0] == 1 || a->ints()[0] == -2) && s->ints()[0] >= 0 && e->ints()[0] == s->ints()[0] + 1)
        return s->ints()[0];
    }
    g_.fail(c, "expected the classifier on the class token (x[:, 0]); other pooling is not supported");
  }

  void put(const std::string& name, Shape shape, std::vector<float> values) {
    if (out_.count(name)) g_.fail("tensor '" + name + "' recognized twice");
    if (shape_numel(shape) != static_cast<int64_t>(values.size()))
      g_.fail("tensor '" + name + "' has " + std::to_string(values.size()) + " values for shape " +
              shape_str(shape));
    out_.emplace(name, std::pair{std::move(shape), std::move(values)});
  }

  OnnxGraph& g_;
  std::vector<bool> claimed_;
  std::vector<Linear> linears_;
  std::map<std::string, int> by_output_;
  std::map<std::string, std::pair<Shape, std::vector<float>>> out_;
  std::map<std::string, std::vector<Axis>> known_axes_;  // layouts of tensors on attention paths
  int64_t dim_ = 0, heads_ = 0, image_size_ = 0, in_chans_ = 0, tokens_ = 0, batch_ = 0;
  int ntok_ = 0;
  float eps_ = 0;
  bool have_eps_ = false;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open ONNX file");
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw Error(path + ": read error");
  if (data.empty()) throw Error(path + ": file is empty, expected an ONNX model");
  return data;
}

}  // namespace

WeightStore load_onnx_vit(const std::string& path, OnnxVitInfo* info) {
  std::string data = read_file(path);
  onnx::ModelProto model;
  if (data.size() > static_cast<size_t>(INT32_MAX) ||
      !model.ParseFromArray(data.data(), static_cast<int>(data.size())))
    throw Error(path + ": not a valid ONNX model (protobuf parse failed: truncated or corrupt file)");
  data.clear();
  data.shrink_to_fit();
  if (!model.has_graph() || model.graph().node_size() == 0 || model.ir_version() <= 0)
    throw Error(path + ": not an ONNX model (no ir_version or empty graph)");

  int opset = 0;
  for (const auto& o : model.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx") opset = static_cast<int>(o.version());
  if (opset < kMinOpset || opset > kMaxOpset)
    throw Error(path + ": opset " + std::to_string(opset) + " is not supported (ViT exports with opset " +
                std::to_string(kMinOpset) + ".." + std::to_string(kMaxOpset) + " are)");

  OnnxVitInfo local;
  OnnxVitInfo* out = info ? info : &local;
  WeightStore store;
  try {
    OnnxGraph graph(model, path, opset);
    store = Recognizer(graph).run(out);
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.rfind(path, 0) == 0) throw;
    throw Error(path + ": " + what);  // every message names the file
  }
  out->opset = opset;
  out->producer =
      model.producer_name() + (model.producer_version().empty() ? "" : " " + model.producer_version());
  return store;
}

}  // namespace shiftadd
