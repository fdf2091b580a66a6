// shiftadd: classify images, run, benchmark and inspect ViT models.
#include <filesystem>
#include <iostream>

#include "cli.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

void add_threads_option(CLI::App& app, RunOptions& o) {
  app.add_option("-t,--threads", o.threads, "Worker threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--mode", o.mode,
                 "Shift-layer arithmetic (ShiftAddViT models): exact (upstream float semantics) "
                 "or fast (integer shift-and-add, truncating)")
      ->check(CLI::IsMember({"exact", "fast"}));
  app.add_option("--device", o.device, "Where to run: cpu, or cuda (needs a CUDA build and an NVIDIA GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
}

SessionOptions session_options(const RunOptions& o) {
  SessionOptions s;
  s.threads = o.threads;
  s.mode = o.mode == "fast" ? ShiftMode::Fast : ShiftMode::Exact;
  s.device = o.device == "cuda" ? Device::CUDA : Device::CPU;
  return s;
}

bool looks_like_model(const std::string& arg) {
  namespace fs = std::filesystem;
  const fs::path p(arg);
  const std::string ext = p.extension().string();
  return ext == ".safetensors" || ext == ".onnx" || (fs::is_directory(p));
}

}  // namespace shiftadd::cli

int main(int argc, char** argv) {
  CLI::App app{"shiftadd " + shiftadd::version() +
               ": inference engine for (multiplication-reduced) Vision Transformers"};
  app.require_subcommand(1);
  app.fallthrough();  // -v works after the subcommand too
  int verbose = 0;
  app.add_flag("-v,--verbose", verbose, "More logging (-v info, -vv debug)");
  shiftadd::cli::register_classify(app);
  shiftadd::cli::register_run(app);
  shiftadd::cli::register_bench(app);
  shiftadd::cli::register_inspect(app);
  shiftadd::cli::register_profile(app);
  shiftadd::cli::register_eval(app);
  shiftadd::cli::register_convert(app);

  app.parse_complete_callback([&] { shiftadd::set_verbosity(verbose); });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const shiftadd::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
