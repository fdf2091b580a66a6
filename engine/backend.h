#pragma once
// The backend interface: what a device must offer to run a Graph. The planner asks
// supports_op() for every node when a model is loaded, so an unsupported op fails before any
// inference; the executor then calls run() node by node.
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/graph.h"
#include "kernels/shift_kernels.h"

namespace shiftadd {

// Test and debugging hook on ShiftAddViT's discrete decisions, keyed by node index (position in
// Graph::nodes()). While set on a backend, every run records each KSH node's hash
// pre-activations and each MoE node's router logits, and replaces hash codes / expert choices
// by the forced ones where given, so a whole model can be compared with a reference that made
// the same decisions. Recording allocates: never set in production runs.
struct DecisionProbe {
  std::map<size_t, std::vector<float>> ksh_preact;       // [B, H, N, nbits] per KSH node
  std::map<size_t, std::vector<float>> router_logits;    // [M, 2] per MoE node
  std::map<size_t, std::vector<uint64_t>> force_codes;   // [B, H, N] per KSH node
  std::map<size_t, std::vector<uint8_t>> force_experts;  // [M] per MoE node
};

// Buffers of one node for one planned batch size.
struct NodeBuffers {
  int64_t batch = 0;
  const float* in[2] = {nullptr, nullptr};
  float* out = nullptr;
};

// A backend instance serves one graph (a session's model): device backends, and the CPU
// backend's GEMM weights packed at planning, keep per-weight state keyed by the graph's
// weights, which live as long as the graph.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // False (with a reason) when this backend cannot run the node.
  virtual bool supports_op(const Graph& g, const Node& n, std::string* why) const = 0;
  // Reserves whatever per-run scratch the node needs at this batch size (planning time only).
  virtual void reserve(const Graph& g, const Node& n, int64_t batch) = 0;
  virtual void run(const Graph& g, const Node& n, const NodeBuffers& b) = 0;
  // Tokens routed to expert 0 and expert 1 by MoE node `node` (its index in g.nodes()) in the
  // last run (all its passes); zeros for other nodes and before any run.
  virtual std::array<int64_t, 2> expert_tokens(size_t /*node*/) const { return {0, 0}; }
  // Called once before each run, whose nodes may then run in several passes over slices of the
  // batch: per-run counters (expert_tokens) start again at zero and sum over the passes.
  virtual void begin_run() {}
  // Host backends: the executor may run a batch as consecutive passes of a multiple of this
  // many samples (the backend's thread count). 0: one pass over the whole batch (device
  // backends; while a DecisionProbe records whole-batch tensors).
  virtual int pass_unit() const { return 0; }
  // Installs (or with nullptr removes) a DecisionProbe; false when the backend has none.
  virtual bool set_decision_probe(DecisionProbe* /*probe*/) { return false; }

  // ----- device backends (CUDA) ----------------------------------------------------------
  // Host backends keep every default below and behave exactly as before: the executor's arena
  // is host memory, the graph input is read in place and nodes run one by one.
  //
  // A device backend returns true from device_memory(): NodeBuffers pointers are then device
  // pointers, the executor asks device_arena() for its activation arena (the graph input gets
  // a slot in it), moves the input and output through copy_input()/copy_output(), and brackets
  // every forward with begin_forward()/end_forward() so the backend can capture the node
  // sequence once (a CUDA graph) and replay it afterwards.
  virtual bool device_memory() const { return false; }
  // Base of a device arena of at least `floats` floats. It only grows; when it moves, the
  // backend drops everything it captured against the old one.
  virtual float* device_arena(int64_t /*floats*/) { return nullptr; }
  // Enqueues host -> device (input) and device -> host (output) copies; copy_output waits for
  // the whole forward to finish (it is the one synchronisation point of a run).
  virtual void copy_input(float* /*dst*/, const float* /*host*/, int64_t /*n*/) {}
  virtual void copy_output(float* /*host*/, const float* /*src*/, int64_t /*n*/) {}
  enum class Forward : uint8_t {
    Eager,      // run the nodes now
    Capturing,  // run the nodes: they are recorded, and executed by end_forward
    Replayed,   // the recorded forward for this batch size was launched: skip the nodes
  };
  virtual Forward begin_forward(int64_t /*batch*/, bool /*profiling*/) { return Forward::Eager; }
  // Closes a forward. False only when a capture failed and nothing ran: the executor then runs
  // the nodes again eagerly (the backend will not try to capture that batch size again).
  virtual bool end_forward(int64_t /*batch*/, Forward /*f*/) { return true; }
  // Device-side profiling: mark_node(i) before node i (and mark_node(nodes.size()) after the
  // last); node_ms() then fills per-node milliseconds after the forward completed. Backends
  // without device timers return false and the executor uses the host clock.
  virtual bool device_timing() const { return false; }
  virtual void mark_node(size_t /*i*/) {}
  virtual void node_ms(std::vector<double>& /*ms*/) {}
};

// The CPU backend; `threads` <= 0 means all hardware threads.
// `shift_mode` selects exact (upstream float semantics) or fast shift-linear kernels.
std::unique_ptr<Backend> make_cpu_backend(int threads,
                                          kernels::ShiftMode shift_mode = kernels::ShiftMode::Exact);
// Same interface over the plain reference kernels (the oracle for whole-model tests).
std::unique_ptr<Backend> make_ref_backend(kernels::ShiftMode shift_mode = kernels::ShiftMode::Exact);

// ----- the CUDA backend (engine/cuda_backend.cpp; defined only when SHIFTADD_HAS_CUDA) -------
// Dense (Linear, conv, expert-0) GEMM precision on the GPU: fp32 (default), TF32 tensor cores,
// or fp16 inputs with fp32 accumulation.
enum class CudaMath : uint8_t { F32, TF32, F16 };
struct CudaOptions {
  int device = 0;
  kernels::ShiftMode shift_mode = kernels::ShiftMode::Exact;
  CudaMath math = CudaMath::F32;
  bool graphs = true;  // capture the forward as a CUDA graph from the second run of a batch size
};
#ifdef SHIFTADD_HAS_CUDA
// Throws Error("no CUDA device/driver found: ...") when no usable GPU is present.
std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& options = {});
// True when a CUDA device can be used; otherwise false with the CUDA error in `why`.
bool cuda_device_available(std::string* why = nullptr);
// Host-only part of the CUDA backend's supports_op (needs no GPU; tested on the CPU).
bool cuda_supports_op(const Graph& g, const Node& n, std::string* why);
#endif

}  // namespace shiftadd
