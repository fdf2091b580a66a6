// shiftadd inspect MODEL : what the engine sees in a model file.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "cli.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

static std::string pad(const std::string& s, size_t w) { return s + std::string(w > s.size() ? w - s.size() : 0, ' '); }

static std::string dims(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

void register_inspect(CLI::App& app) {
  struct Opts {
    std::string model;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("inspect", "Show a model's format, architecture, dims and layers");
  sub->add_option("model", o->model, "Model file or directory")->required();
  sub->add_flag("--json", o->json, "Print one JSON object");
  sub->callback([o] {
    auto m = Model::load(o->model);
    const ModelInfo& mi = m->info();
    if (o->json) {
      std::cout << model_info_json(mi) << "\n";
      return;
    }
    std::printf("model        %s\n", mi.path.c_str());
    std::printf("format       %s (%s names)\n", mi.format.c_str(), mi.naming.c_str());
    std::printf("architecture %s\n", mi.architecture.c_str());
    std::printf("input        %lld x %lld x %lld, patch %lld\n", (long long)mi.in_chans,
                (long long)mi.image_size, (long long)mi.image_size, (long long)mi.patch_size);
    std::printf("dims         dim %lld, depth %lld, heads %lld, mlp %lld, tokens %lld, classes %lld, eps %g\n",
                (long long)mi.dim, (long long)mi.depth, (long long)mi.heads, (long long)mi.mlp_hidden,
                (long long)mi.tokens, (long long)mi.num_classes, mi.layer_norm_eps);
    std::printf("parameters   %lld\n", (long long)mi.params);
    std::string dt;
    for (const auto& [k, v] : mi.stored_dtypes) dt += k + " x" + std::to_string(v) + "  ";
    std::printf("dtypes       %s\n\n", dt.c_str());
    // Columns as wide as their longest entry, so long layer names do not shift the rows.
    size_t wn = 5, wo = 2, wk = 4, ws = 13;
    for (const auto& l : mi.layers) {
      wn = std::max(wn, l.name.size());
      wo = std::max(wo, l.op.size());
      wk = std::max(wk, l.kind.size());
      ws = std::max(ws, dims(l.out_shape).size());
    }
    auto row = [&](const std::string& name, const std::string& op, const std::string& kind, const std::string& shape,
                   const std::string& params, const std::string& detail) {
      std::string line = pad(name, wn) + "  " + pad(op, wo) + "  " + pad(kind, wk) + "  " + pad(shape, ws) + "  " +
                         std::string(params.size() < 10 ? 10 - params.size() : 0, ' ') + params;
      if (!detail.empty()) line += "  " + detail;
      std::printf("%s\n", line.c_str());
    };
    row("layer", "op", "kind", "output/sample", "params", "arithmetic");
    for (const auto& l : mi.layers) row(l.name, l.op, l.kind, dims(l.out_shape), std::to_string(l.params), l.detail);
  });
}

}  // namespace shiftadd::cli
