// shiftadd bench MODEL : in-process latency after warm-up.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <random>

#include "cli.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

namespace {

// Nearest-rank percentile of sorted values (p in (0, 100]).
double percentile(const std::vector<double>& sorted, double p) {
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace

void register_bench(CLI::App& app) {
  struct Opts {
    RunOptions run;
    std::string model, input;
    int64_t batch = 1;
    int runs = 20, warmup = 3;
    double seconds = 0;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "bench", "Measure latency of one model after warm-up (random normal input, or --input pixels)");
  sub->add_option("model", o->model, "Model file or directory")->required();
  CLI::Option* batch_opt = sub->add_option("-b,--batch", o->batch, "Images per run (default 1)")->check(kPositive);
  CLI::Option* runs_opt = sub->add_option("-r,--runs", o->runs, "Timed runs (default 20)")->check(kPositive);
  sub->add_option("--seconds", o->seconds,
                  "Time-based run: keep running for this many seconds (at least one run) instead of --runs")
      ->check(kPositive)
      ->excludes(runs_opt);
  sub->add_option("-w,--warmup", o->warmup, "Untimed runs first (default 3)")->check(kNonNegative);
  sub->add_option("-i,--input", o->input,
                  "Run on these pixels: float32 .npy (B, C, H, W), preprocessed; B is the batch (default: "
                  "random normal). MoE routing, and so the speed of ShiftAddViT models, depends on the input")
      ->check(CLI::ExistingFile);
  sub->add_flag("--json", o->json,
                "One JSON line: mean_ms, median_ms, p90_ms, p99_ms, min_ms, max_ms, images_per_s, runs, "
                "mode, device, ...");
  add_threads_option(*sub, o->run);
  sub->callback([o, batch_opt] {
    auto m = Model::load(o->model);
    const ModelInfo& mi = m->info();
    std::vector<float> x;
    if (!o->input.empty()) {
      Array a = load_model_input(o->input, mi);
      if (batch_opt->count() > 0 && o->batch != a.shape[0])
        throw Error("--input " + o->input + " holds " + std::to_string(a.shape[0]) +
                    " images; --batch must be that (or left out)");
      o->batch = a.shape[0];
      x = std::move(a.data);
    } else {
      x.resize(static_cast<size_t>(o->batch * m->input_size()));
      std::mt19937 rng(0);
      std::normal_distribution<float> nd;
      for (float& v : x) v = nd(rng);
    }
    Session session(m, session_options(o->run));
    std::vector<float> logits(static_cast<size_t>(o->batch * mi.num_classes));
    session.prepare(o->batch);
    for (int i = 0; i < o->warmup; ++i) session.run(x.data(), o->batch, logits.data());
    std::vector<double> ms;
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const auto deadline = start + std::chrono::duration<double>(o->seconds);
    for (int i = 0; o->seconds > 0 ? (i == 0 || clock::now() < deadline) : i < o->runs; ++i) {
      const auto t0 = clock::now();
      session.run(x.data(), o->batch, logits.data());
      ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
    }
    const double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / static_cast<double>(ms.size());
    std::sort(ms.begin(), ms.end());
    const double med = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
    const double p90 = percentile(ms, 90), p99 = percentile(ms, 99);
    const double ips = 1000.0 * static_cast<double>(o->batch) / mean;
    const int runs = static_cast<int>(ms.size());
    if (o->json) {
      nlohmann::json j{{"model", mi.path},   {"batch", o->batch},     {"threads", o->run.threads},
                       {"mode", o->run.mode}, {"device", o->run.device}, {"input", o->input.empty() ? "random" : o->input},
                       {"runs", runs},        {"warmup", o->warmup},   {"mean_ms", mean},
                       {"median_ms", med},    {"p90_ms", p90},         {"p99_ms", p99},
                       {"min_ms", ms.front()}, {"max_ms", ms.back()},  {"images_per_s", ips}};
      if (o->seconds > 0) j["seconds"] = o->seconds;
      std::cout << j.dump() << "\n";
    } else {
      std::printf("%s  batch %lld  threads %d  %s mode  %s  %d runs  input %s\n", mi.path.c_str(),
                  static_cast<long long>(o->batch), o->run.threads, o->run.mode.c_str(), o->run.device.c_str(), runs,
                  o->input.empty() ? "random" : o->input.c_str());
      std::printf("latency ms: mean %.3f  min %.3f  median %.3f  p90 %.3f  p99 %.3f  max %.3f   throughput %.1f images/s\n",
                  mean, ms.front(), med, p90, p99, ms.back(), ips);
    }
  });
}

}  // namespace shiftadd::cli
