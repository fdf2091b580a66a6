// libFuzzer harness of one parser (SHIFTADD_FUZZ_TARGET, set per executable by CMake): writes
// each input to a file and hands it to the parser as a user would (tests/fuzz/fuzz_targets.h).
// A shiftadd::Error is the expected answer to bad bytes; crashes, sanitizer reports, other
// exceptions, leaks, timeouts and memory over -rss_limit_mb are findings.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include "shiftadd/error.h"
#include "tests/fuzz/fuzz_targets.h"

namespace {

const shiftadd::fuzz::Target& this_target() {
  static const shiftadd::fuzz::Target& t = shiftadd::fuzz::target(SHIFTADD_FUZZ_TARGET);
  return t;
}

// One scratch directory per process (several fuzzers may run side by side).
const std::string& input_path() {
  static const std::string path = [] {
    const std::filesystem::path dir =
        std::filesystem::temp_directory_path() / ("shiftadd_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    return (dir / "input").string() + this_target().extension;
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = input_path();
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    this_target().run(path);
  } catch (const shiftadd::Error&) {
  }
  return 0;
}
