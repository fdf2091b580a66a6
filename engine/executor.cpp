#include "engine/executor.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <map>

#include "core/log.h"

#include "shiftadd/error.h"

namespace shiftadd {

void check_supported(const Graph& g, const Backend& backend) {
  for (const Node& n : g.nodes()) {
    std::string why;
    if (!backend.supports_op(g, n, &why))
      throw Error("node '" + n.name + "' (op " + op_traits(n.op).name + ", output " +
                  shape_str(g.sample_shape(n.output)) + " per sample) is not supported by the " +
                  backend.name() + " backend" + (why.empty() ? "" : ": " + why));
  }
}

namespace {
// First-fit allocator over arena offsets with coalescing of freed blocks.
class OffsetAllocator {
 public:
  int64_t alloc(int64_t n) {
    n = (n + 15) / 16 * 16;  // keep every buffer 64-byte aligned
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second >= n) {
        const int64_t off = it->first, left = it->second - n;
        free_.erase(it);
        if (left) free_[off + n] = left;
        size_[off] = n;
        return off;
      }
    }
    const int64_t off = top_;
    top_ += n;
    size_[off] = n;
    return off;
  }
  void release(int64_t off) {
    int64_t n = size_.at(off);
    size_.erase(off);
    auto next = free_.find(off + n);
    if (next != free_.end()) {
      n += next->second;
      free_.erase(next);
    }
    auto it = free_.emplace(off, n).first;
    if (it != free_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == off) {
        prev->second += it->second;
        free_.erase(it);
      }
    }
  }
  int64_t top() const { return top_; }

 private:
  std::map<int64_t, int64_t> free_, size_;
  int64_t top_ = 0;
};
}  // namespace

Plan make_plan(const Graph& g, int64_t batch) {
  if (batch <= 0) throw Error("batch size must be positive, got " + std::to_string(batch));
  const auto& nodes = g.nodes();
  const size_t nv = g.values().size();
  std::vector<int> last_use(nv, -1);
  for (size_t i = 0; i < nodes.size(); ++i)
    for (int v : nodes[i].inputs) last_use[v] = static_cast<int>(i);
  // Every activation must stay far from int64 overflow (and from any real memory size).
  for (const ValueInfo& v : g.values()) {
    int64_t n = 0;
    if (__builtin_mul_overflow(batch, shape_numel(v.sample_shape), &n) || n > (int64_t{1} << 40))
      throw Error("batch size " + std::to_string(batch) + " is too large for activations of " +
                  shape_str(v.sample_shape) + " per sample");
  }
  if (g.output_value() >= 0) last_use[g.output_value()] = static_cast<int>(nodes.size());

  Plan p;
  p.batch = batch;
  p.offset.assign(nv, -1);
  OffsetAllocator arena;
  std::vector<bool> released(nv, false);
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    if (n.op != OpKind::Input)
      p.offset[n.output] = arena.alloc(batch * shape_numel(g.sample_shape(n.output)));
    // Inputs die after the output is allocated, so no kernel reads and writes one buffer.
    for (int v : n.inputs)
      if (last_use[v] == static_cast<int>(i) && p.offset[v] >= 0 && !released[v]) {
        arena.release(p.offset[v]);
        released[v] = true;
      }
  }
  p.arena_floats = arena.top();
  return p;
}

int64_t Executor::pass_batch(int64_t batch) const {
  const int64_t unit = backend_.pass_unit();
  if (backend_.device_memory() || unit <= 0 || batch <= unit) return batch;
  if (sample_arena_floats_ < 0) sample_arena_floats_ = make_plan(g_, 1).arena_floats;
  const int64_t sample_bytes = std::max<int64_t>(1, sample_arena_floats_ * static_cast<int64_t>(sizeof(float)));
  const int64_t samples = min_pass_bytes_ / sample_bytes + (min_pass_bytes_ % sample_bytes != 0);
  if (samples >= batch) return batch;  // (also keeps whole_units below clear of overflow)
  auto whole_units = [&](int64_t n) { return std::min(batch, (std::max(n, unit) + unit - 1) / unit * unit); };
  const int64_t pass = whole_units(samples);
  if (pass >= batch) return batch;
  // Evened out (8 as 4 + 4, not 6 + 2), still whole units of threads but for the last pass.
  const int64_t passes = (batch + pass - 1) / pass;
  return whole_units((batch + passes - 1) / passes);
}

const Plan& Executor::plan_for(int64_t batch) {
  auto it = plans_.find(batch);
  if (it == plans_.end()) {
    Plan p = make_plan(g_, batch);
    for (const Node& n : g_.nodes()) backend_.reserve(g_, n, batch);
    if (backend_.device_memory()) {
      // The input gets its own slot after the activations (64-byte aligned).
      p.input_offset = (p.arena_floats + 15) / 16 * 16;
      const int64_t need = p.input_offset + batch * shape_numel(g_.sample_shape(g_.input_value()));
      if (need > device_floats_ || !device_arena_) {
        device_arena_ = backend_.device_arena(need);
        device_floats_ = need;
      }
    } else if (p.arena_floats > arena_.numel()) {
      arena_ = Tensor::empty(DType::F32, {p.arena_floats});
    }
    logger().debug("planned batch {}: {} nodes, activation arena {:.2f} MiB", batch, g_.nodes().size(),
                   p.arena_floats * 4.0 / (1 << 20));
    it = plans_.emplace(batch, std::move(p)).first;
  }
  return it->second;
}

int64_t Executor::prepare(int64_t batch) {
  if (batch <= 0) throw Error("batch size must be positive, got " + std::to_string(batch));
  const int64_t pass = pass_batch(batch);
  plan_for(pass);
  if (batch % pass) plan_for(batch % pass);
  if (node_ms_.size() != g_.nodes().size()) node_ms_.assign(g_.nodes().size(), 0.0);
  return pass;
}

void Executor::run_nodes(const Plan& plan, float* base, const float* input) {
  auto ptr = [&](int v) -> float* {
    return v == g_.input_value() ? const_cast<float*>(input) : base + plan.offset[v];
  };
  const auto& nodes = g_.nodes();
  const bool device_timing = profiling_ && backend_.device_timing();
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    if (n.op == OpKind::Input) continue;
    NodeBuffers b;
    b.batch = plan.batch;
    for (size_t k = 0; k < n.inputs.size() && k < 2; ++k) b.in[k] = ptr(n.inputs[k]);
    b.out = ptr(n.output);
    if (device_timing) {
      backend_.mark_node(i);
      backend_.run(g_, n, b);
    } else if (profiling_) {
      const auto t0 = std::chrono::steady_clock::now();
      backend_.run(g_, n, b);
      node_ms_[i] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    } else {
      backend_.run(g_, n, b);
    }
  }
  if (device_timing) backend_.mark_node(nodes.size());
}

void Executor::run(int64_t batch, const float* input, float* output) {
  const int64_t pass = prepare(batch);
  std::fill(node_ms_.begin(), node_ms_.end(), 0.0);
  backend_.begin_run();
  const int out = g_.output_value();
  const int64_t in_sample = shape_numel(g_.sample_shape(g_.input_value()));
  const int64_t out_sample = shape_numel(g_.sample_shape(out));
  if (!backend_.device_memory()) {
    // Host: consecutive passes over slices of the batch (pass_batch), times and counters summed.
    float* base = arena_.data<float>();
    for (int64_t s = 0; s < batch; s += pass) {
      const int64_t n = std::min(pass, batch - s);
      const Plan& plan = plan_for(n);
      run_nodes(plan, base, input + s * in_sample);
      const float* src = out == g_.input_value() ? input + s * in_sample : base + plan.offset[out];
      std::memcpy(output + s * out_sample, src, sizeof(float) * n * out_sample);
    }
    return;
  }
  // Device backend: input into its arena slot, the forward (eager, captured or replayed), output back.
  const Plan& plan = plan_for(batch);
  float* base = device_arena_;
  float* dev_input = base + plan.input_offset;
  backend_.copy_input(dev_input, input, batch * in_sample);
  const Backend::Forward f = backend_.begin_forward(batch, profiling_);
  if (f != Backend::Forward::Replayed) run_nodes(plan, base, dev_input);
  if (!backend_.end_forward(batch, f)) run_nodes(plan, base, dev_input);
  backend_.copy_output(output, out == g_.input_value() ? dev_input : base + plan.offset[out], batch * out_sample);
  if (profiling_ && backend_.device_timing()) backend_.node_ms(node_ms_);
}

}  // namespace shiftadd
