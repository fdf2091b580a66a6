// The profiler: timed runs with per-node timing on, operation counts from the graph and the
// routing of the last run, modelled energy (spec section 6) and measured energy (NVML / RAPL).
#include <dirent.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <thread>

#include "runtime/model.h"
#include "engine/op_counts.h"
#include "kernels/kernels.h"
#include "loaders/atomic_write.h"
#include "shiftadd/profile.h"

namespace shiftadd {

using json = nlohmann::json;

// ----- energy table ----------------------------------------------------------------------------

namespace {

double nonnegative(const json& v, const std::string& path, const std::string& key) {
  if (!v.is_number())
    throw Error(path + ": energy table key '" + key + "' must be a number, got " + v.dump());
  const double d = v.get<double>();
  if (!(d >= 0) || !std::isfinite(d))
    throw Error(path + ": energy table key '" + key + "' must be a finite number >= 0, got " + v.dump());
  return d;
}

void read_units(const json& j, const std::string& path, const std::string& key, EnergyUnits& u) {
  if (!j.is_object())
    throw Error(path + ": energy table key '" + key + "' must be an object {\"mult_pj\", \"add_pj\", \"shift_pj\"}");
  for (const auto& [k, v] : j.items()) {
    const std::string full = key + "." + k;
    if (k == "mult_pj") u.mult_pj = nonnegative(v, path, full);
    else if (k == "add_pj") u.add_pj = nonnegative(v, path, full);
    else if (k == "shift_pj") u.shift_pj = nonnegative(v, path, full);
    else throw Error(path + ": unknown energy table key '" + full + "' (expected mult_pj, add_pj, shift_pj)");
  }
}

}  // namespace

EnergyTable EnergyTable::from_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open the energy table");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(path + ": invalid JSON in the energy table: " + e.what());
  }
  if (!j.is_object()) throw Error(path + ": the energy table must be a JSON object");
  EnergyTable t;
  for (const auto& [k, v] : j.items()) {
    if (k == "bits_32") read_units(v, path, k, t.bits32);
    else if (k == "bits_8") read_units(v, path, k, t.bits8);
    else if (k == "dram_pj_per_16_bits") t.dram_pj_per_byte = nonnegative(v, path, k) / 2.0;
    else if (k == "dram_pj_per_byte") t.dram_pj_per_byte = nonnegative(v, path, k);
    else if (k == "comment" || k == "source") continue;
    else
      throw Error(path + ": unknown energy table key '" + k +
                  "' (expected bits_32, bits_8, dram_pj_per_16_bits or dram_pj_per_byte)");
  }
  return t;
}

// ----- measured energy -------------------------------------------------------------------------

namespace {

// Sums the package-level RAPL powercap zones (intel-rapl:N; AMD kernels expose the same
// names). Sub-zones (intel-rapl:N:M: core, uncore, dram) are inside their package's count.
class RaplMeter {
 public:
  bool start(std::string* why) {
    // SHIFTADD_POWERCAP_DIR: another powercap tree (tests use a fake one).
    const char* env = std::getenv("SHIFTADD_POWERCAP_DIR");
    const std::string root = env && *env ? env : "/sys/class/powercap";
    DIR* d = ::opendir(root.c_str());
    if (!d) {
      *why = "no RAPL powercap interface (" + root + " missing)";
      return false;
    }
    std::vector<std::string> names;
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n.rfind("intel-rapl:", 0) == 0 && std::count(n.begin(), n.end(), ':') == 1) names.push_back(n);
    }
    ::closedir(d);
    std::sort(names.begin(), names.end());
    if (names.empty()) {
      *why = "no RAPL package zones under " + root;
      return false;
    }
    for (const std::string& n : names) {
      Zone z;
      z.path = root + "/" + n;
      double e = 0;
      if (!read_number(z.path + "/energy_uj", &e)) {
        *why = z.path + "/energy_uj is not readable (RAPL counters are usually root-only)";
        zones_.clear();
        return false;
      }
      if (!read_number(z.path + "/max_energy_range_uj", &z.range)) z.range = 0;
      z.start = e;
      zones_.push_back(z);
    }
    return true;
  }
  // Joules since start(), counter wrap-around handled.
  bool stop(double* joules, std::string* why) {
    double total_uj = 0;
    for (const Zone& z : zones_) {
      double e = 0;
      if (!read_number(z.path + "/energy_uj", &e)) {
        *why = z.path + "/energy_uj could not be read again";
        return false;
      }
      double delta = e - z.start;
      if (delta < 0 && z.range > 0) delta += z.range;
      if (delta < 0) {
        *why = z.path + ": counter went backwards";
        return false;
      }
      total_uj += delta;
    }
    *joules = total_uj * 1e-6;
    return true;
  }
  size_t zones() const { return zones_.size(); }

 private:
  struct Zone {
    std::string path;
    double start = 0, range = 0;
  };
  static bool read_number(const std::string& p, double* out) {
    std::ifstream in(p);
    if (!in) return false;
    long double v = 0;
    if (!(in >> v)) return false;
    *out = static_cast<double>(v);
    return true;
  }
  std::vector<Zone> zones_;
};

// NVML's total-energy counter (millijoules since the driver loaded), loaded at run time so
// the build has no NVML dependency.
class NvmlMeter {
 public:
  ~NvmlMeter() {
    if (shutdown_) shutdown_();
    if (lib_) ::dlclose(lib_);
  }
  bool start(std::string* why) {
    lib_ = ::dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib_) {
      *why = "libnvidia-ml.so.1 could not be loaded (no NVIDIA driver)";
      return false;
    }
    auto init = reinterpret_cast<int (*)()>(::dlsym(lib_, "nvmlInit_v2"));
    auto handle = reinterpret_cast<int (*)(unsigned, void**)>(::dlsym(lib_, "nvmlDeviceGetHandleByIndex_v2"));
    energy_ = reinterpret_cast<int (*)(void*, unsigned long long*)>(::dlsym(lib_, "nvmlDeviceGetTotalEnergyConsumption"));
    auto shutdown = reinterpret_cast<int (*)()>(::dlsym(lib_, "nvmlShutdown"));
    if (!init || !handle || !energy_ || !shutdown) {
      *why = "libnvidia-ml.so.1 lacks nvmlInit_v2 / nvmlDeviceGetHandleByIndex_v2 / "
             "nvmlDeviceGetTotalEnergyConsumption";
      return false;
    }
    if (int rc = init(); rc != 0) {
      *why = "nvmlInit_v2 failed (NVML error " + std::to_string(rc) + ")";
      return false;
    }
    shutdown_ = shutdown;
    // The GPU CUDA calls device 0: the first of CUDA_VISIBLE_DEVICES when set (an index or a
    // UUID), else NVML's GPU 0.
    std::string first;
    if (const char* v = std::getenv("CUDA_VISIBLE_DEVICES"); v && *v) {
      first = v;
      first = first.substr(0, first.find(','));
    }
    int rc = 0;
    if (first.rfind("GPU-", 0) == 0 || first.rfind("MIG-", 0) == 0) {
      auto by_uuid = reinterpret_cast<int (*)(const char*, void**)>(::dlsym(lib_, "nvmlDeviceGetHandleByUUID"));
      rc = by_uuid ? by_uuid(first.c_str(), &dev_) : -1;
    } else {
      unsigned index = 0;
      if (!first.empty() && first.find_first_not_of("0123456789") == std::string::npos)
        index = static_cast<unsigned>(std::stoul(first));
      rc = handle(index, &dev_);
      first = std::to_string(index);
    }
    if (rc != 0) {
      *why = "NVML could not open GPU " + first + " (NVML error " + std::to_string(rc) + ")";
      return false;
    }
    if (rc = energy_(dev_, &start_mj_); rc != 0) {
      *why = "nvmlDeviceGetTotalEnergyConsumption is not supported on GPU " + first + " (NVML error " +
             std::to_string(rc) + "; needs Volta or newer)";
      return false;
    }
    return true;
  }
  bool stop(double* joules, std::string* why) {
    unsigned long long now = 0;
    if (int rc = energy_(dev_, &now); rc != 0) {
      *why = "nvmlDeviceGetTotalEnergyConsumption failed (NVML error " + std::to_string(rc) + ")";
      return false;
    }
    *joules = static_cast<double>(now - start_mj_) * 1e-3;
    return true;
  }

 private:
  void* lib_ = nullptr;
  void* dev_ = nullptr;
  int (*energy_)(void*, unsigned long long*) = nullptr;
  int (*shutdown_)() = nullptr;
  unsigned long long start_mj_ = 0;
};

void price(LayerProfile& l, const EnergyTable& t) {
  const EnergyUnits& u = t.units(l.ops.bits);
  l.compute_pj = static_cast<double>(l.ops.mults + l.ops.other_ops) * u.mult_pj +
                 static_cast<double>(l.ops.adds) * u.add_pj + static_cast<double>(l.ops.shifts) * u.shift_pj;
  l.dram_pj = static_cast<double>(l.ops.weight_bytes + l.ops.activation_bytes) * t.dram_pj_per_byte;
  l.energy_pj = l.compute_pj + l.dram_pj;
}

}  // namespace

// ----- counting --------------------------------------------------------------------------------

std::vector<LayerProfile> count_ops(const Model& model, int64_t batch,
                                    const std::vector<ExpertLoad>& expert_tokens) {
  if (batch <= 0) throw Error("profile: batch size must be positive, got " + std::to_string(batch));
  const Graph& g = model.impl().graph;
  std::map<std::string, std::array<int64_t, 2>> routed;
  for (const ExpertLoad& l : expert_tokens) routed[l.layer] = {l.tokens[0], l.tokens[1]};
  std::vector<LayerProfile> out;
  // ModelInfo::layers describes the same nodes in the same order (Input excluded).
  const std::vector<LayerInfo>& layers = model.info().layers;
  size_t li = 0;
  for (const Node& n : g.nodes()) {
    if (n.op == OpKind::Input) continue;
    const LayerInfo& info = layers.at(li++);
    LayerProfile l;
    l.name = info.name;
    l.op = info.op;
    l.kind = info.kind;
    l.out_shape = info.out_shape;
    std::array<int64_t, 2> t{0, 0};
    if (n.op == OpKind::MoeLinear) {
      l.moe = true;
      const auto it = routed.find(n.name);
      const int64_t rows = batch * shape_numel(l.out_shape) / l.out_shape.back();
      t = it != routed.end() ? it->second : std::array<int64_t, 2>{rows, 0};
      l.expert_tokens[0] = t[0];
      l.expert_tokens[1] = t[1];
      if (it == routed.end()) l.note = "no routing recorded: all tokens counted on expert 0";
    }
    std::string note;
    l.ops = count_node_ops(g, n, batch, t, &note);
    if (!note.empty()) l.note = note;
    out.push_back(std::move(l));
  }
  return out;
}

// ----- profiling -------------------------------------------------------------------------------

ProfileReport profile(std::shared_ptr<const Model> model, const ProfileOptions& o) {
  if (!model) throw Error("profile: model is null");
  if (o.batch <= 0) throw Error("profile: --batch must be positive, got " + std::to_string(o.batch));
  if (o.runs < 1) throw Error("profile: --runs must be at least 1, got " + std::to_string(o.runs));
  if (o.warmup < 0) throw Error("profile: --warmup must be >= 0, got " + std::to_string(o.warmup));
  const ModelInfo& mi = model->info();
  const int64_t per = mi.in_chans * mi.image_size * mi.image_size;
  std::vector<float> x;
  if (o.input.empty()) {
    x.resize(static_cast<size_t>(o.batch * per));
    std::mt19937 rng(0);
    std::normal_distribution<float> nd;
    for (float& v : x) v = nd(rng);
  } else if (static_cast<int64_t>(o.input.size()) != o.batch * per) {
    throw Error("profile: input has " + std::to_string(o.input.size()) + " values; expected batch " +
                std::to_string(o.batch) + " x " + std::to_string(mi.in_chans) + " x " +
                std::to_string(mi.image_size) + " x " + std::to_string(mi.image_size));
  }
  const std::vector<float>& input = o.input.empty() ? x : o.input;

  Session session(model, o.session);  // throws for an unavailable device
  ProfileReport r;
  r.model = mi.path;
  r.device = o.session.device == Device::CUDA ? "cuda" : "cpu";
  r.mode = o.session.mode == ShiftMode::Fast ? "fast" : "exact";
  r.simd = o.session.device == Device::CUDA ? "cuda" : kernels::cpu::simd_name();
  r.threads = o.session.threads > 0 ? o.session.threads : static_cast<int>(std::thread::hardware_concurrency());
  r.batch = o.batch;
  r.runs = o.runs;
  r.warmup = o.warmup;
  r.energy = o.energy;

  std::vector<float> logits(static_cast<size_t>(o.batch * mi.num_classes));
  session.prepare(o.batch);
  session.set_profiling(true);
  for (int i = 0; i < o.warmup; ++i) session.run(input.data(), o.batch, logits.data());

  RaplMeter rapl;
  NvmlMeter nvml;
  bool measuring = false;
  std::string why = "not requested";
  if (o.measure_energy)
    measuring = r.device == "cuda" ? nvml.start(&why) : rapl.start(&why);

  using clock = std::chrono::steady_clock;
  const auto first = clock::now();
  for (int i = 0; i < o.runs; ++i) {
    const auto t0 = clock::now();
    session.run(input.data(), o.batch, logits.data());
    const auto t1 = clock::now();
    r.run_start_us.push_back(std::chrono::duration<double, std::micro>(t0 - first).count());
    r.run_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    r.run_layer_ms.push_back(session.layer_ms());
  }
  const double elapsed_s = std::chrono::duration<double>(clock::now() - first).count();
  if (measuring) {
    double joules = 0;
    const bool ok = r.device == "cuda" ? nvml.stop(&joules, &why) : rapl.stop(&joules, &why);
    if (ok) {
      r.measured_j_per_image = joules / (static_cast<double>(o.runs) * static_cast<double>(o.batch));
      r.measured_source = r.device == "cuda" ? "nvml" : "rapl";
      char buf[256];
      std::snprintf(buf, sizeof buf, "%.6f J over %d runs (%.3f s, average %.2f W)%s", joules, o.runs,
                    elapsed_s, elapsed_s > 0 ? joules / elapsed_s : 0.0,
                    r.device == "cuda" ? ", GPU total energy counter (whole GPU)"
                                       : ", CPU package counters: includes everything else running");
      r.measured_note = buf;
    }
  }
  if (!r.measured_j_per_image) {
    r.measured_source = "unavailable";
    r.measured_note = why;
  }
  session.set_profiling(false);

  r.layers = count_ops(*model, o.batch, session.expert_tokens());
  std::vector<double> sorted = r.run_ms;
  std::sort(sorted.begin(), sorted.end());
  r.min_ms = sorted.front();
  r.max_ms = sorted.back();
  const size_t h = sorted.size() / 2;
  r.median_ms = sorted.size() % 2 ? sorted[h] : 0.5 * (sorted[h - 1] + sorted[h]);
  // Times are means over the fastest 3/4 of the runs (all runs when fewer than 4), the layers'
  // over the same runs as the total, so a run preempted on a busy machine does not dominate and
  // the layers still add up to at most the total.
  std::vector<size_t> order(r.run_ms.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return r.run_ms[a] < r.run_ms[b]; });
  const size_t keep = order.size() >= 4 ? (3 * order.size() + 3) / 4 : order.size();
  order.resize(keep);
  r.runs_used = static_cast<int>(keep);
  double total = 0;
  for (size_t k : order) total += r.run_ms[k];
  r.total_ms = total / static_cast<double>(keep);
  for (size_t i = 0; i < r.layers.size(); ++i) {
    LayerProfile& l = r.layers[i];
    double sum = 0;
    for (size_t k : order) sum += i < r.run_layer_ms[k].size() ? r.run_layer_ms[k][i] : 0.0;
    l.ms = sum / static_cast<double>(keep);
    l.share = r.total_ms > 0 ? l.ms / r.total_ms : 0;
    price(l, r.energy);
    r.totals.mults += l.ops.mults;
    r.totals.adds += l.ops.adds;
    r.totals.shifts += l.ops.shifts;
    r.totals.other_ops += l.ops.other_ops;
    r.totals.weight_bytes += l.ops.weight_bytes;
    r.totals.activation_bytes += l.ops.activation_bytes;
    r.totals.bits = i == 0 ? l.ops.bits : std::max(r.totals.bits, l.ops.bits);
    r.compute_pj += l.compute_pj;
    r.dram_pj += l.dram_pj;
    r.energy_pj += l.energy_pj;
  }
  return r;
}

void write_text_file(const std::string& path, const std::string& content, bool overwrite) {
  write_file_atomic(path, {{content.data(), content.size()}}, overwrite);
}

}  // namespace shiftadd
