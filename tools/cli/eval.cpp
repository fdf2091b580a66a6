// shiftadd eval MODEL DATA : top-1 / top-5 accuracy over a labeled dataset.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

#include "cli.h"
#include "progress.h"
#include "shiftadd/dataset.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

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
    DatasetOptions dopt;
    dopt.split = o->split;
    dopt.limit = o->limit;
    dopt.labels = m->info().labels;
    dopt.labels_path = o->labels;
    const Dataset data = Dataset::open(o->data, dopt);
    EvalOptions eo;
    eo.session = session_options(o->run);
    eo.batch = o->batch;
    data.check_labels(m->info().num_classes);  // before the progress bar appears
    Progress bar("eval", data.size());
    eo.progress = [&](int64_t done, int64_t) { bar.update(done); };
    const EvalResult r = evaluate(m, data, eo);
    bar.finish();
    if (o->json) {
      nlohmann::json j = nlohmann::json::parse(r.to_json());
      j["threads"] = o->run.threads;
      j["mode"] = o->run.mode;
      if (r.format == "idx") j["split"] = o->split;
      std::cout << j.dump() << "\n";
      return;
    }
    std::printf("%s on %s (%s, %lld images)\n", r.model.c_str(), r.data.c_str(), r.format.c_str(),
                static_cast<long long>(r.images));
    std::printf("top-1 %.4f (%lld)   top-5 %.4f (%lld)   %.1f images/s (%.2f s, batch %lld)\n", r.top1,
                static_cast<long long>(r.correct1), r.top5, static_cast<long long>(r.correct5), r.images_per_s,
                r.seconds, static_cast<long long>(r.batch));
    std::printf("per class top-1:\n");
    for (size_t c = 0; c < r.class_seen.size(); ++c)
      if (r.class_seen[c])
        std::printf("  %-24s %.4f  (%lld/%lld)\n", r.class_names[c].c_str(),
                    static_cast<double>(r.class_hits1[c]) / r.class_seen[c], static_cast<long long>(r.class_hits1[c]),
                    static_cast<long long>(r.class_seen[c]));
  });
}

}  // namespace shiftadd::cli
