#pragma once
// Helpers shared by the test files: running the `shiftadd` command and comparing outputs.
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace shiftadd::test {

struct CliResult {
  int code = -1;
  std::string out;  // stdout and stderr together
};

// Runs a shell command line; stderr is merged into `out`.
inline CliResult run_shell(const std::string& cmd) {
  CliResult r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// `shiftadd ARGS` (the CLI built with the tests).
inline CliResult run_cli(const std::string& args) { return run_shell(std::string(SHIFTADD_CLI) + " " + args); }

// max |a - b| / max |b|: the relative error used for every golden comparison.
inline double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < b.size() && i < a.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    ref = std::max(ref, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(ref, 1e-12);
}

}  // namespace shiftadd::test
