// shiftadd::evaluate (include/shiftadd/dataset.h): accuracy of a model over a dataset.
#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "shiftadd/dataset.h"

namespace shiftadd {

namespace {

// Rank of the true class among the logits: classes scoring higher, plus equal-scoring classes
// with a lower index (argmax's tie-break), so rank 0 is a top-1 hit.
int64_t rank_of(const float* logits, int64_t classes, int label) {
  const float y = logits[label];
  int64_t r = 0;
  for (int64_t c = 0; c < classes; ++c) r += logits[c] > y || (logits[c] == y && c < label);
  return r;
}

}  // namespace

EvalResult evaluate(std::shared_ptr<const Model> model, const Dataset& data, const EvalOptions& options) {
  if (!model) throw Error("evaluate: model is null");
  if (options.batch < 1) throw Error("evaluate: batch must be >= 1, got " + std::to_string(options.batch));
  const ModelInfo& mi = model->info();
  data.check_labels(mi.num_classes);
  const int64_t n = data.size();
  if (n == 0) throw Error("dataset '" + data.description() + "': has no samples");
  Session session(model, options.session);

  EvalResult r;
  r.model = mi.path;
  r.data = data.description();
  r.format = data.format();
  r.images = n;
  r.batch = std::min(options.batch, n);
  const int64_t per = model->input_size(), classes = mi.num_classes;
  for (int64_t c = 0; c < classes; ++c)
    r.class_names.push_back(c < static_cast<int64_t>(mi.labels.size()) && !mi.labels[c].empty()
                                ? mi.labels[c]
                                : "class_" + std::to_string(c));
  r.class_hits1.assign(static_cast<size_t>(classes), 0);
  r.class_seen.assign(static_cast<size_t>(classes), 0);
  std::vector<float> x(static_cast<size_t>(r.batch * per)), logits(static_cast<size_t>(r.batch * classes));
  session.prepare(r.batch);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t start = 0; start < n; start += r.batch) {
    const int64_t b = std::min(r.batch, n - start);
    for (int64_t i = 0; i < b; ++i) data.preprocess(start + i, *model, &x[static_cast<size_t>(i * per)]);
    session.run(x.data(), b, logits.data());
    for (int64_t i = 0; i < b; ++i) {
      const int label = data.label(start + i);
      const int64_t rank = rank_of(&logits[static_cast<size_t>(i * classes)], classes, label);
      r.correct1 += rank == 0;
      r.correct5 += rank < 5;
      r.class_hits1[label] += rank == 0;
      ++r.class_seen[label];
    }
    if (options.progress) options.progress(start + b, n);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.top1 = static_cast<double>(r.correct1) / static_cast<double>(n);
  r.top5 = static_cast<double>(r.correct5) / static_cast<double>(n);
  r.images_per_s = r.seconds > 0 ? static_cast<double>(n) / r.seconds : 0;
  return r;
}

std::string EvalResult::to_json() const {
  nlohmann::json per_class = nlohmann::json::object();
  for (size_t c = 0; c < class_seen.size(); ++c)
    if (class_seen[c]) per_class[class_names[c]] = static_cast<double>(class_hits1[c]) / class_seen[c];
  const nlohmann::json j{{"model", model},       {"data", data},         {"format", format},
                         {"images", images},     {"top1", top1},         {"top5", top5},
                         {"correct1", correct1}, {"correct5", correct5}, {"seconds", seconds},
                         {"images_per_s", images_per_s}, {"batch", batch}, {"per_class_top1", per_class}};
  return j.dump();
}

}  // namespace shiftadd
