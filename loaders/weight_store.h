#pragma once
// A named set of tensors read from one model file, plus the file's string metadata.
#include <map>
#include <string>

#include "core/tensor.h"

namespace shiftadd {

struct WeightStore {
  std::string source;                            // the file it came from (for error messages)
  std::map<std::string, Tensor> tensors;         // as stored: F32 borrowed from the mmap, etc.
  std::map<std::string, std::string> metadata;   // safetensors "__metadata__"

  bool has(const std::string& name) const { return tensors.count(name) != 0; }
  // Throws Error("<source>: missing tensor '<name>'") when absent.
  const Tensor& at(const std::string& name) const;
};

}  // namespace shiftadd
