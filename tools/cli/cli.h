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

// True when `arg` names a model (a directory, .safetensors or .onnx file) rather than an image.
bool looks_like_model(const std::string& arg);

}  // namespace shiftadd::cli
