// The CUDA backend: the same node dispatch as the CPU backend (engine/cpu_backend.cpp, kernel
// arguments from engine/node_args.h) over device memory, cuBLAS for the dense GEMMs and our own
// kernels (kernels/cuda/) for everything else.
//
// - Weights are uploaded once per session (first reserve() of each node) and looked up by their
//   host address; the fp16 math mode keeps an extra fp16 copy of the dense GEMM weights.
// - Activations live in one device arena owned by this backend (Backend::device_arena); per-node
//   scratch (im2col columns, KSH codes and sums, MoE routing and permutation, fp16 staging) is one
//   device buffer sized at planning time for the worst case, so a run allocates nothing.
// - One stream per backend (so per session); cuBLAS runs on it with a fixed workspace.
// - CUDA graphs: the first forward of a batch size runs eagerly, the second is captured and
//   launched, later ones replay it. MoE routing never leaves the device: the expert GEMMs read
//   the token counts on the device, so one captured graph is valid for any routing. Any device
//   buffer that moves (a larger batch size) drops the captured graphs.
// - Profiling (Session::layer_ms) runs eagerly with a cudaEvent before each node.
//
// Plain C++ over the CUDA runtime and cuBLAS APIs: compiled only when SHIFTADD_HAS_CUDA.
#ifdef SHIFTADD_HAS_CUDA

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/log.h"
#include "engine/backend.h"
#include "engine/node_args.h"
#include "engine/work.h"
#include "kernels/cuda/cuda_kernels.h"
#include "shiftadd/error.h"

namespace shiftadd {
namespace {

using namespace kernels;
using namespace node_args;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLAS error in ") + what + ": " + cublasGetStatusString(s));
}
// After every kernel launch: launch-configuration errors surface here, execution errors at the
// next synchronisation (copy_output).
void check_launch(const char* what) { check(cudaGetLastError(), what); }

// ----- per-node scratch layouts ------------------------------------------------------------
// Each op's scratch is carved from one device buffer (256-byte aligned pieces) by its layout
// function: reserve() calls it without a buffer to size the scratch for the worst case, run()
// with the buffer to cut it, so the two cannot drift apart.

using Carver = WorkCarver<256>;

// A cuBLAS GEMM's staging: the GEMM output when GELU must run before a residual that aliases C
// (the planner never aliases, but the kernel contract allows it), and A in fp16 (fp16 math).
struct GemmWork {
  float* g = nullptr;
  uint16_t* a16 = nullptr;
};
GemmWork gemm_work(Carver& c, const GemmArgs& a, bool residual_with_gelu, CudaMath math) {
  GemmWork w;
  if (residual_with_gelu) w.g = c.take<float>(a.M * a.N);
  if (math == CudaMath::F16) w.a16 = c.take<uint16_t>(a.M * a.K);
  return w;
}

// Conv2d: the unfolded input (im2col), then its GEMM's staging.
struct ConvWork {
  float* col;
  GemmWork gemm;
};
ConvWork conv_work(Carver& c, const Graph& g, const Node& n, const NodeBuffers& b, CudaMath math) {
  const Conv2dArgs a = conv_args(g, n, b);
  const int64_t M = a.B * a.OH() * a.OW(), K = a.Cin * a.kh * a.kw;
  ConvWork w;
  w.col = c.take<float>(M * K);
  w.gemm = gemm_work(c, conv_gemm_args(a, w.col, 0, M), false, math);
  return w;
}

// ShiftLinear: fast mode's per-row quantisation constants.
float* shift_work(Carver& c, const ShiftLinearArgs& a) {
  return c.take<float>(cuda::shift_linear_scratch_floats(a));
}

// MoeLinear: the router's choices, the plan (permutation, counts, per-tile counts), then the
// shift expert's scratch (launched for all M rows).
struct MoeWork {
  uint8_t* expert;
  int32_t* perm;
  int32_t* counts;
  int32_t* tiles;
  float* shift;
};
MoeWork moe_work(Carver& c, const Graph& g, const Node& n, const NodeBuffers& b, ShiftMode mode) {
  const int64_t M = rows_of(g, n, b.batch);
  MoeWork w;
  w.expert = c.take<uint8_t>(M);
  w.perm = c.take<int32_t>(M);
  w.counts = c.take<int32_t>(2);
  w.tiles = c.take<int32_t>(cuda::moe_plan_scratch_ints(M));
  w.shift = shift_work(c, shift_args(g, n, b, mode));
  return w;
}

// KshAttention: the hashed rows normalised per head [rows, streams * C], each stream's codes,
// the hash's scratch (reused by the streams, which run in stream order) and additive
// attention's.
struct KshWork {
  float* qn;
  void* codes[2] = {nullptr, nullptr};
  float* hash;
  float* additive;
};
// One stream's hash over the normalised rows `qn`.
KshArgs ksh_stream_args(const Graph& g, const Node& n, const NodeBuffers& b, const KshWork& w, int i) {
  const Shape& s = g.sample_shape(n.output);
  const int64_t C = s[1], streams = ksh_streams(n);
  KshArgs k = ksh_args(g, n, b, w.codes[i]);
  k.qk = w.qn ? w.qn + i * C : nullptr;
  k.qk_ld = streams * C, k.qk_bstride = s[0] * streams * C;
  k.streams = 1, k.prepared = nullptr;
  return k;
}
KshWork ksh_work(Carver& c, const Graph& g, const Node& n, const NodeBuffers& b) {
  const Shape& s = g.sample_shape(n.output);
  const int64_t streams = ksh_streams(n);
  KshWork w;
  w.qn = c.take<float>(b.batch * s[0] * streams * s[1]);
  for (int64_t i = 0; i < streams; ++i) w.codes[i] = c.take<std::byte>(ksh_stream_code_bytes(g, n, b.batch));
  w.hash = c.take<float>(cuda::ksh_scratch_floats(ksh_stream_args(g, n, b, w, 0)));
  w.additive = c.take<float>(cuda::additive_scratch_floats(additive_args(g, n, b, nullptr)));
  return w;
}

// Scratch bytes of node `n` at this batch size: its layout over no buffer.
size_t scratch_bytes(const Graph& g, const Node& n, int64_t batch, CudaMath math, ShiftMode mode) {
  NodeBuffers b;
  b.batch = batch;
  Carver c;
  switch (n.op) {
    case OpKind::Linear: gemm_work(c, linear_args(g, n, b), has_residual(n) && n.p.gelu, math); break;
    case OpKind::Conv2d: conv_work(c, g, n, b, math); break;
    case OpKind::ShiftLinear: shift_work(c, shift_args(g, n, b, mode)); break;
    case OpKind::MoeLinear: moe_work(c, g, n, b, mode); break;
    case OpKind::KshAttention: ksh_work(c, g, n, b); break;
    default: break;
  }
  return c.bytes();
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaOptions& o) : opt_(o) {
    try {
      init();
    } catch (...) {
      release();  // the destructor does not run for a constructor that throws
      throw;
    }
  }

  ~CudaBackend() override { release(); }

 private:
  void init() {
    const CudaOptions& o = opt_;
    check(cudaSetDevice(o.device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cublasCreate(&blas_), "cublasCreate");
    check(cublasSetStream(blas_, stream_), "cublasSetStream");
    check(cublasSetMathMode(blas_, o.math == CudaMath::TF32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
          "cublasSetMathMode");
    // A fixed workspace: cuBLAS must not allocate while a forward is being captured.
    check(cudaMalloc(&blas_ws_, kBlasWorkspace), "cudaMalloc (cuBLAS workspace)");
    check(cublasSetWorkspace(blas_, blas_ws_, kBlasWorkspace), "cublasSetWorkspace");
  }

  void release() noexcept {
    cudaSetDevice(opt_.device);  // the session may be destroyed on another thread
    if (stream_) cudaStreamSynchronize(stream_);
    drop_graphs();
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
    events_.clear();
    for (auto& [host, dev] : weights_) cudaFree(dev);
    for (auto& [host, dev] : weights16_) cudaFree(dev);
    weights_.clear();
    weights16_.clear();
    weight_bytes_.clear();
    if (blas_) cublasDestroy(blas_);  // before its workspace is freed
    blas_ = nullptr;
    cudaFree(arena_);
    cudaFree(scratch_);
    cudaFree(blas_ws_);
    arena_ = scratch_ = blas_ws_ = nullptr;
    if (counts_host_) cudaFreeHost(counts_host_);
    counts_host_ = nullptr;
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = nullptr;
  }

 public:
  const char* name() const override { return "cuda"; }

  bool supports_op(const Graph& g, const Node& n, std::string* why) const override {
    return cuda_supports_op(g, n, why);
  }

  void reserve(const Graph& g, const Node& n, int64_t batch) override {
    check(cudaSetDevice(opt_.device), "cudaSetDevice");  // the current device is per host thread
    const size_t nodes = g.nodes().size();
    if (events_.size() < nodes + 1) {
      const size_t old = events_.size();
      events_.resize(nodes + 1);
      for (size_t i = old; i < events_.size(); ++i) check(cudaEventCreate(&events_[i]), "cudaEventCreate");
    }
    if (counts_nodes_ < nodes) {
      if (counts_host_) {
        check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        cudaFreeHost(counts_host_);
        drop_graphs();  // captured copies point at the old pinned buffer
      }
      check(cudaHostAlloc(reinterpret_cast<void**>(&counts_host_), sizeof(int64_t) * 2 * nodes,
                          cudaHostAllocDefault),
            "cudaHostAlloc");
      std::memset(counts_host_, 0, sizeof(int64_t) * 2 * nodes);
      counts_nodes_ = nodes;
    }
    upload_weights(n);
    grow(scratch_, scratch_bytes_, scratch_bytes(g, n, batch, opt_.math, opt_.shift_mode), "scratch");
  }

  std::array<int64_t, 2> expert_tokens(size_t node) const override {
    if (!counts_host_ || node >= counts_nodes_) return {0, 0};
    return {counts_host_[2 * node], counts_host_[2 * node + 1]};
  }

  void run(const Graph& g, const Node& n, const NodeBuffers& b) override {
    if (capturing_ && !capture_error_.empty()) return;  // the capture already failed: rerun eagerly
    try {
      dispatch(g, n, b);
    } catch (const Error& e) {
      if (!capturing_) throw;
      // Something refused to be captured: end_forward reports it and the executor runs the
      // nodes again eagerly (where a real error throws).
      capture_error_ = std::string(n.name) + ": " + e.what();
      cudaGetLastError();
    } catch (...) {
      abort_capture();
      throw;
    }
  }

  // ----- device memory, copies, forward capture and replay ----------------------------------
  bool device_memory() const override { return true; }

  float* device_arena(int64_t floats) override {
    grow(arena_, arena_bytes_, sizeof(float) * static_cast<size_t>(floats), "activation arena");
    return static_cast<float*>(arena_);
  }

  void copy_input(float* dst, const float* host, int64_t n) override {
    check(cudaSetDevice(opt_.device), "cudaSetDevice");  // sessions may move between threads
    check(cudaMemcpyAsync(dst, host, sizeof(float) * n, cudaMemcpyHostToDevice, stream_), "copy input");
  }

  void copy_output(float* host, const float* src, int64_t n) override {
    check(cudaMemcpyAsync(host, src, sizeof(float) * n, cudaMemcpyDeviceToHost, stream_), "copy output");
    check(cudaStreamSynchronize(stream_), "forward");
  }

  Forward begin_forward(int64_t batch, bool profiling) override {
    if (profiling || !opt_.graphs) return Forward::Eager;
    GraphState& st = graphs_[batch];
    if (st.exec) {
      check(cudaGraphLaunch(st.exec, stream_), "cudaGraphLaunch");
      return Forward::Replayed;
    }
    if (st.failed || st.runs++ == 0) return Forward::Eager;  // the first run of a batch size is eager
    if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      cudaGetLastError();
      st.failed = true;
      return Forward::Eager;
    }
    capturing_ = true;
    capture_error_.clear();
    return Forward::Capturing;
  }

  bool end_forward(int64_t batch, Forward f) override {
    if (f != Forward::Capturing) return true;
    capturing_ = false;
    GraphState& st = graphs_[batch];
    cudaGraph_t graph = nullptr;
    cudaError_t e = cudaStreamEndCapture(stream_, &graph);
    const bool node_failed = !capture_error_.empty();
    if (e == cudaSuccess && !node_failed) e = cudaGraphInstantiate(&st.exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e == cudaSuccess && !node_failed) e = cudaGraphLaunch(st.exec, stream_);
    if (e != cudaSuccess || node_failed) {
      cudaGetLastError();
      if (st.exec) cudaGraphExecDestroy(st.exec);
      st.exec = nullptr;
      st.failed = true;
      logger().warn("cuda: capturing the forward at batch {} failed ({}); running it eagerly", batch,
                    node_failed ? capture_error_ : std::string(cudaGetErrorString(e)));
      capture_error_.clear();
      return false;
    }
    logger().debug("cuda: captured the forward at batch {} as a CUDA graph", batch);
    return true;
  }

  bool device_timing() const override { return true; }
  void mark_node(size_t i) override {
    if (i < events_.size()) check(cudaEventRecord(events_[i], stream_), "cudaEventRecord");
    marked_.push_back(i);
  }
  void node_ms(std::vector<double>& ms) override {
    check(cudaStreamSynchronize(stream_), "profiling");
    for (size_t k = 0; k + 1 < marked_.size(); ++k) {
      float t = 0.0f;
      const size_t i = marked_[k], j = marked_[k + 1];
      if (i < events_.size() && j < events_.size() &&
          cudaEventElapsedTime(&t, events_[i], events_[j]) == cudaSuccess && i < ms.size())
        ms[i] = t;
    }
    marked_.clear();
  }

 private:
  static constexpr size_t kBlasWorkspace = size_t{32} << 20;

  struct GraphState {
    cudaGraphExec_t exec = nullptr;
    int runs = 0;
    bool failed = false;
  };

  void drop_graphs() {
    for (auto& [batch, st] : graphs_)
      if (st.exec) cudaGraphExecDestroy(st.exec);
    graphs_.clear();
  }

  void abort_capture() {
    if (!capturing_) return;
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    cudaStreamEndCapture(stream_, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
  }

  // Grows a device buffer (contents are not kept); captured graphs die with the old one.
  void grow(void*& buf, size_t& have, size_t need, const char* what) {
    if (need <= have && buf) return;
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    drop_graphs();
    cudaFree(buf);
    buf = nullptr;
    have = 0;
    const size_t bytes = std::max<size_t>(need, 256);
    if (cudaMalloc(&buf, bytes) != cudaSuccess) {
      cudaGetLastError();
      throw Error(std::string("cuda: out of device memory allocating the ") + what + " (" +
                  std::to_string(bytes >> 20) + " MiB)");
    }
    have = bytes;
    // Poisoned with NaN: a kernel reading memory nothing wrote shows up in every comparison.
    kernels::cuda::fill(static_cast<int64_t>(bytes / sizeof(float)), std::numeric_limits<float>::quiet_NaN(),
                        static_cast<float*>(buf), stream_);
    check_launch("fill");
  }

  void upload_weights(const Node& n) {
    // The weights, and of the prepared data the shift layers' row scales (fast mode).
    std::vector<const Tensor*> tensors;
    for (const Tensor& t : n.weights) tensors.push_back(&t);
    tensors.push_back(&n.prepared.shift.row_scale);
    for (const Tensor* tp : tensors) {
      const Tensor& t = *tp;
      if (!t.defined() || t.numel() == 0) continue;
      if (const auto it = weight_bytes_.find(t.raw()); it != weight_bytes_.end()) {
        // Weights are found by host address: a larger tensor at the same address (a view
        // extending another) would read past the uploaded copy.
        if (it->second < t.nbytes())
          throw Error("cuda: node '" + n.name + "': two weights of different sizes share one host address");
        continue;
      }
      void* d = nullptr;
      check(cudaMalloc(&d, t.nbytes()), "cudaMalloc (weights)");
      // On the session's stream (non-blocking, so not ordered with the legacy default stream a
      // plain cudaMemcpy would use), then waited for: uploads happen once, at planning time.
      check(cudaMemcpyAsync(d, t.raw(), t.nbytes(), cudaMemcpyHostToDevice, stream_), "upload weights");
      check(cudaStreamSynchronize(stream_), "upload weights");
      weights_[t.raw()] = d;
      weight_bytes_[t.raw()] = t.nbytes();
    }
    // fp16 copies of the cuBLAS GEMM weights (Linear and Conv2d).
    if (opt_.math == CudaMath::F16 && (n.op == OpKind::Linear || n.op == OpKind::Conv2d)) {
      const Tensor& t = gemm_weight(n);
      if (!weights16_.count(t.raw())) {
        void* d = nullptr;
        check(cudaMalloc(&d, 2 * t.numel()), "cudaMalloc (fp16 weights)");
        cuda::to_half(t.numel(), static_cast<const float*>(weights_.at(t.raw())), d, stream_);
        check_launch("to_half");
        check(cudaStreamSynchronize(stream_), "fp16 weights");
        weights16_[t.raw()] = d;
      }
    }
  }

  // A shift layer's args as the CUDA kernel takes them: device copies of the codes, bias, scale
  // and row scales; the op's combine and GELU moved into the row map (the residual is added
  // after the layer); the CPU-only fields cleared (cudasim checks every pointer a kernel gets).
  ShiftLinearArgs device_shift_args(ShiftLinearArgs a, cuda::RowMap& rows) const {
    a.codes = dev(a.codes);
    a.bias = dev(a.bias);
    a.scale = dev(a.scale);
    a.panel = ShiftPanel{nullptr, nullptr, dev(a.panel.row_scale)};
    rows.combine = a.combine;
    rows.gelu = a.gelu;
    a.combine = Combine::None;
    a.gelu = false;
    a.residual = nullptr;
    a.rows = nullptr;
    a.work = nullptr;
    return a;
  }

  // The device copy of a weight given its host address (null stays null).
  template <class T>
  const T* dev(const T* host) const {
    if (!host) return nullptr;
    auto it = weights_.find(static_cast<const void*>(host));
    if (it == weights_.end()) throw Error("cuda: weight not uploaded (reserve() was not called for this node)");
    return static_cast<const T*>(it->second);
  }

  // The weight of the ops that run on cuBLAS.
  static const Tensor& gemm_weight(const Node& n) {
    return n.op == OpKind::Conv2d ? n.w(Conv2dW::Weight) : n.w(LinearW::Weight);
  }

  // C = A op(B) + epilogue on cuBLAS (fp32, TF32 or fp16 inputs with fp32 accumulation) and
  // our epilogue kernel. A is [M, K] with lda == K when fp16 is used; b16 is B in fp16 or null.
  void gemm(const GemmArgs& a, const void* b16, const GemmWork& work) {
    float* G = a.C;
    Epilogue epi = a.epi;
    float beta = 0.0f;
    if (epi.residual && epi.residual == a.C) {
      if (epi.gelu) {
        G = work.g;  // gelu(AB + bias) + C needs C after the GEMM
      } else {
        beta = 1.0f;  // C = AB + C on cuBLAS, then + bias
        epi.residual = nullptr;
      }
    }
    const float alpha = a.alpha;
    const int M = static_cast<int>(a.M), N = static_cast<int>(a.N), K = static_cast<int>(a.K);
    const cublasOperation_t opb = a.b_is_nk ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int ldg = static_cast<int>(G == a.C ? a.ldc : a.N);
    if (opt_.math == CudaMath::F16 && b16 && a.lda == a.K) {
      cuda::to_half(a.M * a.K, a.A, work.a16, stream_);
      check_launch("to_half");
      check(cublasGemmEx(blas_, opb, CUBLAS_OP_N, N, M, K, &alpha, b16, CUDA_R_16F, static_cast<int>(a.ldb),
                         work.a16, CUDA_R_16F, K, &beta, G, CUDA_R_32F, ldg, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
    } else {
      check(cublasSgemm(blas_, opb, CUBLAS_OP_N, N, M, K, &alpha, a.B, static_cast<int>(a.ldb), a.A,
                        static_cast<int>(a.lda), &beta, G, ldg),
            "cublasSgemm");
    }
    cuda::epilogue(a.M, a.N, G, ldg, a.C, a.ldc, epi, stream_);
    check_launch("epilogue");
  }

  const void* w16(const Tensor& t) const {
    if (opt_.math != CudaMath::F16) return nullptr;
    auto it = weights16_.find(t.raw());
    return it == weights16_.end() ? nullptr : it->second;
  }

  void dispatch(const Graph& g, const Node& n, const NodeBuffers& b) {
    Carver scratch(scratch_);
    cudaStream_t s = stream_;
    switch (n.op) {
      case OpKind::Input: break;
      case OpKind::Conv2d: {
        const ConvWork w = conv_work(scratch, g, n, b, opt_.math);
        Conv2dArgs a = conv_args(g, n, b);
        a.w = dev(a.w);
        a.bias = dev(a.bias);
        cuda::im2col(a, w.col, s);
        check_launch("im2col");
        gemm(conv_gemm_args(a, w.col, 0, a.B * a.OH() * a.OW()), w16(gemm_weight(n)), w.gemm);
        break;
      }
      case OpKind::EmbedTokens: {
        EmbedTokensArgs a = embed_args(g, n, b);
        a.prefix = dev(a.prefix);
        a.pos = dev(a.pos);
        cuda::embed_tokens(a, s);
        check_launch("embed_tokens");
        break;
      }
      case OpKind::LayerNorm: {
        LayerNormArgs a = layernorm_args(g, n, b);
        a.gamma = dev(a.gamma);
        a.beta = dev(a.beta);
        cuda::layernorm(a, s);
        check_launch("layernorm");
        break;
      }
      case OpKind::Linear: {
        GemmArgs a = linear_args(g, n, b);
        const GemmWork w = gemm_work(scratch, a, has_residual(n) && n.p.gelu, opt_.math);
        a.B = dev(a.B);
        a.epi.bias = dev(a.epi.bias);
        gemm(a, w16(gemm_weight(n)), w);
        break;
      }
      case OpKind::Attention:
        cuda::attention(attention_args(g, n, b), s);
        check_launch("attention");
        break;
      case OpKind::Add:
        cuda::add(out_numel(g, n, b.batch), b.in[0], b.in[1], n.p.alpha, b.out, s);
        check_launch("add");
        break;
      case OpKind::TakeTokens:
        cuda::take_tokens(take_args(g, n, b), s);
        check_launch("take_tokens");
        break;
      case OpKind::DwConv3x3: {
        DwConv3x3Args a = dwconv_args(g, n, b);
        a.w = dev(a.w);
        a.bias = dev(a.bias);
        cuda::dwconv3x3(a, s);
        check_launch("dwconv3x3");
        break;
      }
      case OpKind::MeanTokens:
        cuda::mean_tokens(mean_args(g, n, b), s);
        check_launch("mean_tokens");
        break;
      case OpKind::ShiftLinear: {
        cuda::RowMap rows;
        const ShiftLinearArgs a = device_shift_args(shift_args(g, n, b, opt_.shift_mode), rows);
        cuda::shift_linear(a, rows, shift_work(scratch, a), s);
        check_launch("shift_linear");
        if (has_residual(n)) {
          cuda::add(a.M * a.N, a.y, b.in[1], 1.0f, a.y, s);
          check_launch("shift_linear residual");
        }
        break;
      }
      case OpKind::MoeLinear: run_moe(g, n, b, moe_work(scratch, g, n, b, opt_.shift_mode)); break;
      case OpKind::KshAttention: run_ksh(g, n, b, ksh_work(scratch, g, n, b)); break;
      case OpKind::Count: break;
    }
  }

  // Router -> plan (tile counts, tile writes) -> the two experts, each launched for the worst
  // case (all M rows) and reading the split point and the permutation on the device: the dense
  // expert handles plan positions [0, counts[0]), the shift expert [counts[0], M); each reads
  // its rows of x through the permutation and writes them back in token order with the
  // combine and GELU applied (gather and scatter fused, no host round trip, capture-safe).
  void run_moe(const Graph& g, const Node& n, const NodeBuffers& b, const MoeWork& w) {
    RouterArgs r = moe_router_args(g, n, b);
    r.Wg = dev(r.Wg);
    r.bg = dev(r.bg);
    r.expert = w.expert;
    cuda::moe_router(r, stream_);
    check_launch("moe_router");
    // Tokens per expert go straight into the pinned host buffer (device-accessible under unified
    // addressing, which 64-bit processes always have): no copy node per MoE layer.
    const size_t idx = static_cast<size_t>(&n - g.nodes().data());
    int64_t* counts64 = counts_host_ && idx < counts_nodes_ ? counts_host_ + 2 * idx : nullptr;
    cuda::moe_plan(r.M, w.expert, w.perm, w.counts, counts64, w.tiles, stream_);
    check_launch("moe_plan");
    cuda::RowMap rows;
    rows.perm = w.perm;
    rows.hi = w.counts;  // expert 0: positions [0, counts[0])
    GemmArgs a = moe_dense_args(g, n, b, opt_.shift_mode);
    rows.combine = a.epi.combine;
    rows.gelu = a.epi.gelu;
    a.B = dev(a.B);
    a.epi = Epilogue();
    a.epi.bias = dev(n.f32_or_null(MoeW::B0));
    cuda::gemm_rows(a, rows, stream_);
    check_launch("moe expert 0");
    rows.hi = nullptr;
    rows.lo = w.counts;  // expert 1: positions [counts[0], M)
    const ShiftLinearArgs sa = device_shift_args(shift_args(g, n, b, opt_.shift_mode), rows);
    cuda::shift_linear(sa, rows, w.shift, stream_);
    check_launch("moe expert 1");
    if (has_residual(n)) {
      cuda::add(sa.M * sa.N, b.out, b.in[1], 1.0f, b.out, stream_);
      check_launch("moe residual");
    }
  }

  // Both KSH forms: qk and v (upstream, q = k: one hash), or a packed q|k|v (q and k hashed
  // apart: KV over the key codes, Y over the query codes). The hash takes rows normalised per
  // head, one stream at a time.
  void run_ksh(const Graph& g, const Node& n, const NodeBuffers& b, const KshWork& w) {
    const Shape& s = g.sample_shape(n.output);
    const int64_t rows = b.batch * s[0], C = s[1], H = n.p.heads, d = C / H;
    const bool qkv = ksh_from_qkv(n);
    const int streams = static_cast<int>(ksh_streams(n));
    for (int i = 0; i < streams; ++i) {
      cuda::l2norm_heads(rows, H, d, b.in[0] + i * C, qkv ? 3 * C : C, w.qn + i * C, streams * C, stream_);
      check_launch("l2norm_heads");
    }
    for (int i = 0; i < streams; ++i) {
      KshArgs k = ksh_stream_args(g, n, b, w, i);
      k.anchors = dev(k.anchors);
      k.mvec = dev(k.mvec);
      k.A = dev(k.A);
      cuda::ksh_hash(k, w.hash, stream_);
      check_launch("ksh_hash");
    }
    AdditiveAttentionArgs a = qkv ? additive_args(g, n, b, w.codes[1], w.codes[0]) : additive_args(g, n, b, w.codes[0]);
    a.taps = dev(a.taps);
    cuda::additive_attention(a, w.additive, stream_);
    check_launch("additive_attention");
  }

  CudaOptions opt_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  void* blas_ws_ = nullptr;
  std::unordered_map<const void*, void*> weights_, weights16_;
  std::unordered_map<const void*, size_t> weight_bytes_;  // uploaded size per host address
  void* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  int64_t* counts_host_ = nullptr;  // pinned: [node][2] tokens per expert of the last run
  size_t counts_nodes_ = 0;
  std::map<int64_t, GraphState> graphs_;
  bool capturing_ = false;
  std::string capture_error_;  // first error of a node while capturing
  std::vector<cudaEvent_t> events_;
  std::vector<size_t> marked_;
};

}  // namespace

bool cuda_supports_op(const Graph& g, const Node& n, std::string* why) {
  auto no = [&](std::string reason) {
    if (why) *why = std::move(reason);
    return false;
  };
  switch (n.op) {
    case OpKind::Input:
    case OpKind::Conv2d:
    case OpKind::EmbedTokens:
    case OpKind::LayerNorm:
    case OpKind::Linear:
    case OpKind::Add:
    case OpKind::TakeTokens:
    case OpKind::DwConv3x3:
    case OpKind::MeanTokens:
    case OpKind::ShiftLinear:
    case OpKind::MoeLinear: return true;
    case OpKind::Attention: {
      const int64_t C = g.sample_shape(n.inputs[0])[1] / (n.inputs.size() == 2 ? 1 : 3);
      const int64_t d = n.p.heads > 0 ? C / n.p.heads : 0;
      if (d <= 0 || d > kernels::cuda::kMaxHeadDim)
        return no("head dim " + std::to_string(d) + " outside the CUDA attention kernel's 1.." +
                  std::to_string(kernels::cuda::kMaxHeadDim));
      return true;
    }
    case OpKind::KshAttention: {
      const int64_t C = g.sample_shape(n.output)[1];
      const int64_t d = n.p.heads > 0 ? C / n.p.heads : 0;
      if (d <= 0 || d > 128) return no("KSH head dim " + std::to_string(d) + " outside 1..128");
      if (n.p.nbits < 1 || n.p.nbits > 64) return no("KSH bits " + std::to_string(n.p.nbits) + " outside 1..64");
      if (n.p.nbits * d * 4 > 48 * 1024) return no("KSH bits x head dim too large for shared memory");
      return true;
    }
    case OpKind::Count: break;
  }
  return no("no CUDA kernel for this op");
}

bool cuda_device_available(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    if (why) *why = e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device present";
    cudaGetLastError();
    return false;
  }
  return true;
}

std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& options) {
  std::string why;
  if (!cuda_device_available(&why)) throw Error("no CUDA device/driver found: " + why);
  return std::make_unique<CudaBackend>(options);
}

}  // namespace shiftadd

#endif  // SHIFTADD_HAS_CUDA
