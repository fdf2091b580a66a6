// The CPU backends: one dispatch from graph nodes to kernels, instantiated over the optimized
// kernels (cpu::) and over the plain references (ref::).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include "engine/backend.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/shift_kernels.h"

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

// ----- ShiftAddViT ops: shift linear, MoE linear, KSH attention ---------------------------
// The same orchestration runs over both kernel sets through a small adapter (`K`): cpu::
// kernels with the pool, or ref:: kernels. Per-run buffers (codes, normalised qk, MoE plan and
// gathered rows) live in `ShiftWork`, sized at reserve time for the worst case, so a run
// allocates nothing (the ref kernels themselves may).

constexpr size_t align64(size_t n) { return (n + 63) / 64 * 64; }

struct ShiftWork {
  std::vector<std::byte> buf;
  std::vector<std::array<int64_t, 2>> expert_tokens;  // per node index
  kernels::ShiftMode mode = kernels::ShiftMode::Exact;

  std::byte* data() { return buf.data(); }
};

int64_t rows_of(const Graph& g, const Node& n, int64_t batch) {
  const Shape& in = g.sample_shape(n.inputs[0]);
  return batch * shape_numel(in) / in.back();
}

ShiftLinearArgs shift_args(const Graph& g, const Node& n, const NodeBuffers& b, ShiftMode mode) {
  ShiftLinearArgs a;
  const Tensor& codes = n.weights[0];
  a.M = rows_of(g, n, b.batch);
  a.K = codes.dim(1);
  a.N = codes.dim(0);
  a.x = b.in[0];
  a.ldx = a.K;
  a.codes = codes.data<uint8_t>();
  a.ldw = a.K;
  a.bias = n.weights[1].defined() && n.weights[1].numel() > 0 ? n.weights[1].data<float>() : nullptr;
  a.y = b.out;
  a.ldy = a.N;
  a.mode = mode;
  return a;
}

// MoE layout in the work buffer: expert[M] u8 | perm[M] i32 | gathered x [M, K] | expert out [M, N].
size_t moe_work_bytes(const Graph& g, const Node& n, int64_t batch) {
  const int64_t M = rows_of(g, n, batch), K = n.weights[2].dim(1), N = n.weights[2].dim(0);
  return align64(M) + align64(4 * M) + align64(4 * M * K) + align64(4 * M * N);
}

// KSH layout: normalised qk [B, N, C] floats | codes [B, H, N] (uint16 or uint64).
size_t ksh_work_bytes(const Graph& g, const Node& n, int64_t batch) {
  const Shape& s = g.sample_shape(n.inputs[0]);
  const int64_t H = n.p.heads;
  return align64(4 * batch * s[0] * s[1]) +
         align64((n.p.nbits <= 16 ? 2 : 8) * batch * H * s[0]);
}

KshArgs ksh_args(const Graph& g, const Node& n, int64_t batch, float* qn, void* codes) {
  const Shape& s = g.sample_shape(n.inputs[0]);
  KshArgs a;
  a.B = batch;
  a.H = n.p.heads;
  a.N = s[0];
  a.d = s[1] / n.p.heads;
  a.m = n.p.anchors;
  a.nbits = n.p.nbits;
  a.qk = qn;
  a.qk_ld = s[1];
  a.qk_bstride = s[0] * s[1];
  a.anchors = n.weights[0].data<float>();
  a.mvec = n.weights[1].data<float>();
  a.A = n.weights[2].data<float>();
  a.codes = codes;
  return a;
}

AdditiveAttentionArgs additive_args(const Graph& g, const Node& n, const NodeBuffers& b,
                                    const void* codes) {
  const Shape& s = g.sample_shape(n.inputs[0]);
  AdditiveAttentionArgs a;
  a.B = b.batch;
  a.H = n.p.heads;
  a.N = s[0];
  a.d = s[1] / n.p.heads;
  a.nbits = n.p.nbits;
  a.codes = codes;
  a.v = b.in[1];
  a.v_ld = s[1];
  a.v_bstride = s[0] * s[1];
  a.taps = n.weights[3].data<float>();
  a.out = b.out;
  a.o_ld = s[1];
  a.o_bstride = s[0] * s[1];
  return a;
}

void reserve_work(ShiftWork& w, const Graph& g, const Node& n, int64_t batch) {
  if (w.expert_tokens.size() < g.nodes().size()) w.expert_tokens.resize(g.nodes().size(), {0, 0});
  size_t bytes = 0;
  if (n.op == OpKind::MoeLinear) bytes = moe_work_bytes(g, n, batch);
  if (n.op == OpKind::KshAttention) bytes = ksh_work_bytes(g, n, batch);
  if (bytes > w.buf.size()) w.buf.resize(bytes);
}

template <class K>
void run_moe(const Graph& g, const Node& n, const NodeBuffers& b, ShiftWork& w, K& k) {
  const int64_t M = rows_of(g, n, b.batch), K_ = n.weights[2].dim(1), N = n.weights[2].dim(0);
  std::byte* p = w.data();
  auto* expert = reinterpret_cast<uint8_t*>(p);
  auto* perm = reinterpret_cast<int32_t*>(p + align64(M));
  auto* gx = reinterpret_cast<float*>(p + align64(M) + align64(4 * M));
  auto* gy = reinterpret_cast<float*>(p + align64(M) + align64(4 * M) + align64(4 * M * K_));
  RouterArgs r;
  r.M = M;
  r.K = K_;
  r.x = b.in[0];
  r.ldx = K_;
  r.Wg = n.weights[0].data<float>();
  r.bg = n.weights[1].defined() && n.weights[1].numel() > 0 ? n.weights[1].data<float>() : nullptr;
  r.expert = expert;
  k.router(r);
  int64_t counts[2];
  k.plan(M, expert, perm, counts);
  const size_t idx = static_cast<size_t>(&n - g.nodes().data());
  if (idx < w.expert_tokens.size()) w.expert_tokens[idx] = {counts[0], counts[1]};
  int64_t begin = 0;
  for (int e = 0; e < 2; ++e) {
    const int64_t cnt = counts[e];
    if (cnt == 0) continue;
    k.gather(begin, begin + cnt, K_, perm, b.in[0], K_, gx, K_);
    if (e == 0) {
      GemmArgs a;
      a.M = cnt;
      a.K = K_;
      a.N = N;
      a.A = gx;
      a.lda = K_;
      a.B = n.weights[2].data<float>();
      a.ldb = K_;
      a.b_is_nk = true;
      a.C = gy;
      a.ldc = N;
      a.epi.bias = n.weights[3].defined() && n.weights[3].numel() > 0 ? n.weights[3].data<float>() : nullptr;
      k.gemm(a);
    } else {
      ShiftLinearArgs a;
      a.M = cnt;
      a.K = K_;
      a.N = N;
      a.x = gx;
      a.ldx = K_;
      a.codes = n.weights[4].data<uint8_t>();
      a.ldw = K_;
      a.bias = n.weights[5].defined() && n.weights[5].numel() > 0 ? n.weights[5].data<float>() : nullptr;
      a.y = gy;
      a.ldy = N;
      a.mode = w.mode;
      k.shift(a);
    }
    k.scatter(begin, begin + cnt, N, perm, gy, N, b.out, N, /*log_exp_combine=*/true);
    begin += cnt;
  }
}

template <class K>
void run_ksh(const Graph& g, const Node& n, const NodeBuffers& b, ShiftWork& w, K& k) {
  const Shape& s = g.sample_shape(n.inputs[0]);
  const int64_t rows = b.batch * s[0], C = s[1], H = n.p.heads, d = C / H;
  auto* qn = reinterpret_cast<float*>(w.data());
  void* codes = w.data() + align64(4 * rows * C);
  // qk <- qk / ||qk|| per token and head (a zero row stays zero).
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < H; ++h) {
      const float* src = b.in[0] + r * C + h * d;
      float* dst = qn + r * C + h * d;
      float ss = 0.0f;
      for (int64_t c = 0; c < d; ++c) ss += src[c] * src[c];
      const float norm = std::sqrt(ss);
      for (int64_t c = 0; c < d; ++c) dst[c] = norm > 0.0f ? src[c] / norm : 0.0f;
    }
  k.ksh(ksh_args(g, n, b.batch, qn, codes));
  k.additive(additive_args(g, n, b, codes));
}

struct CpuK {
  ThreadPool& pool;
  void router(const RouterArgs& a) { cpu::moe_router(a, pool); }
  void plan(int64_t M, const uint8_t* e, int32_t* perm, int64_t c[2]) { cpu::moe_plan(M, e, perm, c); }
  void gather(int64_t b, int64_t e, int64_t cols, const int32_t* perm, const float* src, int64_t lds,
              float* dst, int64_t ldd) {
    cpu::moe_gather(b, e, cols, perm, src, lds, dst, ldd, pool);
  }
  void scatter(int64_t b, int64_t e, int64_t cols, const int32_t* perm, const float* src,
               int64_t lds, float* dst, int64_t ldd, bool combine) {
    cpu::moe_scatter(b, e, cols, perm, src, lds, dst, ldd, combine, pool);
  }
  void gemm(const GemmArgs& a) { cpu::gemm(a, pool); }
  void shift(const ShiftLinearArgs& a) { cpu::shift_linear(a, pool); }
  void ksh(const KshArgs& a) { cpu::ksh_hash(a, pool); }
  void additive(const AdditiveAttentionArgs& a) { cpu::additive_attention(a, pool); }
};

struct RefK {
  void router(const RouterArgs& a) { ref::moe_router(a); }
  void plan(int64_t M, const uint8_t* e, int32_t* perm, int64_t c[2]) { ref::moe_plan(M, e, perm, c); }
  void gather(int64_t b, int64_t e, int64_t cols, const int32_t* perm, const float* src, int64_t lds,
              float* dst, int64_t ldd) {
    ref::moe_gather(b, e, cols, perm, src, lds, dst, ldd);
  }
  void scatter(int64_t b, int64_t e, int64_t cols, const int32_t* perm, const float* src,
               int64_t lds, float* dst, int64_t ldd, bool combine) {
    ref::moe_scatter(b, e, cols, perm, src, lds, dst, ldd, combine);
  }
  void gemm(const GemmArgs& a) { ref::gemm(a); }
  void shift(const ShiftLinearArgs& a) { ref::shift_linear(a); }
  void ksh(const KshArgs& a) { ref::ksh_hash(a); }
  void additive(const AdditiveAttentionArgs& a) { ref::additive_attention(a); }
};

int64_t out_numel(const Graph& g, const Node& n, int64_t batch) {
  return batch * shape_numel(g.sample_shape(n.output));
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, ShiftMode mode) : pool_(threads) { work_.mode = mode; }
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
      case OpKind::ShiftLinear: bytes = cpu::shift_linear_scratch_bytes(shift_args(g, n, b, work_.mode)); break;
      case OpKind::MoeLinear: {
        ShiftLinearArgs a;
        a.K = n.weights[2].dim(1);
        bytes = std::max(cpu::gemm_scratch_bytes(), cpu::shift_linear_scratch_bytes(a));
        break;
      }
      case OpKind::KshAttention: {
        // Only the sizes matter here: no buffers are bound yet.
        bytes = std::max(cpu::ksh_scratch_bytes(ksh_args(g, n, batch, nullptr, nullptr)),
                         cpu::additive_attention_scratch_bytes(additive_args(g, n, b, nullptr)));
        break;
      }
      default: break;
    }
    pool_.reserve_scratch(bytes);
    reserve_work(work_, g, n, batch);
  }

  std::array<int64_t, 2> expert_tokens(size_t node) const override {
    return node < work_.expert_tokens.size() ? work_.expert_tokens[node] : std::array<int64_t, 2>{0, 0};
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
      case OpKind::ShiftLinear: cpu::shift_linear(shift_args(g, n, b, work_.mode), pool_); break;
      case OpKind::MoeLinear: {
        CpuK k{pool_};
        run_moe(g, n, b, work_, k);
        break;
      }
      case OpKind::KshAttention: {
        CpuK k{pool_};
        run_ksh(g, n, b, work_, k);
        break;
      }
      case OpKind::Count: break;
    }
  }

 private:
  ThreadPool pool_;
  ShiftWork work_;
};

class RefBackend final : public Backend {
 public:
  explicit RefBackend(ShiftMode mode) { work_.mode = mode; }
  const char* name() const override { return "ref"; }
  bool supports_op(const Graph&, const Node& n, std::string* why) const override {
    return n.op < OpKind::Count;
  }
  void reserve(const Graph& g, const Node& n, int64_t batch) override {
    reserve_work(work_, g, n, batch);
  }
  std::array<int64_t, 2> expert_tokens(size_t node) const override {
    return node < work_.expert_tokens.size() ? work_.expert_tokens[node] : std::array<int64_t, 2>{0, 0};
  }
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
      case OpKind::ShiftLinear: ref::shift_linear(shift_args(g, n, b, work_.mode)); break;
      case OpKind::MoeLinear: {
        RefK k;
        run_moe(g, n, b, work_, k);
        break;
      }
      case OpKind::KshAttention: {
        RefK k;
        run_ksh(g, n, b, work_, k);
        break;
      }
      case OpKind::Count: break;
    }
  }

 private:
  ShiftWork work_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads, kernels::ShiftMode shift_mode) {
  return std::make_unique<CpuBackend>(threads, shift_mode);
}
std::unique_ptr<Backend> make_ref_backend(kernels::ShiftMode shift_mode) {
  return std::make_unique<RefBackend>(shift_mode);
}

}  // namespace shiftadd
