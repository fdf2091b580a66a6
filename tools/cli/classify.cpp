// shiftadd classify [MODEL] IMAGE... : top-k labels per image.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

namespace {

bool is_image_file(const std::filesystem::path& p) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return std::tolower(c); });
  return e == ".jpg" || e == ".jpeg" || e == ".png" || e == ".bmp";
}

// Folders become their image files in name order; other arguments are kept as given.
std::vector<std::string> expand_image_args(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (const std::string& a : args) {
    std::error_code ec;
    if (!std::filesystem::is_directory(a, ec)) {
      out.push_back(a);
      continue;
    }
    std::vector<std::string> found;
    for (const auto& e : std::filesystem::directory_iterator(a, ec))
      if (e.is_regular_file(ec) && is_image_file(e.path())) found.push_back(e.path().string());
    if (ec) throw Error("classify: cannot read folder " + a + ": " + ec.message());
    if (found.empty()) throw Error("classify: folder " + a + " has no JPEG/PNG/BMP images");
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}

}  // namespace

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
      "classify",
      "Classify images: [MODEL] IMAGE|FOLDER... (no MODEL: the bundled Fashion-MNIST ViT). An image that cannot "
      "be read is reported and skipped; the exit status is then 1");
  sub->add_option("args", o->args,
                  "[MODEL] IMAGE|FOLDER...: a model file/directory, then JPEG/PNG/BMP images or folders of them "
                  "(their image files, in name order; not recursive)")
      ->required();
  sub->add_option("-m,--model", o->model, "Model file or directory (instead of the first argument)");
  sub->add_option("-k,--top", o->top, "How many classes to show per image")->check(kPositive);
  sub->add_flag("--json", o->json, "One JSON object per image on stdout");
  add_threads_option(*sub, o->run);
  sub->callback([o] {
    std::vector<std::string> args = o->args;
    std::string model = o->model;
    if (model.empty() && args.size() > 1 && looks_like_model(args.front())) {
      model = args.front();
      args.erase(args.begin());
    }
    if (model.empty()) model = default_model_path();
    if (args.empty() || (args.size() == 1 && looks_like_model(args[0]) && o->model.empty()))
      throw Error("classify: no image given (usage: shiftadd classify [MODEL] IMAGE|FOLDER...)");
    const std::vector<std::string> images = expand_image_args(args);
    auto m = Model::load(model);
    Session session(m, session_options(o->run));
    // One unreadable image does not stop the others: failures are listed, and the exit is non-zero.
    std::vector<std::string> failed;
    for (const std::string& img : images) {
      std::vector<Prediction> preds;
      try {
        preds = session.classify(img, o->top);
      } catch (const Error& e) {
        std::cerr << "error: " << e.what() << "\n";
        if (o->json) std::cout << nlohmann::json{{"image", img}, {"error", e.what()}}.dump() << "\n";
        failed.push_back(img);
        continue;
      }
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
      std::cout.flush();
    }
    if (!failed.empty()) {
      std::string list;
      for (const std::string& f : failed) list += (list.empty() ? "" : ", ") + f;
      throw Error("classify: " + std::to_string(failed.size()) + " of " + std::to_string(images.size()) +
                  " images failed: " + list);
    }
  });
}

}  // namespace shiftadd::cli
