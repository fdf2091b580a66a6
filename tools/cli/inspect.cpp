// shiftadd inspect MODEL : what the engine sees in a model file.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

#include "cli.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

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
      nlohmann::json j{{"path", mi.path}, {"format", mi.format}, {"naming", mi.naming},
                       {"architecture", mi.architecture}, {"image_size", mi.image_size},
                       {"patch_size", mi.patch_size}, {"in_chans", mi.in_chans}, {"dim", mi.dim},
                       {"depth", mi.depth}, {"heads", mi.heads}, {"mlp_hidden", mi.mlp_hidden},
                       {"num_classes", mi.num_classes}, {"tokens", mi.tokens},
                       {"layer_norm_eps", mi.layer_norm_eps}, {"params", mi.params},
                       {"dtypes", mi.stored_dtypes}};
      for (const auto& l : mi.layers)
        j["layers"].push_back({{"name", l.name}, {"op", l.op}, {"kind", l.kind},
                               {"out_shape", l.out_shape}, {"params", l.params},
                               {"detail", l.detail}});
      std::cout << j.dump() << "\n";
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
    std::printf("%-28s %-12s %-18s %-16s %10s  %s\n", "layer", "op", "kind", "output/sample", "params",
                "arithmetic");
    for (const auto& l : mi.layers)
      std::printf("%-28s %-12s %-18s %-16s %10lld  %s\n", l.name.c_str(), l.op.c_str(), l.kind.c_str(),
                  dims(l.out_shape).c_str(), (long long)l.params, l.detail.c_str());
  });
}

}  // namespace shiftadd::cli
