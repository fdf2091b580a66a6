// shiftadd: classify images, run, benchmark and inspect ViT models.
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "cli.h"
#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

namespace {
CLI::Validator number_check(bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& in) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(in.c_str(), &end);
        if (end != in.c_str() && *end == '\0' && (v > 0 || (allow_zero && v == 0))) return "";
        return std::string("expected a number ") + (allow_zero ? ">= 0" : "> 0") + ", got '" + in + "'";
      },
      allow_zero ? "NONNEGATIVE" : "POSITIVE");
}

// Levenshtein distance, for "did you mean" on a mistyped subcommand.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

// The first word that is not an option must be a subcommand (the top level has only flags):
// CLI11 would say "The following arguments were not expected" instead.
std::string unknown_subcommand_error(const CLI::App& app, int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.empty() || a[0] == '-') continue;
    std::string names, best;
    size_t best_d = 3;  // suggest only close matches
    for (const CLI::App* sub : app.get_subcommands({})) {
      if (sub->get_name() == a) return "";
      names += (names.empty() ? "" : ", ") + sub->get_name();
      if (const size_t d = edit_distance(a, sub->get_name()); d < best_d) best_d = d, best = sub->get_name();
    }
    return "unknown subcommand '" + a + "'" + (best.empty() ? "" : " (did you mean '" + best + "'?)") +
           "; subcommands: " + names + " (shiftadd --help)";
  }
  return "";
}
}  // namespace

const CLI::Validator kPositive = number_check(false), kNonNegative = number_check(true);

void refuse_existing(const std::string& path, const char* option, bool force) {
  if (!path.empty() && !force && std::filesystem::exists(path))
    throw Error(std::string(option) + " " + path +
                ": file already exists; refusing to replace it (use --force to overwrite)");
}

void add_threads_option(CLI::App& app, RunOptions& o) {
  app.add_option("-t,--threads", o.threads, "Worker threads (0 = all cores)")->check(kNonNegative);
  app.add_option("--mode", o.mode,
                 "Shift-layer arithmetic (ShiftAddViT models): exact (upstream float semantics) "
                 "or fast (power-of-two weights as int8 times per-token int8 activations on the integer "
                 "dot-product units; ~1% per layer)")
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

Array load_model_input(const std::string& path, const ModelInfo& mi) {
  Array x = load_npy_f32(path);
  const std::vector<int64_t> want{mi.in_chans, mi.image_size, mi.image_size};
  if (x.shape.size() != 4 || std::vector<int64_t>(x.shape.begin() + 1, x.shape.end()) != want || x.shape[0] < 1) {
    std::string got;
    for (size_t i = 0; i < x.shape.size(); ++i) got += (i ? ", " : "") + std::to_string(x.shape[i]);
    throw Error(path + ": input shape (" + got + ") does not match the model " + mi.path + ": expected (B, " +
                std::to_string(mi.in_chans) + ", " + std::to_string(mi.image_size) + ", " +
                std::to_string(mi.image_size) + ") with B >= 1");
  }
  return x;
}

bool looks_like_model(const std::string& arg) {
  namespace fs = std::filesystem;
  const auto is_weights = [](const fs::path& p) { return p.extension() == ".safetensors" || p.extension() == ".onnx"; };
  const fs::path p(arg);
  std::error_code ec;
  if (!fs::is_directory(p, ec)) return is_weights(p);
  // A model directory holds weights (a folder of images does not).
  for (const auto& e : fs::directory_iterator(p, ec))
    if (is_weights(e.path())) return true;
  return false;
}

}  // namespace shiftadd::cli

int main(int argc, char** argv) {
  CLI::App app{"shiftadd " + shiftadd::version() +
               ": inference engine for (multiplication-reduced) Vision Transformers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "shiftadd " + shiftadd::version());
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
  if (const std::string err = shiftadd::cli::unknown_subcommand_error(app, argc, argv); !err.empty()) {
    std::cerr << "error: " << err << "\n";
    return 2;
  }
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
