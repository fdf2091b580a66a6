#pragma once
// The backend interface: what a device must offer to run a Graph. The planner asks
// supports_op() for every node when a model is loaded, so an unsupported op fails before any
// inference; the executor then calls run() node by node.
#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/graph.h"
#include "kernels/shift_kernels.h"

namespace shiftadd {

// Buffers of one node for one planned batch size.
struct NodeBuffers {
  int64_t batch = 0;
  const float* in[2] = {nullptr, nullptr};
  float* out = nullptr;
};

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
  // last run; zeros for other nodes and before any run.
  virtual std::array<int64_t, 2> expert_tokens(size_t /*node*/) const { return {0, 0}; }
};

// The CPU backend; `threads` <= 0 means all hardware threads.
// `shift_mode` selects exact (upstream float semantics) or fast shift-linear kernels.
std::unique_ptr<Backend> make_cpu_backend(int threads,
                                          kernels::ShiftMode shift_mode = kernels::ShiftMode::Exact);
// Same interface over the plain reference kernels (the oracle for whole-model tests).
std::unique_ptr<Backend> make_ref_backend(kernels::ShiftMode shift_mode = kernels::ShiftMode::Exact);

}  // namespace shiftadd
