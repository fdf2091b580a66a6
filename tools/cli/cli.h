#pragma once
// The `shiftadd` command line: one file per subcommand, each a thin client of the public API.
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace shiftadd::cli {

// Options every subcommand that runs a model shares.
struct RunOptions {
  int threads = 0;
  std::string mode = "exact";  // shift-layer arithmetic: exact | fast
};
void add_threads_option(CLI::App& app, RunOptions& o);

void register_classify(CLI::App& app);
void register_run(CLI::App& app);
void register_bench(CLI::App& app);
void register_inspect(CLI::App& app);

// True when `arg` names a model (a directory, .safetensors or .onnx file) rather than an image.
bool looks_like_model(const std::string& arg);

}  // namespace shiftadd::cli
