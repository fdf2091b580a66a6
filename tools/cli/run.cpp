// shiftadd run MODEL --input X.npy --output Y.npy : logits for preprocessed pixels.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>

#include "cli.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

void register_run(CLI::App& app) {
  struct Opts {
    RunOptions run;
    std::string model, input, output;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "run", "Run a model on preprocessed pixels: X.npy float32 (B,C,H,W) -> Y.npy float32 (B,classes)");
  sub->add_option("model", o->model, "Model file or directory")->required();
  sub->add_option("-i,--input", o->input, "Input .npy, float32 (B, C, H, W), C order")->required();
  sub->add_option("-o,--output", o->output, "Output .npy for the float32 (B, classes) logits")->required();
  sub->add_flag("-f,--force", o->force, "Overwrite OUTPUT if it exists and is not empty");
  add_threads_option(*sub, o->run);
  sub->callback([o] {
    // An empty file holds nothing of the user's (e.g. a freshly made temporary file).
    std::error_code ec;
    if (!o->force && std::filesystem::exists(o->output) && std::filesystem::file_size(o->output, ec) != 0)
      throw Error(o->output + ": already exists; pass --force to overwrite it");
    auto m = Model::load(o->model);
    const ModelInfo& mi = m->info();
    Array x = load_model_input(o->input, mi);
    Session session(m, session_options(o->run));
    Array y;
    y.shape = {x.shape[0], mi.num_classes};
    y.data = session.run(x.data, x.shape[0]);
    auto not_finite = [](const std::vector<float>& v) {
      return std::count_if(v.begin(), v.end(), [](float f) { return !std::isfinite(f); });
    };
    if (const auto bad = not_finite(y.data)) {
      const auto bad_in = not_finite(x.data);
      std::cerr << "shiftadd: warning: " << o->input << ": " << bad << " of the " << y.data.size()
                << " logits are not finite (NaN or Inf)"
                << (bad_in ? "; the input holds " + std::to_string(bad_in) + " NaN/Inf values"
                           : std::string("; the input is finite: the model's weights hold NaN/Inf or it overflows"))
                << "\n";
    }
    save_npy_f32(o->output, y);
  });
}

}  // namespace shiftadd::cli
