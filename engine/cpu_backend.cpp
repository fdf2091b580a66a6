// The CPU backends: one dispatch from graph nodes to kernels, instantiated over the optimized
// kernels (cpu::) and over the plain references (ref::).
#include <algorithm>

#include "engine/backend.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kernels.h"

namespace shiftadd {
namespace {

using namespace kernels;

// Kernel arguments for a node, shared by both instantiations.
GemmArgs linear_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& in = g.sample_shape(n.inputs[0]);
  const Tensor& w = n.weights[0];
  GemmArgs a;
  a.M = b.batch * shape_numel(in) / in.back();
  a.K = in.back();
  a.N = w.dim(0);
  a.A = b.in[0];
  a.lda = a.K;
  a.B = w.data<float>();
  a.ldb = a.K;
  a.b_is_nk = true;
  a.C = b.out;
  a.ldc = a.N;
  a.epi.bias = n.weights[1].defined() ? n.weights[1].data<float>() : nullptr;
  a.epi.gelu = n.p.gelu;
  if (n.inputs.size() > 1) {
    a.epi.residual = b.in[1];
    a.epi.ldr = a.N;
  }
  return a;
}

AttentionArgs attention_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  AttentionArgs a;
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
    a.v = b.in[1] + C;
    a.k_ld = a.v_ld = 2 * C;
    a.k_bstride = a.v_bstride = a.Nkv * 2 * C;
  } else {  // q|k|v [N, 3C]
    const Shape& s = g.sample_shape(n.inputs[0]);
    const int64_t N = s[0];
    C = s[1] / 3;
    a.Nq = a.Nkv = N;
    a.q = b.in[0];
    a.k = b.in[0] + C;
    a.v = b.in[0] + 2 * C;
    a.q_ld = a.k_ld = a.v_ld = 3 * C;
    a.q_bstride = a.k_bstride = a.v_bstride = N * 3 * C;
  }
  a.d = C / n.p.heads;
  a.out = b.out;
  a.o_ld = C;
  a.o_bstride = a.Nq * C;
  return a;
}

Conv2dArgs conv_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);  // [Cin, H, W], or [H*W, Cin] with a grid
  const Tensor& w = n.weights[0];
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
  a.bias = n.weights[1].numel() > 0 ? n.weights[1].data<float>() : nullptr;
  a.out = b.out;
  return a;
}

DwConv3x3Args dwconv_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  DwConv3x3Args a;
  a.B = b.batch;
  a.H = n.p.grid_h;
  a.W = n.p.grid_w;
  a.C = g.sample_shape(n.inputs[0])[1];
  a.x = b.in[0];
  a.w = n.weights[0].data<float>();
  a.bias = n.weights[1].defined() && n.weights[1].numel() > 0 ? n.weights[1].data<float>() : nullptr;
  a.gelu = n.p.gelu;
  a.out = b.out;
  return a;
}

MeanTokensArgs mean_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);  // [N, C]
  MeanTokensArgs a;
  a.B = b.batch;
  a.N = s[0];
  a.C = s[1];
  a.x = b.in[0];
  a.out = b.out;
  return a;
}

EmbedTokensArgs embed_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);  // [Np, C]
  EmbedTokensArgs a;
  a.B = b.batch;
  a.Np = s[0];
  a.C = s[1];
  a.P = n.weights[0].defined() ? n.weights[0].numel() / s[1] : 0;
  a.patches = b.in[0];
  a.prefix = a.P ? n.weights[0].data<float>() : nullptr;
  a.pos = n.weights[1].defined() ? n.weights[1].data<float>() : nullptr;
  a.out = b.out;
  return a;
}

LayerNormArgs layernorm_args(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);
  LayerNormArgs a;
  a.cols = s.back();
  a.rows = b.batch * shape_numel(s) / a.cols;
  a.x = b.in[0];
  a.ldx = a.cols;
  a.gamma = n.weights[0].data<float>();
  a.beta = n.weights[1].data<float>();
  a.eps = n.p.eps;
  a.y = b.out;
  a.ldy = a.cols;
  return a;
}

// Copies tokens [first, first+count) of every sample: a strided row copy.
void take_tokens(const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.inputs[0]);
  const int64_t C = s[1];
  for (int64_t i = 0; i < b.batch; ++i)
    std::copy_n(b.in[0] + (i * s[0] + n.p.first) * C, n.p.count * C, b.out + i * n.p.count * C);
}

int64_t out_numel(const Graph& g, const Node& n, int64_t batch) {
  return batch * shape_numel(g.sample_shape(n.output));
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads) {}
  const char* name() const override { return "cpu"; }

  bool supports_op(const Graph&, const Node& n, std::string* why) const override {
    if (n.op < OpKind::Count) return true;
    if (why) *why = "no CPU kernel";
    return false;
  }

  void reserve(const Graph& g, const Node& n, int64_t batch) override {
    NodeBuffers b;
    b.batch = batch;
    size_t bytes = 0;
    switch (n.op) {
      case OpKind::Linear: bytes = cpu::gemm_scratch_bytes(); break;
      case OpKind::Attention: bytes = cpu::attention_scratch_bytes(attention_args(g, n, b)); break;
      case OpKind::Conv2d: bytes = cpu::conv2d_scratch_bytes(conv_args(g, n, b)); break;
      default: break;
    }
    pool_.reserve_scratch(bytes);
  }

  void run(const Graph& g, const Node& n, const NodeBuffers& b) override {
    switch (n.op) {
      case OpKind::Input: break;
      case OpKind::Conv2d: cpu::conv2d(conv_args(g, n, b), pool_); break;
      case OpKind::EmbedTokens: cpu::embed_tokens(embed_args(g, n, b), pool_); break;
      case OpKind::LayerNorm: cpu::layernorm(layernorm_args(g, n, b), pool_); break;
      case OpKind::Linear: cpu::gemm(linear_args(g, n, b), pool_); break;
      case OpKind::Attention: cpu::attention(attention_args(g, n, b), pool_); break;
      case OpKind::Add:
        cpu::add(out_numel(g, n, b.batch), b.in[0], b.in[1], n.p.alpha, b.out, pool_);
        break;
      case OpKind::TakeTokens: take_tokens(g, n, b); break;
      case OpKind::DwConv3x3: cpu::dwconv3x3(dwconv_args(g, n, b), pool_); break;
      case OpKind::MeanTokens: cpu::mean_tokens(mean_args(g, n, b), pool_); break;
      case OpKind::Count: break;
    }
  }

 private:
  ThreadPool pool_;
};

class RefBackend final : public Backend {
 public:
  const char* name() const override { return "ref"; }
  bool supports_op(const Graph&, const Node& n, std::string* why) const override {
    return n.op < OpKind::Count;
  }
  void reserve(const Graph&, const Node&, int64_t) override {}
  void run(const Graph& g, const Node& n, const NodeBuffers& b) override {
    switch (n.op) {
      case OpKind::Input: break;
      case OpKind::Conv2d: ref::conv2d(conv_args(g, n, b)); break;
      case OpKind::EmbedTokens: ref::embed_tokens(embed_args(g, n, b)); break;
      case OpKind::LayerNorm: ref::layernorm(layernorm_args(g, n, b)); break;
      case OpKind::Linear: ref::gemm(linear_args(g, n, b)); break;
      case OpKind::Attention: ref::attention(attention_args(g, n, b)); break;
      case OpKind::Add: ref::add(out_numel(g, n, b.batch), b.in[0], b.in[1], n.p.alpha, b.out); break;
      case OpKind::TakeTokens: take_tokens(g, n, b); break;
      case OpKind::DwConv3x3: ref::dwconv3x3(dwconv_args(g, n, b)); break;
      case OpKind::MeanTokens: ref::mean_tokens(mean_args(g, n, b)); break;
      case OpKind::Count: break;
    }
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  return std::make_unique<CpuBackend>(threads);
}
std::unique_ptr<Backend> make_ref_backend() { return std::make_unique<RefBackend>(); }

}  // namespace shiftadd
