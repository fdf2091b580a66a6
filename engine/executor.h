#pragma once
// Planning and execution. A Plan fixes every activation's offset in one arena for a given
// batch size (liveness-based reuse); the Executor allocates that arena once per batch size and
// then runs the graph with no allocation at all.
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

#include "engine/backend.h"
#include "engine/graph.h"

namespace shiftadd {

struct Plan {
  int64_t batch = 0;
  std::vector<int64_t> offset;  // per value, in floats into the arena; -1 for the graph input
  int64_t arena_floats = 0;
  // Device backends only: where the graph input is copied to (floats into the device arena);
  // -1 for host backends, which read the caller's input in place.
  int64_t input_offset = -1;
};

// Throws Error naming node, op and shape when the backend cannot run some node.
void check_supported(const Graph& g, const Backend& backend);
Plan make_plan(const Graph& g, int64_t batch);

class Executor {
 public:
  Executor(const Graph& g, Backend& backend) : g_(g), backend_(backend) {}

  // Plans for this batch size and reserves memory; a no-op when already planned for it. Plans
  // are kept per batch size and the arena only grows, so alternating batch sizes allocate
  // nothing after each has been seen once.
  void prepare(int64_t batch);
  // input: [batch, sample_shape(input)...]; output receives the graph output.
  void run(int64_t batch, const float* input, float* output);

  int64_t planned_batch() const { return plan_ ? plan_->batch : 0; }
  size_t arena_bytes() const {
    return backend_.device_memory() ? static_cast<size_t>(device_floats_) * sizeof(float) : arena_.nbytes();
  }

  // Per-node wall time of the last run, collected only while profiling is on (a branch per
  // node otherwise).
  void set_profiling(bool on) { profiling_ = on; }
  const std::vector<double>& node_ms() const { return node_ms_; }

 private:
  const Graph& g_;
  Backend& backend_;
  std::map<int64_t, Plan> plans_;
  const Plan* plan_ = nullptr;
  Tensor arena_;  // 64-byte aligned (host backends)
  float* device_arena_ = nullptr;  // device backends: owned by the backend
  int64_t device_floats_ = 0;
  void run_nodes(int64_t batch, float* base, const float* input);
  bool profiling_ = false;
  std::vector<double> node_ms_;
};

}  // namespace shiftadd
