// The CPU backends: one dispatch from graph nodes to kernels, instantiated over the optimized
// kernels (cpu::) and over the plain references (ref::).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include "engine/backend.h"
#include "engine/node_args.h"
#include "shiftadd/error.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/shift_kernels.h"

namespace shiftadd {
namespace {

using namespace kernels;
using namespace node_args;

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

struct ShiftWork {
  std::vector<std::byte> buf;
  std::vector<std::array<int64_t, 2>> expert_tokens;  // per node index
  kernels::ShiftMode mode = kernels::ShiftMode::Exact;
  DecisionProbe* probe = nullptr;
  int threads = 0;  // the optimized kernels' pool size (0: the reference kernels, no work areas)

  std::byte* data() { return buf.data(); }
};

// KSH work: the codes, then the optimized kernels' work area (hash, then additive attention).
size_t ksh_kernel_work_bytes(const Graph& g, const Node& n, int64_t batch, int threads) {
  if (threads == 0) return 0;
  NodeBuffers b;
  b.batch = batch;
  return std::max(cpu::ksh_work_bytes(ksh_args(g, n, b, nullptr)),
                  cpu::additive_attention_work_bytes(additive_args(g, n, b, nullptr), threads));
}

void reserve_work(ShiftWork& w, const Graph& g, const Node& n, int64_t batch) {
  if (w.expert_tokens.size() < g.nodes().size()) w.expert_tokens.resize(g.nodes().size(), {0, 0});
  NodeBuffers b;
  b.batch = batch;
  size_t bytes = 0;
  if (n.op == OpKind::ShiftLinear) bytes = cpu::shift_linear_work_bytes(shift_args(g, n, b, w.mode));
  if (n.op == OpKind::MoeLinear) bytes = moe_work_bytes(g, n, batch);
  if (n.op == OpKind::KshAttention) bytes = ksh_codes_bytes(g, n, batch) + ksh_kernel_work_bytes(g, n, batch, w.threads);
  if (bytes > w.buf.size()) w.buf.resize(bytes);
}

// Overwrites `count` decisions of node `idx` with forced ones, when the probe has them.
template <class T, class F>
void force_decisions(const std::map<size_t, std::vector<F>>& forced, size_t idx, T* dst,
                     int64_t count, const Node& n) {
  const auto it = forced.find(idx);
  if (it == forced.end()) return;
  if (static_cast<int64_t>(it->second.size()) != count)
    throw Error("decision probe: node '" + n.name + "' makes " + std::to_string(count) +
                " decisions per run, " + std::to_string(it->second.size()) + " were forced");
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<T>(it->second[static_cast<size_t>(i)]);
}

// Router -> plan -> each expert over its rows, writing them in place in token order: the dense
// expert as a GEMM of its gathered rows whose epilogue scatters, the shift expert reading and
// writing its rows through the plan (gather and scatter fused). The combine (upstream's
// log(exp(y) + eps) in exact mode, its limits in fast mode) and GELU are the experts' epilogue.
template <class K>
void run_moe(const Graph& g, const Node& n, const NodeBuffers& b, ShiftWork& w, K& k) {
  const int64_t M = rows_of(g, n, b.batch), K_ = n.weights[2].dim(1), N = n.weights[2].dim(0);
  std::byte* p = w.data();
  auto* expert = reinterpret_cast<uint8_t*>(p);
  auto* perm = reinterpret_cast<int32_t*>(p + align64(M));
  std::byte* rows_work = moe_rows_work(g, n, b.batch, p);
  RouterArgs r;
  r.M = M;
  r.K = K_;
  r.x = b.in[0];
  r.ldx = K_;
  r.Wg = n.weights[0].data<float>();
  r.bg = n.weights[1].defined() && n.weights[1].numel() > 0 ? n.weights[1].data<float>() : nullptr;
  r.expert = expert;
  const size_t idx = static_cast<size_t>(&n - g.nodes().data());
  if (w.probe) {
    auto& logits = w.probe->router_logits[idx];
    logits.assign(static_cast<size_t>(2 * M), 0.0f);
    r.logits = logits.data();
  }
  k.router(r);
  if (w.probe) force_decisions(w.probe->force_experts, idx, expert, M, n);
  int64_t counts[2];
  k.plan(M, expert, perm, counts);
  if (idx < w.expert_tokens.size()) w.expert_tokens[idx] = {counts[0], counts[1]};
  const Combine combine = !n.p.log_exp_combine      ? Combine::None
                          : w.mode == ShiftMode::Exact ? Combine::LogExp
                                                       : Combine::Limits;
  if (counts[0] > 0) {
    auto* gx = reinterpret_cast<float*>(rows_work);
    k.gather(0, counts[0], K_, perm, b.in[0], K_, gx, K_);
    GemmArgs a;
    a.M = counts[0];
    a.K = K_;
    a.N = N;
    a.A = gx;
    a.lda = K_;
    a.B = n.weights[2].data<float>();
    a.ldb = K_;
    a.b_is_nk = true;
    a.C = b.out;
    a.ldc = N;
    a.c_rows = perm;
    a.epi.bias = n.weights[3].defined() && n.weights[3].numel() > 0 ? n.weights[3].data<float>() : nullptr;
    a.epi.combine = combine;
    a.epi.gelu = n.p.gelu;
    if (n.inputs.size() > 1) a.epi.residual = b.in[1], a.epi.ldr = N;
    k.gemm(a);
  }
  if (counts[1] > 0) {
    ShiftLinearArgs a = shift_args(g, n, b, w.mode, rows_work);
    a.M = counts[1];
    a.rows = perm + counts[0];
    a.combine = combine;
    a.gelu = n.p.gelu;
    if (n.inputs.size() > 1) a.residual = b.in[1], a.ldr = N;
    k.shift(a);
  }
}

// Hash (both streams of a packed q|k|v, or the shared qk), then additive attention: KV over
// the key (or shared) codes, Y over the query codes.
template <class K>
void run_ksh(const Graph& g, const Node& n, const NodeBuffers& b, ShiftWork& w, K& k) {
  void* codes = w.data();
  void* kernel_work = w.data() + ksh_codes_bytes(g, n, b.batch);
  KshArgs ka = ksh_args(g, n, b, codes);
  ka.work = kernel_work;
  const size_t idx = static_cast<size_t>(&n - g.nodes().data());
  const int64_t count = ka.streams * b.batch * ka.H * ka.N;  // codes of all streams
  if (w.probe) {
    auto& pre = w.probe->ksh_preact[idx];
    pre.resize(static_cast<size_t>(count * n.p.nbits));
    ka.preact = pre.data();
  }
  k.ksh(ka);
  if (w.probe) {
    const auto it = w.probe->force_codes.find(idx);
    if (it != w.probe->force_codes.end()) {
      if (static_cast<int64_t>(it->second.size()) != count)
        throw Error("decision probe: node '" + n.name + "' makes " + std::to_string(count) +
                    " hash codes per run, " + std::to_string(it->second.size()) + " were forced");
      for (int64_t t = 0; t < count; ++t) {
        const uint64_t c = it->second[static_cast<size_t>(t)];
        if (n.p.nbits <= 16) static_cast<uint16_t*>(codes)[t] = static_cast<uint16_t>(c);
        else static_cast<uint64_t*>(codes)[t] = c;
      }
    }
  }
  AdditiveAttentionArgs aa = ksh_from_qkv(n)
      ? additive_args(g, n, b, ksh_stream_codes(g, n, b.batch, codes, 1), codes)
      : additive_args(g, n, b, codes);
  aa.work = kernel_work;
  k.additive(aa);
}

struct CpuK {
  ThreadPool& pool;
  void router(const RouterArgs& a) { cpu::moe_router(a, pool); }
  void plan(int64_t M, const uint8_t* e, int32_t* perm, int64_t c[2]) { cpu::moe_plan(M, e, perm, c); }
  void gather(int64_t b, int64_t e, int64_t cols, const int32_t* perm, const float* src, int64_t lds,
              float* dst, int64_t ldd) {
    cpu::moe_gather(b, e, cols, perm, src, lds, dst, ldd, pool);
  }
  void gemm(const GemmArgs& a) { cpu::gemm(a, pool); }
  void shift(const ShiftLinearArgs& a) { cpu::shift_linear(a, pool); }
  void ksh(const KshArgs& a) { cpu::ksh_hash(a, pool); }
  void additive(const AdditiveAttentionArgs& a) { cpu::additive_attention(a, pool); }
  void gelu(int64_t n, const float* x, float* y) { cpu::gelu(n, x, y, pool); }
};

struct RefK {
  void router(const RouterArgs& a) { ref::moe_router(a); }
  void plan(int64_t M, const uint8_t* e, int32_t* perm, int64_t c[2]) { ref::moe_plan(M, e, perm, c); }
  void gather(int64_t b, int64_t e, int64_t cols, const int32_t* perm, const float* src, int64_t lds,
              float* dst, int64_t ldd) {
    ref::moe_gather(b, e, cols, perm, src, lds, dst, ldd);
  }
  void gemm(const GemmArgs& a) { ref::gemm(a); }
  void shift(const ShiftLinearArgs& a) { ref::shift_linear(a); }
  void ksh(const KshArgs& a) { ref::ksh_hash(a); }
  void additive(const AdditiveAttentionArgs& a) { ref::additive_attention(a); }
  void gelu(int64_t n, const float* x, float* y) { ref::gelu(n, x, y); }
};

int64_t out_numel(const Graph& g, const Node& n, int64_t batch) {
  return batch * shape_numel(g.sample_shape(n.output));
}

// What the CPU and reference backends share: the ShiftAddViT per-run state (planned buffers,
// tokens per expert, an optional decision probe) and the queries on it.
class HostBackend : public Backend {
 public:
  std::array<int64_t, 2> expert_tokens(size_t node) const override {
    return node < work_.expert_tokens.size() ? work_.expert_tokens[node] : std::array<int64_t, 2>{0, 0};
  }
  bool set_decision_probe(DecisionProbe* probe) override {
    work_.probe = probe;
    return true;
  }

 protected:
  explicit HostBackend(ShiftMode mode) { work_.mode = mode; }
  ShiftWork work_;
};

class CpuBackend final : public HostBackend {
 public:
  CpuBackend(int threads, ShiftMode mode) : HostBackend(mode), pool_(threads) { work_.threads = pool_.size(); }
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
      case OpKind::ShiftLinear:
      case OpKind::MoeLinear:
        bytes = std::max(cpu::gemm_scratch_bytes(), cpu::shift_linear_scratch_bytes(shift_args(g, n, b, work_.mode)));
        break;
      case OpKind::KshAttention:
        bytes = cpu::additive_attention_scratch_bytes(additive_args(g, n, b, nullptr));
        break;
      default: break;
    }
    pool_.reserve_scratch(bytes);
    reserve_work(work_, g, n, batch);
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
      case OpKind::ShiftLinear: cpu::shift_linear(shift_args(g, n, b, work_.mode, work_.data()), pool_); break;
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
};

class RefBackend final : public HostBackend {
 public:
  explicit RefBackend(ShiftMode mode) : HostBackend(mode) {}
  const char* name() const override { return "ref"; }
  bool supports_op(const Graph&, const Node& n, std::string* why) const override {
    return n.op < OpKind::Count;
  }
  void reserve(const Graph& g, const Node& n, int64_t batch) override {
    reserve_work(work_, g, n, batch);
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

};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads, kernels::ShiftMode shift_mode) {
  return std::make_unique<CpuBackend>(threads, shift_mode);
}
std::unique_ptr<Backend> make_ref_backend(kernels::ShiftMode shift_mode) {
  return std::make_unique<RefBackend>(shift_mode);
}

}  // namespace shiftadd
