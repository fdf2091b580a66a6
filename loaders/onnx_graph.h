#pragma once
// A read-only view of an ONNX graph for the recognizer (onnx_vit.cpp): producers and consumers
// of each value, node descriptions for errors, and constant folding. Folding evaluates, in one
// forward pass over the (topologically sorted) nodes, every value that depends only on
// constants and on the shapes of activations as far as they are known from the graph input
// (batch usually unknown): the shape arithmetic exporters write for reshapes, attention scales
// (Shape -> Gather -> Div -> Cast -> Pow(-0.5)), token expansion and GELU constants all become
// constants, so the recognizer sees the math, not the exporter's way of writing it.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "loaders/onnx_tensor.h"

namespace shiftadd {

const onnx::AttributeProto* onnx_attr(const onnx::NodeProto& n, const std::string& name);
int64_t onnx_attr_int(const onnx::NodeProto& n, const std::string& name, int64_t fallback);
float onnx_attr_float(const onnx::NodeProto& n, const std::string& name, float fallback);
std::optional<std::vector<int64_t>> onnx_attr_ints(const onnx::NodeProto& n, const std::string& name);

// An int64 vector (or scalar) some of whose entries are known: Shape of a [batch, N, C]
// activation is {unknown, N, C}. Also an activation's shape as far as it is known.
struct PartialInts {
  std::vector<std::optional<int64_t>> v;
  bool scalar = false;  // a 0-D value (one entry)
  bool known() const;
};

class OnnxGraph {
 public:
  // Indexes `model`'s graph and folds its constants. Throws Error naming `file` and the node for
  // graphs that are not topologically sorted, values produced twice, inputs that are no graph
  // input, initializer or earlier output, and Constant nodes or constants it cannot decode.
  OnnxGraph(const onnx::ModelProto& model, std::string file, int opset);

  const std::string& file() const { return file_; }
  int opset() const { return opset_; }
  int size() const { return g_.node_size(); }
  const onnx::NodeProto& node(int i) const { return g_.node(i); }
  const onnx::GraphProto& proto() const { return g_; }
  const std::string& op(int i) const { return g_.node(i).op_type(); }
  bool is_initializer(const std::string& t) const { return initializers_.count(t) != 0; }

  // The node that produces t, or -1 (graph input, initializer, or no such value).
  int producer(const std::string& t) const;
  // Nodes that read t's values (Shape nodes only read its shape), each node once.
  std::vector<int> consumers(const std::string& t) const;

  std::string describe(int i) const;  // "node 'name' (Op)"
  [[noreturn]] void fail(int i, const std::string& what) const;
  [[noreturn]] void fail(const std::string& what) const;

  // t's value when it is known before any input is given: an initializer, a Constant, or a
  // folded computation on those and on known shapes. Null otherwise.
  const OnnxConst* constant(const std::string& t) const;
  // True when t depends only on constants and shapes, never on activation values (a Reshape
  // target or a batch size, known or not).
  bool shape_only(const std::string& t) const;
  // t's shape as far as it is known (unknown rank: null). Open graph-input dims (the batch) are
  // symbols: negative values below any real entry, equal for the same dimension.
  const PartialInts* shape(const std::string& t) const;
  // True when every output of node i is a folded constant (the node computes nothing at run time).
  bool folded(int i) const;

  // A constant input that must be there (weights); names the node and input otherwise.
  const OnnxConst& require_const(int node, int input, const std::string& what) const;

 private:
  struct Value {
    std::shared_ptr<const OnnxConst> constant;
    std::optional<PartialInts> ints;
    std::optional<PartialInts> shape;  // activation shape with unknown dims; nullopt: unknown rank
    bool shape_only = false;
  };
  const Value* value(const std::string& t) const;
  void fold(int i);
  std::shared_ptr<const OnnxConst> evaluate(int i, const std::vector<const Value*>& in);
  std::optional<PartialInts> partial(int i, const std::vector<const Value*>& in) const;
  std::vector<std::optional<PartialInts>> infer_shapes(int i, const std::vector<const Value*>& in) const;
  bool affordable(int64_t elements);

  const onnx::GraphProto& g_;
  std::string file_;
  int opset_;
  std::unordered_map<std::string, const onnx::TensorProto*> initializers_;
  std::unordered_map<std::string, int> producer_;
  std::unordered_map<std::string, std::vector<int>> consumers_;
  std::unordered_map<std::string, Value> values_;
  int64_t fold_budget_ = 0;  // elements folding may still create (bounds its memory)
};

}  // namespace shiftadd
