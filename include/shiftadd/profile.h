#pragma once
// shiftadd profiler: per-layer time, operation mix (multiplications, additions, shifts, bytes),
// modelled energy (spec section 6, Eyeriss-style unit energies) and measured energy (NVML on
// NVIDIA GPUs, RAPL powercap on Linux CPUs, where readable).
//
//   shiftadd::ProfileOptions o;
//   o.batch = 1;
//   o.runs = 10;
//   const shiftadd::ProfileReport r = shiftadd::profile(model, o);
//   std::cout << shiftadd::profile_json({r});
//
// Layers map 1:1 to the nodes of the graph the engine runs (the graph's input placeholder
// excepted), in execution order, with the same names as `shiftadd inspect`. The counting rules
// and the JSON schema are documented in docs/profiling.md.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shiftadd/shiftadd.h"

namespace shiftadd {

// Energy per operation in picojoules for one arithmetic precision.
struct EnergyUnits {
  double mult_pj = 0, add_pj = 0, shift_pj = 0;
};

// Unit energies (spec section 6, upstream pvt/hw_utils.py). A layer is priced with the column of
// the precision its kernel really computes in; every layer is priced at 32 bits (fp32 products,
// int32/int64 accumulators; fast mode's shift layers take int8 operands but accumulate in int32,
// so the 32-bit column is the conservative price).
struct EnergyTable {
  EnergyUnits bits32{3.7, 0.9, 0.13};
  EnergyUnits bits8{0.2, 0.03, 0.024};
  double dram_pj_per_byte = 12.5;  // 200 pJ per 16 bits moved
  // Overrides from a JSON file, every key optional:
  //   {"bits_32": {"mult_pj": 3.7, "add_pj": 0.9, "shift_pj": 0.13},
  //    "bits_8": {"mult_pj": 0.2, "add_pj": 0.03, "shift_pj": 0.024},
  //    "dram_pj_per_16_bits": 200}          (or "dram_pj_per_byte": 12.5)
  // Unknown keys, non-numbers and negative values throw Error naming the file and key.
  static EnergyTable from_json_file(const std::string& path);
  const EnergyUnits& units(int bits) const { return bits <= 8 ? bits8 : bits32; }
};

// Operations one layer executed in one run of the whole batch.
//   mults:  multiplications of multiply-accumulates (matrix products, convolutions, attention
//           q.k and p.v, MoE routers, KSH distances and projections, L2-norm sums of squares)
//   adds:   additions and subtractions (one per multiply- or shift-accumulate, softmax
//           max/subtract/sum, residuals, biases not folded into an accumulator, comparisons)
//   shifts: shifts of shift-and-add products (one per nonzero shift weight and token)
//   other_ops: elementwise multiplications, divisions, square roots and transcendental
//           functions outside matrix products (softmax exp/normalise/scale, LayerNorm, GELU,
//           KSH exp, MoE log/exp combine, fixed-point conversions); priced as multiplications
struct OpCounts {
  int64_t mults = 0, adds = 0, shifts = 0, other_ops = 0;
  int64_t weight_bytes = 0;      // weights read (MoE: only experts that received tokens)
  int64_t activation_bytes = 0;  // activations read and written
  int bits = 32;                 // precision of the arithmetic (selects the energy column)
};

struct LayerProfile {
  std::string name;  // graph node, e.g. "blocks.0.mlp.fc1"
  std::string op;    // e.g. "linear"
  std::string kind;  // e.g. "dense linear", "MoE linear", "KSH attention", "norm"
  std::vector<int64_t> out_shape;  // per sample
  double ms = 0;     // mean over the runs total_ms is the mean of
  double share = 0;  // ms / total_ms
  OpCounts ops;
  double compute_pj = 0, dram_pj = 0, energy_pj = 0;  // modelled, one run of the batch
  bool moe = false;
  int64_t expert_tokens[2] = {0, 0};  // MoE: tokens to expert 0 (dense) and 1 (shift)
  std::string note;  // how data-dependent counts were estimated, if they were
};

struct ProfileReport {
  std::string model;   // the path given
  std::string device;  // "cpu" | "cuda"
  std::string mode;    // shift-layer arithmetic: "exact" | "fast"
  std::string simd;    // CPU kernel variant
  int threads = 0;
  int64_t batch = 1;
  int runs = 0, warmup = 0;
  // Mean wall time of one run (profiling on) over the fastest 3/4 of the timed runs (all of
  // them when fewer than 4: `runs_used`); layer times are means over the same runs.
  double total_ms = 0;
  int runs_used = 0;
  double min_ms = 0, median_ms = 0, max_ms = 0;  // over all timed runs
  std::vector<LayerProfile> layers;
  OpCounts totals;  // sums over layers (bits: the widest used)
  double compute_pj = 0, dram_pj = 0, energy_pj = 0;  // one run of the batch
  double energy_pj_per_image() const { return batch > 0 ? energy_pj / static_cast<double>(batch) : 0; }
  // Measured energy per image over the timed runs; nullopt when the hardware gives none.
  std::optional<double> measured_j_per_image;
  std::string measured_source;  // "nvml" | "rapl" | "unavailable"
  std::string measured_note;    // what was read, or why nothing could be
  EnergyTable energy;
  // Raw timings for traces: per run, its start (microseconds since the first run began), its
  // wall time and every layer's time.
  std::vector<double> run_start_us, run_ms;
  std::vector<std::vector<double>> run_layer_ms;
};

struct ProfileOptions {
  SessionOptions session;
  int64_t batch = 1;
  int runs = 10;   // timed runs (>= 1)
  int warmup = 1;  // untimed runs first (planning, caches)
  EnergyTable energy;
  bool measure_energy = true;
  // Input pixels (batch x C x H x W); empty: a fixed pseudo-random normal input (seed 0).
  std::vector<float> input;
};

// Loads nothing: runs `model` in a new Session with profiling on, then counts operations from
// the graph and the routing of the last run. Throws Error for bad options, and whatever creating
// the Session throws (e.g. CUDA requested in a build without it).
ProfileReport profile(std::shared_ptr<const Model> model, const ProfileOptions& options);

// Operation counts of every layer for one run of `batch` images, given the tokens per expert of
// each MoE layer (Session::expert_tokens(); missing layers count as all tokens to expert 0).
std::vector<LayerProfile> count_ops(const Model& model, int64_t batch,
                                    const std::vector<ExpertLoad>& expert_tokens);

// Renderings of reports (docs/profiling.md). JSON: one object for one report, else an array.
std::string profile_json(const std::vector<ProfileReport>& reports);
std::string profile_csv(const std::vector<ProfileReport>& reports);
std::string profile_table(const std::vector<ProfileReport>& reports);
// Chrome trace-event JSON (chrome://tracing, https://ui.perfetto.dev): one process per report,
// one complete event per layer per timed run.
std::string profile_trace(const std::vector<ProfileReport>& reports);
// A self-contained HTML page (inline SVG and CSS, no scripts or external assets): per report a
// panel with one time bar and one energy bar per layer; reports of the same batch size side by
// side (e.g. a model and its --compare model).
std::string profile_html(const std::vector<ProfileReport>& reports);

// Writes `content` atomically (temporary file, then rename); an existing `path` is an Error
// unless `overwrite`.
void write_text_file(const std::string& path, const std::string& content, bool overwrite);

}  // namespace shiftadd
