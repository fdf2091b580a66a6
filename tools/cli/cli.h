#pragma once
// The `shiftadd` command line: one file per subcommand, each a thin client of the public API.
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "shiftadd/shiftadd.h"

namespace shiftadd::cli {

// Options every subcommand that runs a model shares.
struct RunOptions {
  int threads = 0;
  std::string mode = "exact";  // shift-layer arithmetic: exact | fast
  std::string device = "cpu";  // cpu | cuda
};
// Number checks whose messages name the value given (CLI11's PositiveNumber prints DBL_MAX in
// full): "--runs: expected a number > 0, got '-1'".
extern const CLI::Validator kPositive, kNonNegative;

// Adds --threads, --mode and --device.
void add_threads_option(CLI::App& app, RunOptions& o);
SessionOptions session_options(const RunOptions& o);

void register_classify(CLI::App& app);
void register_run(CLI::App& app);
void register_bench(CLI::App& app);
void register_inspect(CLI::App& app);
void register_profile(CLI::App& app);
void register_eval(CLI::App& app);
void register_convert(CLI::App& app);

// Refuses to replace an existing file the user named with `option` (nothing is written before
// every such check has passed), unless --force.
void refuse_existing(const std::string& path, const char* option, bool force);

// A float32 (B, C, H, W) .npy of preprocessed pixels for this model (B >= 1), or Error naming
// the file, the shape found and the shape expected.
Array load_model_input(const std::string& path, const ModelInfo& mi);

// True when `arg` names a model (a .safetensors or .onnx file, or a directory holding one) rather
// than an image or a folder of images.
bool looks_like_model(const std::string& arg);

}  // namespace shiftadd::cli
