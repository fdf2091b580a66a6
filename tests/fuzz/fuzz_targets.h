#pragma once
// The parsers under fuzzing, one entry point per parser: each reads the file at `path` as a user
// would hand it to shiftadd. Shared by the libFuzzer harnesses (fuzz_main.cpp) and the
// regression test that replays every finding (tests/test_fuzz_findings.cpp). Returning normally
// or throwing shiftadd::Error are the allowed outcomes; anything else is a finding.
#include <string>
#include <vector>

namespace shiftadd::fuzz {

struct Target {
  const char* name;       // "safetensors", ...; also the folder of its findings
  const char* extension;  // the input file's name ends so (the loaders dispatch on it)
  void (*run)(const std::string& path);
};

// safetensors, onnx, npy, image, idx, meta (a safetensors file loaded as a model: shiftadd
// metadata, config inference, the model builders).
const std::vector<Target>& targets();
const Target& target(const std::string& name);

}  // namespace shiftadd::fuzz
