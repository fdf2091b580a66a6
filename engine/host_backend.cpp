// The host backends: one dispatch from graph nodes to kernels, instantiated over the optimized
// kernels with their thread pool (cpu::, the "cpu" backend) and over the plain references
// (ref::, the "ref" backend, the oracle of the tests). A kernel set is a struct of inline calls,
// so each node compiles to the same direct kernel call as a hand-written switch.
#include <algorithm>
#include <array>
#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/node_args.h"
#include "engine/work.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/shift_kernels.h"
#include "shiftadd/error.h"

namespace shiftadd {
namespace {

using namespace kernels;
using namespace node_args;

// ----- kernel sets ---------------------------------------------------------------------------

struct CpuKernels {
  static constexpr const char* kName = "cpu";
  explicit CpuKernels(int threads) : pool(threads) {}
  ThreadPool pool;

  int threads() const { return pool.size(); }
  // Per-thread scratch of a node's kernels (ThreadPool::reserve_scratch).
  void reserve_scratch(size_t bytes) { pool.reserve_scratch(bytes); }
  size_t scratch(const GemmArgs&) const { return cpu::gemm_scratch_bytes(); }
  size_t scratch(const AttentionArgs& a) const { return cpu::attention_scratch_bytes(a); }
  size_t scratch(const Conv2dArgs& a) const { return cpu::conv2d_scratch_bytes(a); }
  size_t scratch(const ShiftLinearArgs& a) const { return cpu::shift_linear_scratch_bytes(a); }
  size_t scratch(const AdditiveAttentionArgs& a) const { return cpu::additive_attention_scratch_bytes(a); }

  void conv2d(const Conv2dArgs& a) { cpu::conv2d(a, pool); }
  void embed_tokens(const EmbedTokensArgs& a) { cpu::embed_tokens(a, pool); }
  void layernorm(const LayerNormArgs& a) { cpu::layernorm(a, pool); }
  void gemm(const GemmArgs& a) { cpu::gemm(a, pool); }
  void attention(const AttentionArgs& a) { cpu::attention(a, pool); }
  void add(int64_t n, const float* a, const float* b, float alpha, float* y) { cpu::add(n, a, b, alpha, y, pool); }
  void take_tokens(const TakeTokensArgs& a) { cpu::take_tokens(a, pool); }
  void dwconv3x3(const DwConv3x3Args& a) { cpu::dwconv3x3(a, pool); }
  void mean_tokens(const MeanTokensArgs& a) { cpu::mean_tokens(a, pool); }
  void shift_linear(const ShiftLinearArgs& a) { cpu::shift_linear(a, pool); }
  void ksh_hash(const KshArgs& a) { cpu::ksh_hash(a, pool); }
  void additive_attention(const AdditiveAttentionArgs& a) { cpu::additive_attention(a, pool); }
  void moe_router(const RouterArgs& a) { cpu::moe_router(a, pool); }
  void moe_plan(int64_t M, const uint8_t* e, int32_t* perm, int64_t c[2]) { cpu::moe_plan(M, e, perm, c); }
  // The fused MoE linear where it pays off (else false: route, plan and experts one by one).
  bool moe_fused(const MoeFusedArgs& a, int64_t c[2]) {
    if (!cpu::moe_fused_suits(a)) return false;
    cpu::moe_linear_fused(a, c, pool);
    return true;
  }

  // A layer's GEMM weights packed once, at planning (cpu::gemm_pack_b), per node and slot
  // (0: the fp32 weight; 1: exact mode's decoded shift codes). Per session: about the size of
  // the model's fp32 linear weights again.
  void prepack(size_t node, int slot, const GemmArgs& a) {
    if (packed.size() <= node) packed.resize(node + 1);
    PackedB& p = packed[node][static_cast<size_t>(slot)];
    const void* src = a.B_codes ? static_cast<const void*>(a.B_codes) : a.B;
    if (p.src == src && p.N == a.N && p.K == a.K && p.panels.defined() && p.nr == cpu::gemm_panel_width()) return;
    p.panels = Tensor::empty(DType::F32, {cpu::gemm_packed_b_floats(a)});
    p.nr = cpu::gemm_pack_b(a, p.panels.data<float>());
    p.src = src, p.N = a.N, p.K = a.K;
  }
  // The packed weights of (node, slot) when they were packed from this very weight, else none.
  const float* prepacked(size_t node, int slot, const void* src, int64_t* nr) const {
    if (node >= packed.size()) return nullptr;
    const PackedB& p = packed[node][static_cast<size_t>(slot)];
    if (p.src != src || !p.panels.defined()) return nullptr;
    *nr = p.nr;
    return p.panels.data<float>();
  }

 private:
  struct PackedB {
    const void* src = nullptr;
    int64_t N = 0, K = 0, nr = 0;
    Tensor panels;
  };
  std::vector<std::array<PackedB, 2>> packed;
};

struct RefKernels {
  static constexpr const char* kName = "ref";

  int threads() const { return 0; }  // single-threaded, no work areas
  void reserve_scratch(size_t) {}
  template <class Args>
  size_t scratch(const Args&) const {
    return 0;
  }

  void conv2d(const Conv2dArgs& a) { ref::conv2d(a); }
  void embed_tokens(const EmbedTokensArgs& a) { ref::embed_tokens(a); }
  void layernorm(const LayerNormArgs& a) { ref::layernorm(a); }
  void gemm(const GemmArgs& a) { ref::gemm(a); }
  void attention(const AttentionArgs& a) { ref::attention(a); }
  void add(int64_t n, const float* a, const float* b, float alpha, float* y) { ref::add(n, a, b, alpha, y); }
  void take_tokens(const TakeTokensArgs& a) { ref::take_tokens(a); }
  void dwconv3x3(const DwConv3x3Args& a) { ref::dwconv3x3(a); }
  void mean_tokens(const MeanTokensArgs& a) { ref::mean_tokens(a); }
  void shift_linear(const ShiftLinearArgs& a) { ref::shift_linear(a); }
  void ksh_hash(const KshArgs& a) { ref::ksh_hash(a); }
  void additive_attention(const AdditiveAttentionArgs& a) { ref::additive_attention(a); }
  void moe_router(const RouterArgs& a) { ref::moe_router(a); }
  void moe_plan(int64_t M, const uint8_t* e, int32_t* perm, int64_t c[2]) { ref::moe_plan(M, e, perm, c); }
  bool moe_fused(const MoeFusedArgs&, int64_t[2]) { return false; }
  void prepack(size_t, int, const GemmArgs&) {}  // the references read B as it is
  const float* prepacked(size_t, int, const void*, int64_t*) const { return nullptr; }
};

// ----- per-run work layouts ------------------------------------------------------------------
// The ShiftAddViT ops' per-run buffers, carved from the backend's one work buffer (sized at
// reserve() for the worst case, e.g. all tokens to one expert), so a run allocates nothing (the
// ref kernels themselves may). Other ops have none.

using HostCarver = WorkCarver<64>;

struct ShiftWork {
  void* exact;  // exact mode's q(x) and quantised bias (cpu::shift_linear_work_bytes)
};
ShiftWork shift_work(HostCarver& c, const Graph& g, const Node& n, int64_t batch, ShiftMode mode) {
  NodeBuffers b;
  b.batch = batch;
  return {c.take<std::byte>(cpu::shift_linear_work_bytes(shift_args(g, n, b, mode)))};
}

struct MoeWork {
  uint8_t* expert;  // [M] the router's choice per row
  int32_t* perm;    // [M] the plan: expert 0's rows, then expert 1's
  std::byte* shift;  // expert 1's exact-mode work
};
MoeWork moe_work(HostCarver& c, const Graph& g, const Node& n, int64_t batch, ShiftMode mode) {
  NodeBuffers b;
  b.batch = batch;
  const ShiftLinearArgs s = shift_args(g, n, b, mode);  // expert 1 with all M rows: the most
  MoeWork w;
  w.expert = c.take<uint8_t>(s.M);
  w.perm = c.take<int32_t>(s.M);
  w.shift = c.take<std::byte>(cpu::shift_linear_work_bytes(s));
  return w;
}

struct KshWork {
  void* codes;         // [streams, B, H, N] codes (ksh_stream_code_bytes per stream)
  std::byte* kernels;  // the optimized kernels' work area: the hash's, then additive attention's
};
KshWork ksh_work(HostCarver& c, const Graph& g, const Node& n, int64_t batch, int threads) {
  NodeBuffers b;
  b.batch = batch;
  KshWork w;
  w.codes = c.take<std::byte>(ksh_streams(n) * ksh_stream_code_bytes(g, n, batch));
  w.kernels = c.take<std::byte>(threads ? std::max(cpu::ksh_work_bytes(ksh_args(g, n, b, nullptr)),
                                                   cpu::additive_attention_work_bytes(
                                                       additive_args(g, n, b, nullptr), threads))
                                        : 0);
  return w;
}

// Overwrites the `count` decisions of node `idx` (`what`: "decisions", "hash codes") with the
// probe's forced ones, when it has them for this node.
template <class T, class F>
void force_decisions(const std::map<size_t, std::vector<F>>& forced, size_t idx, T* dst, int64_t count,
                     const Node& n, const char* what) {
  const auto it = forced.find(idx);
  if (it == forced.end()) return;
  if (static_cast<int64_t>(it->second.size()) != count)
    throw Error("decision probe: node '" + n.name + "' makes " + std::to_string(count) + " " + what +
                " per run, " + std::to_string(it->second.size()) + " were forced");
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<T>(it->second[static_cast<size_t>(i)]);
}

size_t node_index(const Graph& g, const Node& n) { return static_cast<size_t>(&n - g.nodes().data()); }

// The B side of exact mode's GEMM (decoded shift codes), for packing it once.
GemmArgs shift_gemm_b(const ShiftLinearArgs& s) {
  GemmArgs g;
  g.N = s.N, g.K = s.K;
  g.B_codes = s.codes, g.ldb = s.ldw, g.b_is_nk = true;
  return g;
}

// Slots of a node's packed GEMM weights (kernel sets' prepack / prepacked).
enum PackedSlot : int { kDenseB = 0, kCodesB = 1 };

// ----- the dispatch --------------------------------------------------------------------------

template <class K>
class HostBackend final : public Backend {
 public:
  template <class... KernelArgs>
  explicit HostBackend(ShiftMode mode, KernelArgs&&... args) : k_(std::forward<KernelArgs>(args)...), mode_(mode) {}

  const char* name() const override { return K::kName; }

  bool supports_op(const Graph&, const Node& n, std::string* why) const override {
    if (n.op < OpKind::Count) return true;
    if (why) *why = std::string("no ") + K::kName + " kernel";
    return false;
  }

  void reserve(const Graph& g, const Node& n, int64_t batch) override {
    NodeBuffers b;
    b.batch = batch;
    size_t scratch = 0;
    HostCarver work;
    const size_t idx = node_index(g, n);
    switch (n.op) {
      case OpKind::Linear: {
        const GemmArgs dense = linear_args(g, n, b);
        scratch = k_.scratch(dense);
        k_.prepack(idx, kDenseB, dense);
        break;
      }
      case OpKind::Attention: scratch = k_.scratch(attention_args(g, n, b)); break;
      case OpKind::Conv2d: scratch = k_.scratch(conv_args(g, n, b)); break;
      case OpKind::ShiftLinear: {
        const ShiftLinearArgs shift = shift_args(g, n, b, mode_);
        scratch = std::max(k_.scratch(GemmArgs()), k_.scratch(shift));
        shift_work(work, g, n, batch, mode_);
        if (mode_ == ShiftMode::Exact) k_.prepack(idx, kCodesB, shift_gemm_b(shift));
        break;
      }
      case OpKind::MoeLinear: {
        const GemmArgs dense = moe_dense_args(g, n, b, mode_);
        const ShiftLinearArgs shift = shift_args(g, n, b, mode_);
        scratch = std::max(k_.scratch(dense), k_.scratch(shift));
        moe_work(work, g, n, batch, mode_);
        k_.prepack(idx, kDenseB, dense);
        if (mode_ == ShiftMode::Exact) k_.prepack(idx, kCodesB, shift_gemm_b(shift));
        break;
      }
      case OpKind::KshAttention:
        scratch = k_.scratch(additive_args(g, n, b, nullptr));
        ksh_work(work, g, n, batch, k_.threads());
        break;
      default: break;
    }
    k_.reserve_scratch(scratch);
    if (work.bytes() > work_.size()) work_.resize(work.bytes());
    if (expert_tokens_.size() < g.nodes().size()) expert_tokens_.resize(g.nodes().size(), {0, 0});
  }

  void run(const Graph& g, const Node& n, const NodeBuffers& b) override {
    switch (n.op) {
      case OpKind::Input: break;
      case OpKind::Conv2d: k_.conv2d(conv_args(g, n, b)); break;
      case OpKind::EmbedTokens: k_.embed_tokens(embed_args(g, n, b)); break;
      case OpKind::LayerNorm: k_.layernorm(layernorm_args(g, n, b)); break;
      case OpKind::Linear: k_.gemm(packed(g, n, linear_args(g, n, b))); break;
      case OpKind::Attention: k_.attention(attention_args(g, n, b)); break;
      case OpKind::Add: k_.add(out_numel(g, n, b.batch), b.in[0], b.in[1], n.p.alpha, b.out); break;
      case OpKind::TakeTokens: k_.take_tokens(take_args(g, n, b)); break;
      case OpKind::DwConv3x3: k_.dwconv3x3(dwconv_args(g, n, b)); break;
      case OpKind::MeanTokens: k_.mean_tokens(mean_args(g, n, b)); break;
      case OpKind::ShiftLinear: {
        HostCarver c(work_.data());
        k_.shift_linear(packed(g, n, shift_args(g, n, b, mode_, shift_work(c, g, n, b.batch, mode_).exact)));
        break;
      }
      case OpKind::MoeLinear: run_moe(g, n, b); break;
      case OpKind::KshAttention: run_ksh(g, n, b); break;
      case OpKind::Count: break;
    }
  }

  std::array<int64_t, 2> expert_tokens(size_t node) const override {
    return node < expert_tokens_.size() ? expert_tokens_[node] : std::array<int64_t, 2>{0, 0};
  }
  void begin_run() override { std::fill(expert_tokens_.begin(), expert_tokens_.end(), std::array<int64_t, 2>{0, 0}); }
  int pass_unit() const override { return probe_ ? 0 : std::max(1, k_.threads()); }
  bool set_decision_probe(DecisionProbe* probe) override {
    probe_ = probe;
    return true;
  }

 private:
  // The node's GEMM weights as packed at planning, when the kernel set packed them.
  GemmArgs packed(const Graph& g, const Node& n, GemmArgs a) const {
    a.B_packed = k_.prepacked(node_index(g, n), kDenseB, a.B, &a.B_packed_nr);
    return a;
  }
  ShiftLinearArgs packed(const Graph& g, const Node& n, ShiftLinearArgs a) const {
    if (a.mode == ShiftMode::Exact) a.w_packed = k_.prepacked(node_index(g, n), kCodesB, a.codes, &a.w_packed_nr);
    return a;
  }

  // Router -> plan -> each expert over its rows, writing them in place in token order: the
  // dense expert as a GEMM reading its rows in place whose epilogue scatters, the shift expert
  // reading and writing its rows through the plan (gather and scatter fused). The combine and
  // GELU (and the residual) are the experts' epilogue.
  void run_moe(const Graph& g, const Node& n, const NodeBuffers& b) {
    HostCarver c(work_.data());
    const MoeWork w = moe_work(c, g, n, b.batch, mode_);
    RouterArgs r = moe_router_args(g, n, b);
    r.expert = w.expert;
    const size_t idx = node_index(g, n);
    int64_t counts[2];
    if (probe_) {  // a probe reads the logits and may force decisions between router and plan
      auto& logits = probe_->router_logits[idx];
      logits.assign(static_cast<size_t>(2 * r.M), 0.0f);
      r.logits = logits.data();
    } else {
      MoeFusedArgs f{r, packed(g, n, moe_dense_args(g, n, b, mode_)), packed(g, n, shift_args(g, n, b, mode_, w.shift)),
                     w.perm};
      if (k_.moe_fused(f, counts)) {
        add_expert_tokens(idx, counts);
        return;
      }
    }
    k_.moe_router(r);
    if (probe_) force_decisions(probe_->force_experts, idx, w.expert, r.M, n, "decisions");
    k_.moe_plan(r.M, w.expert, w.perm, counts);
    add_expert_tokens(idx, counts);
    if (counts[0] > 0) {
      GemmArgs a = packed(g, n, moe_dense_args(g, n, b, mode_));
      a.M = counts[0];
      a.a_rows = a.c_rows = w.perm;
      k_.gemm(a);
    }
    if (counts[1] > 0) {
      ShiftLinearArgs a = packed(g, n, shift_args(g, n, b, mode_, w.shift));
      a.M = counts[1];
      a.rows = w.perm + counts[0];
      k_.shift_linear(a);
    }
  }

  // Hash (both streams of a packed q|k|v, or the shared qk), then additive attention: KV over
  // the key (or shared) codes, Y over the query codes.
  void run_ksh(const Graph& g, const Node& n, const NodeBuffers& b) {
    HostCarver c(work_.data());
    const KshWork w = ksh_work(c, g, n, b.batch, k_.threads());
    KshArgs ka = ksh_args(g, n, b, w.codes);
    ka.work = w.kernels;
    const size_t idx = node_index(g, n);
    const int64_t count = ka.streams * b.batch * ka.H * ka.N;  // codes of all streams
    if (probe_) {
      auto& pre = probe_->ksh_preact[idx];
      pre.resize(static_cast<size_t>(count * n.p.nbits));
      ka.preact = pre.data();
    }
    k_.ksh_hash(ka);
    if (probe_) {
      if (n.p.nbits <= 16) force_decisions(probe_->force_codes, idx, static_cast<uint16_t*>(w.codes), count, n, "hash codes");
      else force_decisions(probe_->force_codes, idx, static_cast<uint64_t*>(w.codes), count, n, "hash codes");
    }
    const void* keys = static_cast<const std::byte*>(w.codes) + (ksh_from_qkv(n) ? ksh_stream_code_bytes(g, n, b.batch) : 0);
    AdditiveAttentionArgs aa = ksh_from_qkv(n) ? additive_args(g, n, b, keys, w.codes) : additive_args(g, n, b, w.codes);
    aa.work = w.kernels;
    k_.additive_attention(aa);
  }

  void add_expert_tokens(size_t idx, const int64_t counts[2]) {
    if (idx >= expert_tokens_.size()) return;  // a node not planned through reserve()
    expert_tokens_[idx][0] += counts[0];
    expert_tokens_[idx][1] += counts[1];
  }

  K k_;
  ShiftMode mode_;
  std::vector<std::byte> work_;
  std::vector<std::array<int64_t, 2>> expert_tokens_;  // per node index
  DecisionProbe* probe_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads, kernels::ShiftMode shift_mode) {
  return std::make_unique<HostBackend<CpuKernels>>(shift_mode, threads);
}
std::unique_ptr<Backend> make_ref_backend(kernels::ShiftMode shift_mode) {
  return std::make_unique<HostBackend<RefKernels>>(shift_mode);
}

}  // namespace shiftadd
