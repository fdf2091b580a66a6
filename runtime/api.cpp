// The public API's implementation: model resolution (file or directory, safetensors or ONNX),
// the ViT build, and sessions over the CPU backend.
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <thread>
#include <fstream>
#include <nlohmann/json.hpp>
#include "core/log.h"

#include "engine/backend.h"
#include "engine/cuda_module.h"
#include "engine/executor.h"
#include "kernels/kernels.h"
#include "loaders/image.h"
#include "loaders/npy.h"
#include "loaders/onnx_vit.h"
#include "loaders/safetensors.h"
#include "loaders/vit_names.h"
#include "core/shift_codes.h"
#include "models/pvt/pvt_v2.h"
#include "models/pvt/shiftadd_pvt.h"
#include "models/vit/vit.h"
#include "shiftadd/shiftadd.h"
#include "runtime/model.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace shiftadd {

namespace {

std::optional<json> read_json(const fs::path& p) {
  if (!fs::exists(p)) return std::nullopt;
  std::ifstream in(p);
  if (!in) throw Error(p.string() + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(p.string() + ": invalid JSON: " + e.what());
  }
}

// Where the bundled models live: $SHIFTADD_DATA_DIR, then beside this library's install
// (<prefix>/share/shiftadd/models, wherever the prefix was moved), then the configured install
// prefix, then the source tree.
std::string data_dir() {
  if (const char* env = std::getenv("SHIFTADD_DATA_DIR"); env && *env) return env;
  std::vector<fs::path> candidates;
  Dl_info dl;
  if (dladdr(reinterpret_cast<void*>(&default_model_path), &dl) && dl.dli_fname)
    candidates.push_back(fs::path(dl.dli_fname).parent_path().parent_path() / "share/shiftadd/models");
  candidates.emplace_back(SHIFTADD_INSTALL_DATA_DIR);
  candidates.emplace_back(SHIFTADD_DATA_DIR);
  for (const fs::path& d : candidates)
    if (fs::exists(d / "fashion_vit")) return d.string();
  return SHIFTADD_DATA_DIR;
}

std::vector<std::string> imagenet_labels() {
  std::vector<std::string> labels;
  std::ifstream in(fs::path(data_dir()) / "imagenet" / "classes.txt");
  for (std::string line; std::getline(in, line);) labels.push_back(line);
  return labels;
}

bool has_extension(const fs::path& p, const char* ext) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), ::tolower);
  return e == ext;
}

// Files making up one model.
struct ModelFiles {
  fs::path weights;  // .safetensors or .onnx
  bool onnx = false;
  fs::path config, preprocessor;  // may not exist
};

ModelFiles resolve_model(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (!fs::exists(p, ec)) throw Error("model '" + path + "': no such file or directory");
  ModelFiles m;
  if (fs::is_directory(p)) {
    for (const char* name : {"model.safetensors", "model.onnx"})
      if (fs::exists(p / name)) {
        m.weights = p / name;
        break;
      }
    if (m.weights.empty()) {
      std::vector<fs::path> found;
      for (const auto& e : fs::directory_iterator(p))
        if (has_extension(e.path(), ".safetensors") || has_extension(e.path(), ".onnx")) found.push_back(e.path());
      if (found.size() == 1) m.weights = found[0];
      else if (fs::exists(p / "pytorch_model.bin"))
        throw Error("model '" + path + "': only pytorch_model.bin found; PyTorch pickles are not "
                    "loaded (unsafe): save the weights as model.safetensors");
      else
        throw Error("model '" + path + "': directory has " + std::to_string(found.size()) +
                    " .safetensors/.onnx files; expected model.safetensors or model.onnx");
    }
  } else {
    m.weights = p;
  }
  m.onnx = has_extension(m.weights, ".onnx");
  if (!m.onnx && !has_extension(m.weights, ".safetensors"))
    throw Error("model '" + m.weights.string() + "': unknown format (expected a .safetensors or "
                ".onnx file, or a model directory)");
  m.config = m.weights.parent_path() / "config.json";
  m.preprocessor = m.weights.parent_path() / "preprocessor_config.json";
  return m;
}

// The family-independent part of ModelInfo: files, parameter counts and the layer list.
// "shift codes, exponent [lo, hi], P% nonzero" and how fast mode's int8 window holds them.
std::string shift_detail(const Tensor& codes, int64_t dropped) {
  const uint8_t* c = codes.data<uint8_t>();
  int lo = 1, hi = -15;
  int64_t nonzero = 0;
  for (int64_t i = 0; i < codes.numel(); ++i) {
    if (shift_code_is_zero(c[i])) continue;
    ++nonzero;
    lo = std::min(lo, shift_code_exponent(c[i]));
    hi = std::max(hi, shift_code_exponent(c[i]));
  }
  std::string r = "shift codes";
  if (nonzero) r += ", exponent [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  const int64_t pct = codes.numel() ? (100 * nonzero + codes.numel() / 2) / codes.numel() : 0;
  r += ", " + std::to_string(pct) + "% nonzero";
  if (dropped == 0) return r + ", int8-exact (7 exponents per row)";
  char d[64];
  std::snprintf(d, sizeof d, ", %.2f%% below fast mode's int8 window", 100.0 * dropped / std::max<int64_t>(1, nonzero));
  return r + d;
}

std::string layer_detail(const Node& n) {
  switch (n.op) {
    case OpKind::ShiftLinear: return shift_detail(n.weights[0], n.prepared.shift.dropped);
    case OpKind::MoeLinear: return "top-1 of 2: dense fp32 | " + shift_detail(n.weights[4], n.prepared.shift.dropped);
    case OpKind::KshAttention:
      return std::to_string(n.p.nbits) + "-bit KSH codes, " + std::to_string(n.p.anchors) +
             " anchors, " + std::to_string(n.p.heads) + " heads";
    case OpKind::Linear:
    case OpKind::Attention:
    case OpKind::Conv2d: return "fp32";
    default: return "";
  }
}

ModelInfo describe_common(const ModelFiles& files, const WeightStore& stored,
                          const std::string& naming, const Graph& g) {
  ModelInfo info;
  info.path = files.weights.string();
  info.format = files.onnx ? "onnx" : "safetensors";
  info.naming = naming;
  for (const auto& [name, t] : stored.tensors) {
    ++info.stored_dtypes[std::string(dtype_name(t.dtype()))];
    info.params += t.numel();
  }
  for (const Node& n : g.nodes()) {
    if (n.op == OpKind::Input) continue;
    LayerInfo l;
    l.name = n.name;
    l.op = op_traits(n.op).name;
    l.kind = op_traits(n.op).kind;
    l.out_shape = g.sample_shape(n.output);
    for (const Tensor& w : n.weights) l.params += w.numel();
    l.detail = layer_detail(n);
    info.layers.push_back(std::move(l));
  }
  return info;
}

ModelInfo describe(const ModelFiles& files, const WeightStore& stored, const std::string& naming,
                   const VitConfig& c, const Graph& g) {
  ModelInfo info = describe_common(files, stored, naming, g);
  info.architecture = c.distilled ? "deit-distilled" : "vit";
  if (naming == "shiftadd") info.architecture = "shiftadd_" + info.architecture;
  info.image_size = c.image_size;
  info.patch_size = c.patch_size;
  info.in_chans = c.in_chans;
  info.dim = c.dim;
  info.depth = c.depth;
  info.heads = c.heads;
  info.mlp_hidden = c.mlp_hidden;
  info.num_classes = c.num_classes;
  info.tokens = c.tokens();
  info.layer_norm_eps = c.eps;
  info.labels = c.labels;
  return info;
}

// PVTv2: dim, heads, mlp_hidden and tokens describe the last stage; depth counts all blocks;
// patch_size is the stem's stride (4).
ModelInfo describe(const ModelFiles& files, const WeightStore& stored, const PvtConfig& c,
                   const Graph& g, const char* architecture, const char* naming) {
  ModelInfo info = describe_common(files, stored, naming, g);
  const PvtStage& last = c.stages.back();
  info.architecture = architecture;
  info.image_size = c.image_size;
  info.patch_size = c.stages.front().stride;
  info.in_chans = c.in_chans;
  info.dim = last.dim;
  info.depth = c.total_depth();
  info.heads = last.heads;
  info.mlp_hidden = last.mlp_hidden;
  info.num_classes = c.num_classes;
  info.tokens = last.grid * last.grid;
  info.layer_norm_eps = c.eps;
  info.labels = c.labels;
  return info;
}

}  // namespace

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

namespace {
std::unique_ptr<Model::Impl> load_model(const std::string& path);

// The "__metadata__" of a file written by `shiftadd convert` (docs/format.md).
struct ShiftaddFile {
  bool is = false;
  std::string architecture;
  json config;
  std::map<std::string, LayerKind> layers;
};

ShiftaddFile read_shiftadd_metadata(const WeightStore& w) {
  ShiftaddFile f;
  const auto fmt = w.metadata.find("format");
  if (fmt == w.metadata.end() || fmt->second != "shiftadd") return f;
  f.is = true;
  auto get = [&](const char* key) -> const std::string& {
    const auto it = w.metadata.find(key);
    if (it == w.metadata.end())
      throw Error(w.source + ": shiftadd file without metadata '" + key + "' (docs/format.md)");
    return it->second;
  };
  const std::string& version = get("format_version");
  if (version != "1" && version != "2")
    throw Error(w.source + ": shiftadd format version '" + version + "' is not supported by this build "
                "(it reads versions 1 and 2); convert the model again or update shiftadd");
  f.architecture = get("architecture");
  auto parse = [&](const char* key) {
    try {
      json j = json::parse(get(key));
      if (!j.is_object()) throw Error(w.source + ": metadata '" + key + "' must hold a JSON object");
      return j;
    } catch (const json::exception& e) {
      throw Error(w.source + ": metadata '" + key + "' is not valid JSON: " + e.what());
    }
  };
  f.config = parse("config");
  const json layers = parse("layers");
  for (const auto& [name, l] : layers.items()) {
    if (!l.is_object() || !l.contains("kind") || !l["kind"].is_string())
      throw Error(w.source + ": metadata 'layers' entry '" + name + "' has no \"kind\"");
    LayerKind& k = f.layers[name];
    k.kind = l["kind"].get<std::string>();
    k.combine = l.value("combine", std::string("none"));
    // Version 2 stores shift codes at their real width (docs/format.md).
    if (version == "2" && (k.kind == "shift" || k.kind == "moe")) {
      if (!l.contains("bits") || !l["bits"].is_number_integer() || (l["bits"] != 4 && l["bits"] != 5))
        throw Error(w.source + ": metadata 'layers' entry '" + name + "' (" + k.kind +
                    ") needs \"bits\": 4 or 5, the stored width of its shift codes");
      k.code_bits = l["bits"].get<int>();
    }
  }
  return f;
}
}

// Library and filesystem exceptions from malformed configs or unreadable directories become
// the one error type, naming the model.
std::shared_ptr<const Model> Model::load(const std::string& path) {
  try {
    return std::shared_ptr<const Model>(new Model(load_model(path)));
  } catch (const Error&) {
    throw;
  } catch (const json::exception& e) {
    throw Error("model '" + path + "': bad config: " + e.what());
  } catch (const std::bad_alloc&) {
    throw Error("model '" + path + "': out of memory");
  } catch (const std::exception& e) {
    throw Error("model '" + path + "': " + e.what());
  }
}

namespace {
std::unique_ptr<Model::Impl> load_model(const std::string& path) {
  const ModelFiles files = resolve_model(path);
  auto impl = std::make_unique<Model::Impl>();
  std::optional<json> config = read_json(files.config);
  const std::optional<json> pre = read_json(files.preprocessor);
  WeightStore stored;
  std::string naming;
  if (files.onnx) {
    OnnxVitInfo oi;
    stored = load_onnx_vit(files.weights.string(), &oi);
    naming = "onnx-graph";
    if (!config || !config->is_object()) config = json::object();
    // What the graph says wins over a config beside it.
    (*config)["num_heads"] = oi.heads;
    (*config)["layer_norm_eps"] = oi.eps;
    impl->weights = stored;
  } else {
    stored = load_safetensors(files.weights.string());
    const ShiftaddFile converted = read_shiftadd_metadata(stored);
    if (converted.is) config = converted.config;  // self-describing: a config.json beside it is ignored
    const bool timm_pvt = looks_like_timm_pvt_v2(stored);
    if (timm_pvt || looks_like_pvt_v2(stored)) {
      if (converted.is && converted.architecture != "pvt_v2" && converted.architecture != "shiftadd_pvt_v2")
        throw Error(files.weights.string() + ": shiftadd file of architecture '" + converted.architecture +
                    "' holds PVTv2 tensors");
      impl->weights = timm_pvt ? timm_pvt_v2_to_upstream(stored) : stored;
      PvtConfig pc = infer_pvt_v2_config(impl->weights, config ? &*config : nullptr);
      pc.layer_kinds = converted.layers;
      if (pc.labels.empty() && pc.num_classes == 1000) pc.labels = imagenet_labels();
      const bool shiftadd = looks_like_shiftadd_pvt(impl->weights);
      impl->graph = shiftadd ? build_shiftadd_pvt(pc, impl->weights) : build_pvt_v2(pc, impl->weights);
      check_supported(impl->graph, *make_cpu_backend(1));
      impl->preprocess = pc.preprocess;
      impl->info = describe(files, stored, pc, impl->graph, shiftadd ? "shiftadd_pvt_v2" : "pvt_v2",
                            timm_pvt ? "timm" : converted.is ? "shiftadd" : "upstream");
      logger().info("loaded {} ({}, {} stages, depth {}, last dim {}, heads from {})",
                    files.weights.string(), shiftadd ? "ShiftAddViT PVTv2" : "PVTv2",
                    pc.stages.size(), pc.total_depth(),
                    pc.stages.back().dim, pc.heads_source);
      return impl;
    }
    if (converted.is) {
      if (converted.architecture != "vit")
        throw Error(files.weights.string() + ": shiftadd file of architecture '" + converted.architecture +
                    "' does not hold PVTv2 tensors ('patch_embed1.proj.weight')");
      naming = "shiftadd";
      impl->weights = stored;
    } else {
      naming = vit_naming_name(detect_vit_naming(stored));
      impl->weights = canonicalize_vit_names(stored);
    }
  }
  impl->config = infer_vit_config(impl->weights, config ? &*config : nullptr, pre ? &*pre : nullptr);
  if (!files.onnx) impl->config.layer_kinds = read_shiftadd_metadata(stored).layers;
  if (impl->config.labels.empty() && impl->config.num_classes == 1000) impl->config.labels = imagenet_labels();
  impl->graph = build_vit(impl->config, impl->weights);
  impl->preprocess = impl->config.preprocess;
  check_supported(impl->graph, *make_cpu_backend(1));
  impl->info = describe(files, stored, naming, impl->config, impl->graph);
  logger().info("loaded {} ({} {}, dim {}, depth {}, heads {} from {})", files.weights.string(),
                impl->info.format, naming, impl->config.dim, impl->config.depth, impl->config.heads,
                impl->config.heads_source);
  return impl;
}
}  // namespace

const ModelInfo& Model::info() const { return impl_->info; }

int64_t Model::input_size() const {
  const PreprocessConfig& p = impl_->preprocess;
  return int64_t{p.channels} * p.size * p.size;
}

std::vector<float> Model::preprocess_image(const std::string& image_path) const {
  const Image img = load_image(image_path);
  return preprocess_pixels(img.pixels.data(), img.width, img.height, img.channels);
}

std::vector<float> Model::preprocess_pixels(const uint8_t* pixels, int width, int height, int channels) const {
  std::vector<float> out(static_cast<size_t>(input_size()));
  preprocess_pixels(pixels, width, height, channels, out.data());
  return out;
}

void Model::preprocess_pixels(const uint8_t* pixels, int width, int height, int channels, float* out) const {
  if (!pixels || width <= 0 || height <= 0 || (channels != 1 && channels != 3))
    throw Error("preprocess_pixels: expected 8-bit pixels with width and height > 0 and 1 or 3 channels, got " +
                std::to_string(width) + "x" + std::to_string(height) + "x" + std::to_string(channels));
  Image img;
  img.width = width;
  img.height = height;
  img.channels = channels;
  img.pixels.assign(pixels, pixels + size_t(width) * height * channels);
  shiftadd::preprocess_image(img, impl_->preprocess, out);
}

struct Session::Impl {
  std::shared_ptr<const Model> model;
  std::unique_ptr<Backend> backend;
  Executor executor;
  bool warned_not_finite = false;
  Impl(std::shared_ptr<const Model> m, std::unique_ptr<Backend> b)
      : model(std::move(m)), backend(std::move(b)), executor(model->impl().graph, *backend) {}
};

namespace {
// CUDA options from the environment: SHIFTADD_CUDA_MATH = fp32 (default) | tf32 | fp16 for the
// dense GEMMs, SHIFTADD_CUDA_GRAPHS = 0 to run every forward eagerly, SHIFTADD_CUDA_DEVICE = n.
CudaOptions cuda_options(kernels::ShiftMode mode) {
  CudaOptions o;
  o.shift_mode = mode;
  if (const char* m = std::getenv("SHIFTADD_CUDA_MATH"); m && *m) {
    const std::string v = m;
    if (v == "fp32") o.math = CudaMath::F32;
    else if (v == "tf32") o.math = CudaMath::TF32;
    else if (v == "fp16") o.math = CudaMath::F16;
    else throw Error("SHIFTADD_CUDA_MATH='" + v + "': expected fp32, tf32 or fp16");
  }
  if (const char* g = std::getenv("SHIFTADD_CUDA_GRAPHS"); g && std::string(g) == "0") o.graphs = false;
  if (const char* d = std::getenv("SHIFTADD_CUDA_DEVICE"); d && *d) o.device = std::atoi(d);
  return o;
}
}  // namespace

Session::Session(std::shared_ptr<const Model> model, SessionOptions options) {
  if (!model) throw Error("Session: model is null");
  const kernels::ShiftMode mode =
      options.mode == ShiftMode::Fast ? kernels::ShiftMode::Fast : kernels::ShiftMode::Exact;
  if (options.device == Device::CUDA) {
    std::unique_ptr<Backend> backend;
    try {
      backend = cuda_module().make_backend(cuda_options(mode));
    } catch (const Error& e) {
      throw Error(std::string("Session: --device cuda: ") + e.what());
    }
    check_supported(model->impl().graph, *backend);
    impl_ = std::make_unique<Impl>(std::move(model), std::move(backend));
    logger().info("session: CUDA backend (one stream, cuBLAS)");
    return;
  }
  impl_ = std::make_unique<Impl>(std::move(model), make_cpu_backend(options.threads, mode));
  logger().info("session: {} thread(s), CPU kernels {}", options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency()),
               kernels::cpu::simd_name());
}
Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

const Model& Session::model() const { return *impl_->model; }

void Session::prepare(int64_t batch) { impl_->executor.prepare(batch); }

namespace {
void check_top_k(int k) {
  if (k < 1) throw Error("top_k: k must be >= 1 (classes to return), got " + std::to_string(k));
}
void check_batch(int64_t batch) {
  if (batch < 1) throw Error("Session::run: batch must be >= 1 (images in the input), got " + std::to_string(batch));
}
}  // namespace

void Session::run(const float* input, int64_t batch, float* logits) {
  check_batch(batch);
  impl_->executor.run(batch, input, logits);
}

std::vector<float> Session::run(const std::vector<float>& input, int64_t batch) {
  check_batch(batch);
  const ModelInfo& mi = impl_->model->info();
  const int64_t per = mi.in_chans * mi.image_size * mi.image_size;
  if (static_cast<int64_t>(input.size()) != batch * per)
    throw Error("Session::run: input has " + std::to_string(input.size()) + " values; expected batch " +
                std::to_string(batch) + " x " + std::to_string(mi.in_chans) + " x " + std::to_string(mi.image_size) +
                " x " + std::to_string(mi.image_size) + " = " + std::to_string(batch * per));
  std::vector<float> logits(static_cast<size_t>(batch * mi.num_classes));
  run(input.data(), batch, logits.data());
  return logits;
}

std::vector<Prediction> Session::classify(const std::string& image_path, int k) {
  check_top_k(k);
  const std::vector<float> pixels = impl_->model->preprocess_image(image_path);
  const std::vector<float> logits = run(pixels, 1);
  if (!impl_->warned_not_finite &&
      !std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); })) {
    impl_->warned_not_finite = true;  // once per session: a broken model would say it per image
    logger().warn("{}: the logits are not finite (NaN or Inf): the model's weights hold NaN/Inf or its "
                  "activations overflow; the top classes are meaningless",
                  image_path);
  }
  return top_k(logits.data(), static_cast<int64_t>(logits.size()), impl_->model->info().labels, k);
}

void Session::set_profiling(bool on) { impl_->executor.set_profiling(on); }

std::vector<ExpertLoad> Session::expert_tokens() const {
  std::vector<ExpertLoad> out;
  const auto& nodes = impl_->model->impl().graph.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i].op != OpKind::MoeLinear) continue;
    ExpertLoad l;
    l.layer = nodes[i].name;
    const auto t = impl_->backend->expert_tokens(i);
    l.tokens[0] = t[0];
    l.tokens[1] = t[1];
    out.push_back(std::move(l));
  }
  return out;
}
std::vector<double> Session::layer_ms() const {
  const auto& all = impl_->executor.node_ms();
  std::vector<double> out;
  const auto& nodes = impl_->model->impl().graph.nodes();
  for (size_t i = 0; i < nodes.size() && i < all.size(); ++i)
    if (nodes[i].op != OpKind::Input) out.push_back(all[i]);
  return out;
}

std::vector<Prediction> top_k(const float* logits, int64_t classes,
                              const std::vector<std::string>& labels, int k) {
  check_top_k(k);
  if (!logits || classes < 1) throw Error("top_k: expected at least one logit, got " + std::to_string(classes));
  // Softmax that stays a ranking for non-finite logits: NaN ranks last, +Inf takes all the mass.
  auto key = [&](int64_t i) { return std::isnan(logits[i]) ? -INFINITY : static_cast<double>(logits[i]); };
  double mx = -INFINITY;
  for (int64_t i = 0; i < classes; ++i) mx = std::max(mx, key(i));
  std::vector<double> p(classes);
  double sum = 0;
  for (int64_t i = 0; i < classes; ++i)
    sum += p[i] = std::isinf(mx) ? (key(i) == mx ? 1.0 : 0.0) : std::exp(key(i) - mx);
  std::vector<int> idx(classes);
  for (int64_t i = 0; i < classes; ++i) idx[i] = static_cast<int>(i);
  k = static_cast<int>(std::min<int64_t>(k, classes));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return p[a] > p[b]; });
  std::vector<Prediction> out;
  for (int i = 0; i < k; ++i) {
    const int c = idx[i];
    const bool named = c < static_cast<int>(labels.size()) && !labels[c].empty();
    out.push_back({c, named ? labels[c] : "class_" + std::to_string(c), static_cast<float>(p[c] / sum)});
  }
  return out;
}

Array load_npy_f32(const std::string& path) {
  const Tensor t = load_npy(path, {DType::F32});
  Array a;
  a.shape = t.shape();
  a.data.assign(t.data<float>(), t.data<float>() + t.numel());
  return a;
}

void save_npy_f32(const std::string& path, const Array& a) {
  if (shape_numel(a.shape) != static_cast<int64_t>(a.data.size()))
    throw Error(path + ": array shape " + shape_str(a.shape) + " does not match its " +
                std::to_string(a.data.size()) + " values");
  save_npy(path, Tensor::borrow(const_cast<float*>(a.data.data()), DType::F32, a.shape, nullptr));
}

std::string model_info_json(const ModelInfo& mi) {
  json j{{"path", mi.path}, {"format", mi.format}, {"naming", mi.naming},
         {"architecture", mi.architecture}, {"image_size", mi.image_size},
         {"patch_size", mi.patch_size}, {"in_chans", mi.in_chans}, {"dim", mi.dim},
         {"depth", mi.depth}, {"heads", mi.heads}, {"mlp_hidden", mi.mlp_hidden},
         {"num_classes", mi.num_classes}, {"tokens", mi.tokens},
         {"layer_norm_eps", mi.layer_norm_eps}, {"params", mi.params},
         {"dtypes", mi.stored_dtypes}, {"labels", mi.labels}, {"layers", json::array()}};
  for (const auto& l : mi.layers)
    j["layers"].push_back({{"name", l.name}, {"op", l.op}, {"kind", l.kind},
                           {"out_shape", l.out_shape}, {"params", l.params},
                           {"detail", l.detail}});
  return j.dump();
}

std::string default_model_path() { return (fs::path(data_dir()) / "fashion_vit").string(); }
std::string version() { return "0.1.0"; }

}  // namespace shiftadd
