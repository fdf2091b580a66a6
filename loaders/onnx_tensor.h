#pragma once
// ONNX TensorProto decoding (initializers, Constant nodes, external data) into small host
// values: float or int64 with their shape. Part of the ONNX loader (onnx_graph.h, onnx_vit.h).
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

// CMake's onnx_proto target defines these; direct compiler invocations may not.
#ifndef ONNX_ML
#define ONNX_ML 1
#endif
#ifndef ONNX_NAMESPACE
#define ONNX_NAMESPACE onnx
#endif
#include <onnx/onnx_pb.h>

namespace shiftadd {

// A constant tensor decoded to float (FLOAT, FLOAT16, BFLOAT16, DOUBLE) or int64 (INT64,
// INT32, BOOL) values. `name` is the ONNX value it came from, for error messages.
struct OnnxConst {
  std::string name;
  Shape dims;
  bool is_float = false;
  std::vector<float> f;
  std::vector<int64_t> i;

  int64_t numel() const { return static_cast<int64_t>(is_float ? f.size() : i.size()); }
  double at(int64_t k) const { return is_float ? f[k] : static_cast<double>(i[k]); }
  double scalar() const { return at(0); }
  // The values as integers; a float value that is not a whole number in int64 range (NaN,
  // 1e30, 2.5) throws Error naming the tensor.
  std::vector<int64_t> ints() const;
};

// Decodes `t` (raw_data, the typed repeated fields, or external data beside `file`). Throws
// Error naming `file` and the tensor for bad shapes, sizes, data types and external data.
OnnxConst decode_onnx_tensor(const onnx::TensorProto& t, const std::string& file);

}  // namespace shiftadd
