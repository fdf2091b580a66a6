// Session: a backend (CPU, or CUDA from its module) and an executor over a loaded model; top_k.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <thread>

#include "core/log.h"
#include "engine/backend.h"
#include "engine/cuda_module.h"
#include "engine/executor.h"
#include "kernels/kernels.h"
#include "runtime/model.h"

namespace shiftadd {

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

}  // namespace shiftadd
