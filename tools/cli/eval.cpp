// shiftadd eval MODEL DATA : top-1 / top-5 accuracy over a labeled dataset.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "cli.h"
#include "progress.h"
#include "shiftadd/dataset.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

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

void register_eval(CLI::App& app) {
  struct Opts {
    RunOptions run;
    std::string model, data, split = "test", labels;
    int64_t limit = 0, batch = 64;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "eval", "Top-1 / top-5 accuracy of a model over a labeled dataset (IDX files, class folders, .npy)");
  sub->add_option("model", o->model, "Model file or directory")->required();
  sub->add_option("data", o->data,
                  "Dataset: a directory of IDX files (e.g. /usr/share/datasets/fashion-mnist), an idx3 "
                  "images file, a directory with one folder of images per class, or a preprocessed "
                  "(N, C, H, W) float32 .npy with labels.npy beside it")
      ->required();
  sub->add_option("-s,--split", o->split, "IDX directories: which files, train (train-*) or test (t10k-*, test-*)")
      ->check(CLI::IsMember({"train", "test"}));
  sub->add_option("-n,--limit", o->limit, "Only the first N samples (0 = all)")->check(kNonNegative);
  sub->add_option("-b,--batch", o->batch, "Images per inference run")->check(kPositive);
  sub->add_option("--labels", o->labels, "Labels file (IDX idx1 or .npy) instead of the one found beside DATA");
  sub->add_flag("--json", o->json, "One JSON line: top1, top5, images, images_per_s, model, data, ...");
  add_threads_option(*sub, o->run);
  sub->callback([o] {
    auto m = Model::load(o->model);
    const ModelInfo& mi = m->info();
    DatasetOptions dopt;
    dopt.split = o->split;
    dopt.limit = o->limit;
    dopt.labels = mi.labels;
    dopt.labels_path = o->labels;
    const Dataset data = Dataset::open(o->data, dopt);
    data.check_labels(mi.num_classes);
    const int64_t n = data.size();
    if (n == 0) throw Error("dataset '" + data.description() + "': has no samples");
    Session session(m, session_options(o->run));

    const int64_t batch = std::min(o->batch, n);
    const int64_t per = m->input_size(), classes = mi.num_classes;
    std::vector<float> x(static_cast<size_t>(batch * per)), logits(static_cast<size_t>(batch * classes));
    std::vector<int64_t> hits1(static_cast<size_t>(classes)), seen(static_cast<size_t>(classes));
    int64_t top1 = 0, top5 = 0;
    session.prepare(batch);
    Progress bar("eval", n);
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t start = 0; start < n; start += batch) {
      const int64_t b = std::min(batch, n - start);
      for (int64_t i = 0; i < b; ++i) data.preprocess(start + i, *m, &x[static_cast<size_t>(i * per)]);
      session.run(x.data(), b, logits.data());
      for (int64_t i = 0; i < b; ++i) {
        const int label = data.label(start + i);
        const int64_t r = rank_of(&logits[static_cast<size_t>(i * classes)], classes, label);
        top1 += r == 0;
        top5 += r < 5;
        hits1[label] += r == 0;
        ++seen[label];
      }
      bar.update(start + b);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bar.finish();
    const double acc1 = static_cast<double>(top1) / n, acc5 = static_cast<double>(top5) / n;
    const double ips = secs > 0 ? n / secs : 0;
    auto class_name = [&](int64_t c) {
      if (c < static_cast<int64_t>(mi.labels.size()) && !mi.labels[c].empty()) return mi.labels[c];
      return "class_" + std::to_string(c);
    };
    if (o->json) {
      nlohmann::json j{{"model", mi.path},   {"data", data.description()}, {"format", data.format()},
                       {"images", n},        {"top1", acc1},               {"top5", acc5},
                       {"correct1", top1},   {"correct5", top5},           {"seconds", secs},
                       {"images_per_s", ips}, {"batch", batch},            {"threads", o->run.threads},
                       {"mode", o->run.mode}};
      if (data.format() == "idx") j["split"] = o->split;
      nlohmann::json per_class = nlohmann::json::object();
      for (int64_t c = 0; c < classes; ++c)
        if (seen[c]) per_class[class_name(c)] = static_cast<double>(hits1[c]) / seen[c];
      j["per_class_top1"] = per_class;
      std::cout << j.dump() << "\n";
    } else {
      std::printf("%s on %s (%s, %lld images)\n", mi.path.c_str(), data.description().c_str(),
                  data.format().c_str(), static_cast<long long>(n));
      std::printf("top-1 %.4f (%lld)   top-5 %.4f (%lld)   %.1f images/s (%.2f s, batch %lld)\n", acc1,
                  static_cast<long long>(top1), acc5, static_cast<long long>(top5), ips, secs,
                  static_cast<long long>(batch));
      std::printf("per class top-1:\n");
      for (int64_t c = 0; c < classes; ++c)
        if (seen[c])
          std::printf("  %-24s %.4f  (%lld/%lld)\n", class_name(c).c_str(), static_cast<double>(hits1[c]) / seen[c],
                      static_cast<long long>(hits1[c]), static_cast<long long>(seen[c]));
    }
  });
}

}  // namespace shiftadd::cli
