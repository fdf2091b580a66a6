// shiftadd classify [MODEL] IMAGE... : top-k labels per image.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>

#include "cli.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

void register_classify(CLI::App& app) {
  struct Opts {
    RunOptions run;
    std::vector<std::string> args;
    std::string model;
    int top = 5;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "classify", "Classify images: [MODEL] IMAGE... (no MODEL: the bundled Fashion-MNIST ViT)");
  sub->add_option("args", o->args, "[MODEL] IMAGE...: a model file/directory, then JPEG/PNG/BMP images")
      ->required();
  sub->add_option("-m,--model", o->model, "Model file or directory (instead of the first argument)");
  sub->add_option("-k,--top", o->top, "How many classes to show per image")->check(CLI::PositiveNumber);
  sub->add_flag("--json", o->json, "One JSON object per image on stdout");
  add_threads_option(*sub, o->run);
  sub->callback([o] {
    std::vector<std::string> images = o->args;
    std::string model = o->model;
    if (model.empty() && images.size() > 1 && looks_like_model(images.front())) {
      model = images.front();
      images.erase(images.begin());
    }
    if (model.empty()) model = default_model_path();
    if (images.empty() || (images.size() == 1 && looks_like_model(images[0]) && o->model.empty()))
      throw Error("classify: no image given (usage: shiftadd classify [MODEL] IMAGE...)");
    auto m = Model::load(model);
    Session session(m, session_options(o->run));
    for (const std::string& img : images) {
      const auto preds = session.classify(img, o->top);
      if (o->json) {
        nlohmann::json j{{"image", img}, {"model", m->info().path}};
        for (const auto& p : preds)
          j["top"].push_back({{"index", p.index}, {"label", p.label}, {"probability", p.probability}});
        std::cout << j.dump() << "\n";
      } else {
        std::cout << img << "\n";
        for (const auto& p : preds)
          std::printf("  %6.2f%%  %s (%d)\n", 100.0 * p.probability, p.label.c_str(), p.index);
      }
    }
  });
}

}  // namespace shiftadd::cli
