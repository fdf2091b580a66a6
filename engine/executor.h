#pragma once
// Planning and execution. A Plan fixes every activation's offset in one arena for a given
// batch size (liveness-based reuse); the Executor allocates that arena once per batch size and
// then runs the graph with no allocation at all. On host backends a large batch runs as
// consecutive passes over slices of it (pass_batch), each with the plan of its size.
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

  // Plans what run(batch) needs (the pass sizes of this batch) and reserves memory; a no-op
  // when already planned. Plans are kept per size and the arena only grows, so alternating
  // batch sizes allocate nothing after each has been seen once. Returns pass_batch(batch).
  int64_t prepare(int64_t batch);
  // input: [batch, sample_shape(input)...]; output receives the graph output.
  void run(int64_t batch, const float* input, float* output);

  // Samples per pass when run() is given `batch`. Every op computes a sample from that sample
  // alone, so passes give the result of one pass over the whole batch, up to float summation
  // order where a kernel splits its work by batch size and threads (KSH attention sums an
  // image's V rows in parts when it has fewer (image, head) pairs than threads; as it did for
  // small batches before passes). Host backends run passes of a multiple of their thread count
  // (Backend::pass_unit; the last pass may be shorter) holding at least kMinPassBytes of
  // activations, evened out over the batch: a layer's output is then still in cache when the
  // next layer reads it (PVTv2-b0 at batch 8 on 2 threads: 25 MB per stage-1 MLP activation,
  // 12% slower than passes of 2 images), while each op still has enough samples for every
  // thread. Device backends take the whole batch at once.
  int64_t pass_batch(int64_t batch) const;
  static constexpr int64_t kMinPassBytes = 8 << 20;
  // Overrides kMinPassBytes (tests, kernel benchmarks; kOnePass: never split, 0 restores the
  // default). Takes effect at the next prepare / run.
  static constexpr int64_t kOnePass = INT64_MAX;
  void set_min_pass_bytes(int64_t bytes) { min_pass_bytes_ = bytes > 0 ? bytes : kMinPassBytes; }

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
  Tensor arena_;  // 64-byte aligned (host backends)
  float* device_arena_ = nullptr;  // device backends: owned by the backend
  int64_t device_floats_ = 0;
  const Plan& plan_for(int64_t batch);
  void run_nodes(const Plan& plan, float* base, const float* input);
  int64_t min_pass_bytes_ = kMinPassBytes;
  mutable int64_t sample_arena_floats_ = -1;  // one sample's activations (pass sizing), set on first use
  bool profiling_ = false;
  std::vector<double> node_ms_;
};

}  // namespace shiftadd
