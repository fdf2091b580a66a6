// shiftadd bench MODEL : in-process latency after warm-up.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>

#include "cli.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

void register_bench(CLI::App& app) {
  struct Opts {
    RunOptions run;
    std::string model;
    int64_t batch = 1;
    int runs = 20, warmup = 3;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("bench", "Measure latency of one model (random input, after warm-up)");
  sub->add_option("model", o->model, "Model file or directory")->required();
  sub->add_option("-b,--batch", o->batch, "Images per run")->check(CLI::PositiveNumber);
  sub->add_option("-r,--runs", o->runs, "Timed runs")->check(CLI::PositiveNumber);
  sub->add_option("-w,--warmup", o->warmup, "Untimed runs first")->check(CLI::NonNegativeNumber);
  sub->add_flag("--json", o->json, "One JSON line: median_ms, min_ms, max_ms, images_per_s, ...");
  add_threads_option(*sub, o->run);
  sub->callback([o] {
    auto m = Model::load(o->model);
    const ModelInfo& mi = m->info();
    Session session(m, session_options(o->run));
    std::vector<float> x(static_cast<size_t>(o->batch * mi.in_chans * mi.image_size * mi.image_size));
    std::mt19937 rng(0);
    std::normal_distribution<float> nd;
    for (float& v : x) v = nd(rng);
    std::vector<float> logits(static_cast<size_t>(o->batch * mi.num_classes));
    session.prepare(o->batch);
    for (int i = 0; i < o->warmup; ++i) session.run(x.data(), o->batch, logits.data());
    std::vector<double> ms;
    for (int i = 0; i < o->runs; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      session.run(x.data(), o->batch, logits.data());
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms.size() % 2 ? ms[ms.size() / 2] : 0.5 * (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]);
    const double ips = 1000.0 * o->batch / med;
    if (o->json) {
      nlohmann::json j{{"model", mi.path}, {"batch", o->batch}, {"threads", o->run.threads},
                       {"runs", o->runs}, {"warmup", o->warmup}, {"median_ms", med},
                       {"min_ms", ms.front()}, {"max_ms", ms.back()}, {"images_per_s", ips}};
      std::cout << j.dump() << "\n";
    } else {
      std::printf("%s  batch %lld  threads %d  runs %d\n", mi.path.c_str(),
                  static_cast<long long>(o->batch), o->run.threads, o->runs);
      std::printf("latency ms: min %.3f  median %.3f  max %.3f   throughput %.1f images/s\n",
                  ms.front(), med, ms.back(), ips);
    }
  });
}

}  // namespace shiftadd::cli
