#pragma once
// The backend interface: what a device must offer to run a Graph. The planner asks
// supports_op() for every node when a model is loaded, so an unsupported op fails before any
// inference; the executor then calls run() node by node.
#include <cstdint>
#include <memory>
#include <string>

#include "engine/graph.h"

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
};

// The CPU backend; `threads` <= 0 means all hardware threads.
std::unique_ptr<Backend> make_cpu_backend(int threads);
// Same interface over the plain reference kernels (the oracle for whole-model tests).
std::unique_ptr<Backend> make_ref_backend();

}  // namespace shiftadd
