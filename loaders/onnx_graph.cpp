#include "loaders/onnx_graph.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "shiftadd/error.h"

namespace shiftadd {

const onnx::AttributeProto* onnx_attr(const onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute())
    if (a.name() == name) return &a;
  return nullptr;
}
int64_t onnx_attr_int(const onnx::NodeProto& n, const std::string& name, int64_t fallback) {
  const auto* a = onnx_attr(n, name);
  return a ? a->i() : fallback;
}
float onnx_attr_float(const onnx::NodeProto& n, const std::string& name, float fallback) {
  const auto* a = onnx_attr(n, name);
  return a ? a->f() : fallback;
}
std::optional<std::vector<int64_t>> onnx_attr_ints(const onnx::NodeProto& n, const std::string& name) {
  const auto* a = onnx_attr(n, name);
  if (!a) return std::nullopt;
  return std::vector<int64_t>(a->ints().begin(), a->ints().end());
}

namespace {

// A dimension the graph input leaves open (the batch, "N" or unnamed) is a symbol: the same
// name is the same value, so [B, 16, 2, 2] reshaped to [B, 16, -1] is [B, 16, 4] although B is
// unknown. Symbols are int64 values far below any real or special (-1, 0) entry.
constexpr int64_t kSymbolLimit = INT64_MIN + (int64_t{1} << 20);
bool is_symbol(const std::optional<int64_t>& d) { return d && *d <= kSymbolLimit; }
bool is_known(const std::optional<int64_t>& d) { return d && *d > kSymbolLimit; }

}  // namespace

bool PartialInts::known() const { return std::all_of(v.begin(), v.end(), is_known); }

namespace {

// Folded values are shape arithmetic and the odd transposed weight; a larger result is left to
// run time (and the recognizer), so a crafted graph cannot make folding allocate without bound.
constexpr int64_t kMaxFoldElements = int64_t{1} << 26;

using Dims = std::vector<std::optional<int64_t>>;

std::optional<int64_t> checked_numel(const Shape& dims) {
  int64_t n = 1;
  for (int64_t d : dims)
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return std::nullopt;
  return n;
}

std::optional<Shape> known_dims(const Dims& d) {
  Shape out;
  for (const auto& e : d) {
    if (!is_known(e) || *e < 0) return std::nullopt;
    out.push_back(*e);
  }
  return out;
}

// numpy broadcasting of shapes whose entries may be unknown; nullopt when they cannot broadcast.
std::optional<Dims> broadcast(const Dims& a, const Dims& b) {
  Dims out(std::max(a.size(), b.size()));
  for (size_t k = 0; k < out.size(); ++k) {
    auto pick = [&](const Dims& s) -> std::optional<int64_t> {
      const size_t off = out.size() - s.size();
      return k < off ? std::optional<int64_t>(1) : s[k - off];
    };
    const auto x = pick(a), y = pick(b);
    if (x && y && *x == *y) {
      out[k] = x;
    } else if (is_known(x) && is_known(y)) {
      if (*x != 1 && *y != 1) return std::nullopt;
      out[k] = *x == 1 ? y : x;
    } else if (is_known(x) || is_known(y)) {  // the other side must be 1 or the same
      const auto known = is_known(x) ? x : y;
      out[k] = *known == 1 ? (is_known(x) ? y : x) : known;
    }
  }
  return out;
}

Dims dims_of(const Shape& s) { return Dims(s.begin(), s.end()); }

int64_t wrap_axis(int64_t axis, int64_t rank) { return axis < 0 ? axis + rank : axis; }

// Row-major strides of `dims` broadcast into `out` (0 along broadcast axes).
std::vector<int64_t> broadcast_strides(const Shape& dims, const Shape& out) {
  std::vector<int64_t> st(out.size(), 0);
  int64_t acc = 1;
  for (size_t k = dims.size(); k-- > 0;) {
    const size_t o = out.size() - dims.size() + k;
    st[o] = dims[k] == 1 ? 0 : acc;
    acc *= dims[k];
  }
  return st;
}

// Calls f(out_index, offsets...) for every element of `out`, with each input's offset under
// broadcasting.
template <typename F>
void for_each_broadcast(const Shape& out, const std::vector<const Shape*>& ins, F&& f) {
  std::vector<std::vector<int64_t>> strides;
  for (const Shape* s : ins) strides.push_back(broadcast_strides(*s, out));
  const int64_t n = shape_numel(out);
  std::vector<int64_t> idx(out.size(), 0), off(ins.size(), 0);
  for (int64_t e = 0; e < n; ++e) {
    f(e, off);
    for (size_t k = out.size(); k-- > 0;) {
      ++idx[k];
      for (size_t j = 0; j < ins.size(); ++j) off[j] += strides[j][k];
      if (idx[k] < out[k]) break;
      for (size_t j = 0; j < ins.size(); ++j) off[j] -= strides[j][k] * idx[k];
      idx[k] = 0;
    }
  }
}

bool is_float_type(int64_t t) {
  return t == onnx::TensorProto::FLOAT || t == onnx::TensorProto::FLOAT16 ||
         t == onnx::TensorProto::BFLOAT16 || t == onnx::TensorProto::DOUBLE;
}

// ONNX Slice along one axis of `size`: the first index and the element count.
std::pair<int64_t, int64_t> slice_range(int64_t size, int64_t start, int64_t end, int64_t step) {
  if (start < 0) start += size;  // size >= 0: cannot overflow
  if (end < 0) end += size;
  if (step > 0) {
    start = std::clamp<int64_t>(start, 0, size);
    end = std::clamp<int64_t>(end, 0, size);
    return {start, end > start ? (end - start - 1) / step + 1 : 0};
  }
  start = std::clamp<int64_t>(start, 0, size - 1);
  end = std::clamp<int64_t>(end, -1, size - 1);
  return {start, start > end ? (start - end - 1) / -step + 1 : 0};
}

}  // namespace

OnnxGraph::OnnxGraph(const onnx::ModelProto& model, std::string file, int opset)
    : g_(model.graph()), file_(std::move(file)), opset_(opset) {
  for (const auto& init : g_.initializer()) initializers_[init.name()] = &init;
  for (int i = 0; i < g_.node_size(); ++i) {
    for (const auto& out : g_.node(i).output())
      if (!out.empty() && !producer_.emplace(out, i).second)
        fail(i, "output '" + out + "' is also produced by " + describe(producer_[out]));
    for (const auto& in : g_.node(i).input())
      if (!in.empty()) {
        auto& readers = consumers_[in];
        if (readers.empty() || readers.back() != i) readers.push_back(i);
      }
  }
  std::unordered_map<std::string, bool> graph_inputs;
  for (const auto& in : g_.input()) graph_inputs[in.name()] = true;
  // ONNX requires topological order; checking it here makes every backward walk terminate.
  for (int i = 0; i < g_.node_size(); ++i)
    for (const auto& in : g_.node(i).input()) {
      if (in.empty()) continue;
      const int p = producer(in);
      if (p >= i) fail(i, "reads '" + in + "' before it is produced (graph not topologically sorted)");
      if (p < 0 && !initializers_.count(in) && !graph_inputs.count(in))
        fail(i, "input '" + in + "' is not a graph input, initializer or earlier output");
    }

  fold_budget_ = kMaxFoldElements;
  for (const auto& init : g_.initializer()) {
    auto c = std::make_shared<OnnxConst>(decode_onnx_tensor(init, file_));
    fold_budget_ += c->numel();  // folding may transpose or cast every weight once
    values_[init.name()].constant = std::move(c);
  }
  std::unordered_map<std::string, int64_t> symbols;
  for (const auto& in : g_.input()) {
    if (initializers_.count(in.name())) continue;
    Value& v = values_[in.name()];
    if (!in.type().has_tensor_type() || !in.type().tensor_type().has_shape()) continue;
    PartialInts s;
    for (const auto& d : in.type().tensor_type().shape().dim()) {
      if (d.has_dim_value() && d.dim_value() > 0) {
        s.v.push_back(d.dim_value());
        continue;
      }
      // The same dim_param names the same size; an unnamed dimension is its own symbol.
      const std::string key = d.has_dim_param() ? d.dim_param() : "#" + std::to_string(symbols.size());
      auto [it, added] = symbols.emplace(key, kSymbolLimit - static_cast<int64_t>(symbols.size()));
      s.v.push_back(it->second);
    }
    v.shape = std::move(s);
  }
  for (int i = 0; i < g_.node_size(); ++i) fold(i);
}

int OnnxGraph::producer(const std::string& t) const {
  auto it = producer_.find(t);
  return it == producer_.end() ? -1 : it->second;
}

std::vector<int> OnnxGraph::consumers(const std::string& t) const {
  std::vector<int> out;
  auto it = consumers_.find(t);
  if (it == consumers_.end()) return out;
  for (int c : it->second)
    if (op(c) != "Shape") out.push_back(c);
  return out;
}

std::string OnnxGraph::describe(int i) const {
  const auto& n = g_.node(i);
  std::string name = n.name().empty() ? "#" + std::to_string(i) : n.name();
  return "node '" + name + "' (" + n.op_type() + ")";
}
void OnnxGraph::fail(int i, const std::string& what) const { throw Error(file_ + ": " + describe(i) + ": " + what); }
void OnnxGraph::fail(const std::string& what) const { throw Error(file_ + ": " + what); }

const OnnxGraph::Value* OnnxGraph::value(const std::string& t) const {
  auto it = values_.find(t);
  return it == values_.end() ? nullptr : &it->second;
}

const OnnxConst* OnnxGraph::constant(const std::string& t) const {
  const Value* v = value(t);
  return v && v->constant ? v->constant.get() : nullptr;
}

bool OnnxGraph::shape_only(const std::string& t) const {
  const Value* v = value(t);
  return v && (v->constant || v->shape_only);
}

const PartialInts* OnnxGraph::shape(const std::string& t) const {
  const Value* v = value(t);
  return v && v->shape ? &*v->shape : nullptr;
}

bool OnnxGraph::folded(int i) const {
  for (const auto& out : node(i).output())
    if (!out.empty() && !constant(out)) return false;
  return true;
}

const OnnxConst& OnnxGraph::require_const(int node_index, int input, const std::string& what) const {
  const auto& n = node(node_index);
  if (input >= n.input_size() || n.input(input).empty()) fail(node_index, "missing " + what);
  const OnnxConst* c = constant(n.input(input));
  if (!c) fail(node_index, what + " '" + n.input(input) + "' is computed, expected a constant");
  return *c;
}

bool OnnxGraph::affordable(int64_t elements) {
  if (elements < 0 || elements > fold_budget_) return false;
  fold_budget_ -= elements;
  return true;
}

// --- folding ------------------------------------------------------------------------------------

void OnnxGraph::fold(int i) {
  const auto& n = node(i);
  std::vector<const Value*> in;
  bool all_constant = true, all_shape_only = true;
  for (const auto& name : n.input()) {
    const Value* v = name.empty() ? nullptr : value(name);
    in.push_back(v);
    if (name.empty()) continue;
    all_constant = all_constant && v && v->constant;
    all_shape_only = all_shape_only && v && (v->constant || v->shape_only);
  }
  if (n.output_size() == 0 || n.output(0).empty()) return;
  std::shared_ptr<const OnnxConst> result;
  std::optional<PartialInts> ints;
  std::vector<std::optional<PartialInts>> shapes;
  try {
    if (all_constant) result = evaluate(i, in);
    if (!result) ints = partial(i, in);
    if (ints && ints->known()) {
      OnnxConst c;
      c.name = n.output(0);
      if (!ints->scalar) c.dims = {static_cast<int64_t>(ints->v.size())};
      for (const auto& e : ints->v) c.i.push_back(*e);
      result = std::make_shared<OnnxConst>(std::move(c));
    }
    if (!result) shapes = infer_shapes(i, in);
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.rfind(file_, 0) == 0) throw;  // already names the file (a bad Constant tensor)
    fail(i, what);
  }
  Value& out = values_[n.output(0)];
  out.constant = result;
  out.ints = std::move(ints);
  out.shape_only = n.op_type() == "Shape" || all_shape_only;
  for (int k = 0; k < n.output_size() && k < static_cast<int>(shapes.size()); ++k)
    if (!n.output(k).empty()) values_[n.output(k)].shape = std::move(shapes[k]);
}

// A node all of whose inputs are constants: its value, or null when the op is not one that
// folding evaluates (or the result is too large).
std::shared_ptr<const OnnxConst> OnnxGraph::evaluate(int i, const std::vector<const Value*>& in) {
  const auto& n = node(i);
  const std::string& op = n.op_type();
  auto arg = [&](int k) -> const OnnxConst* {
    return k < static_cast<int>(in.size()) && in[k] ? in[k]->constant.get() : nullptr;
  };
  OnnxConst out;
  out.name = n.output(0);
  auto done = [&]() -> std::shared_ptr<const OnnxConst> {
    return std::make_shared<OnnxConst>(std::move(out));
  };
  auto reserve = [&](const Shape& dims, bool is_float) {
    const auto numel = checked_numel(dims);
    if (!numel || !affordable(*numel)) return false;
    out.dims = dims;
    out.is_float = is_float;
    (is_float ? out.f.resize(*numel) : out.i.resize(*numel));
    return true;
  };
  // Copies element `from` of `a` to element `to` of out (same type).
  auto copy_elem = [&](const OnnxConst& a, int64_t from, int64_t to) {
    if (out.is_float) out.f[to] = a.f[from];
    else out.i[to] = a.i[from];
  };

  if (op == "Constant") {
    if (n.attribute_size() != 1) fail(i, "expected exactly one value attribute");
    const auto& a = n.attribute(0);
    if (a.name() == "value") {
      out = decode_onnx_tensor(a.t(), file_);
    } else if (a.name() == "value_float") {
      out.is_float = true;
      out.f = {a.f()};
    } else if (a.name() == "value_floats") {
      out.is_float = true;
      out.f.assign(a.floats().begin(), a.floats().end());
      out.dims = {static_cast<int64_t>(out.f.size())};
    } else if (a.name() == "value_int") {
      out.i = {a.i()};
    } else if (a.name() == "value_ints") {
      out.i.assign(a.ints().begin(), a.ints().end());
      out.dims = {static_cast<int64_t>(out.i.size())};
    } else {
      fail(i, "constant attribute '" + a.name() + "' is not supported");
    }
    out.name = n.output(0);
    return done();
  }
  const OnnxConst* a = arg(0);
  if (!a && op != "Range") return nullptr;
  if (op == "Identity") return in[0]->constant;
  if (op == "Cast") {
    const bool to_float = is_float_type(onnx_attr_int(n, "to", 0));
    const bool to_bool = onnx_attr_int(n, "to", 0) == onnx::TensorProto::BOOL;
    if (to_float == a->is_float && !to_bool) return in[0]->constant;
    if (!reserve(a->dims, to_float)) return nullptr;
    for (int64_t k = 0; k < a->numel(); ++k) {
      if (to_float) out.f[k] = static_cast<float>(a->i[k]);
      else if (to_bool) out.i[k] = a->at(k) != 0;
      else out.i[k] = 0;
    }
    if (!to_float && !to_bool && a->is_float) {
      std::vector<int64_t> v = a->ints();  // throws for NaN, 1e30, ...: no integer value
      out.i = std::move(v);
    }
    return done();
  }
  if (op == "Transpose") {
    const int64_t rank = static_cast<int64_t>(a->dims.size());
    std::vector<int64_t> perm = onnx_attr_ints(n, "perm").value_or(std::vector<int64_t>{});
    if (perm.empty())
      for (int64_t k = rank; k-- > 0;) perm.push_back(k);
    std::vector<int64_t> sorted = perm;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> iota(rank);
    std::iota(iota.begin(), iota.end(), 0);
    if (sorted != iota) return nullptr;
    Shape dims;
    for (int64_t p : perm) dims.push_back(a->dims[p]);
    if (!reserve(dims, a->is_float)) return nullptr;
    // Output element -> input offset through the permuted strides.
    std::vector<int64_t> in_strides(rank, 1);
    for (int64_t k = rank - 1; k-- > 0;) in_strides[k] = in_strides[k + 1] * a->dims[k + 1];
    std::vector<int64_t> st;
    for (int64_t p : perm) st.push_back(in_strides[p]);
    int64_t e = 0;
    std::vector<int64_t> idx(rank, 0);
    int64_t off = 0;
    const int64_t total = out.numel();
    for (; e < total; ++e) {
      copy_elem(*a, off, e);
      for (int64_t k = rank; k-- > 0;) {
        ++idx[k];
        off += st[k];
        if (idx[k] < dims[k]) break;
        off -= st[k] * idx[k];
        idx[k] = 0;
      }
    }
    return done();
  }
  if (op == "Reshape" || op == "Unsqueeze" || op == "Squeeze" || op == "Flatten" || op == "Expand") {
    // Every output shape comes from the shape inference below; the values are a's (broadcast
    // for Expand).
    std::vector<const Value*> shape_in = in;
    Value self;
    self.shape = PartialInts{dims_of(a->dims), false};
    shape_in[0] = &self;
    auto shapes = infer_shapes(i, shape_in);
    if (shapes.empty() || !shapes[0]) return nullptr;
    auto dims = known_dims(shapes[0]->v);
    if (!dims || !reserve(*dims, a->is_float)) return nullptr;
    if (op != "Expand") {
      if (out.numel() != a->numel()) return nullptr;
      out.f = a->f;
      out.i = a->i;
      return done();
    }
    for_each_broadcast(*dims, {&a->dims}, [&](int64_t e, const std::vector<int64_t>& off) { copy_elem(*a, off[0], e); });
    return done();
  }
  if (op == "Gather") {
    const OnnxConst* idx = arg(1);
    const int64_t rank = static_cast<int64_t>(a->dims.size());
    const int64_t axis = wrap_axis(onnx_attr_int(n, "axis", 0), rank);
    if (!idx || axis < 0 || axis >= rank) return nullptr;
    const std::vector<int64_t> indices = idx->ints();
    Shape dims(a->dims.begin(), a->dims.begin() + axis);
    dims.insert(dims.end(), idx->dims.begin(), idx->dims.end());
    dims.insert(dims.end(), a->dims.begin() + axis + 1, a->dims.end());
    if (!reserve(dims, a->is_float)) return nullptr;
    const int64_t outer = shape_numel(Shape(a->dims.begin(), a->dims.begin() + axis));
    const int64_t inner = shape_numel(Shape(a->dims.begin() + axis + 1, a->dims.end()));
    const int64_t size = a->dims[axis];
    int64_t e = 0;
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j : indices) {
        if (j < 0) j += size;
        if (j < 0 || j >= size) return nullptr;
        for (int64_t r = 0; r < inner; ++r) copy_elem(*a, (o * size + j) * inner + r, e++);
      }
    return done();
  }
  if (op == "Slice") {
    const OnnxConst *st = arg(1), *en = arg(2);
    if (!st || !en) return nullptr;
    const int64_t rank = static_cast<int64_t>(a->dims.size());
    std::vector<int64_t> starts = st->ints(), ends = en->ints(), axes, steps;
    if (arg(3)) axes = arg(3)->ints();
    else for (size_t k = 0; k < starts.size(); ++k) axes.push_back(static_cast<int64_t>(k));
    if (arg(4)) steps = arg(4)->ints();
    else steps.assign(starts.size(), 1);
    if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
      return nullptr;
    Shape dims = a->dims;
    std::vector<int64_t> first(rank, 0), step(rank, 1);
    for (size_t k = 0; k < starts.size(); ++k) {
      const int64_t ax = wrap_axis(axes[k], rank);
      if (ax < 0 || ax >= rank || steps[k] == 0) return nullptr;
      const auto [b, count] = slice_range(a->dims[ax], starts[k], ends[k], steps[k]);
      dims[ax] = count;
      first[ax] = b;
      step[ax] = steps[k];
    }
    if (!reserve(dims, a->is_float)) return nullptr;
    std::vector<int64_t> in_strides(rank, 1);
    for (int64_t k = rank - 1; k-- > 0;) in_strides[k] = in_strides[k + 1] * a->dims[k + 1];
    std::vector<int64_t> idx(rank, 0);
    for (int64_t e = 0; e < out.numel(); ++e) {
      int64_t off = 0;
      for (int64_t k = 0; k < rank; ++k) off += (first[k] + idx[k] * step[k]) * in_strides[k];
      copy_elem(*a, off, e);
      for (int64_t k = rank; k-- > 0;) {
        if (++idx[k] < dims[k]) break;
        idx[k] = 0;
      }
    }
    return done();
  }
  if (op == "Concat") {
    const int64_t rank = static_cast<int64_t>(a->dims.size());
    const int64_t axis = wrap_axis(onnx_attr_int(n, "axis", 0), rank);
    if (axis < 0 || axis >= rank) return nullptr;
    Shape dims = a->dims;
    dims[axis] = 0;
    for (size_t k = 0; k < in.size(); ++k) {
      const OnnxConst* c = arg(static_cast<int>(k));
      if (!c || c->dims.size() != a->dims.size() || c->is_float != a->is_float) return nullptr;
      for (int64_t d = 0; d < rank; ++d)
        if (d != axis && c->dims[d] != a->dims[d]) return nullptr;
      dims[axis] += c->dims[axis];
    }
    if (!reserve(dims, a->is_float)) return nullptr;
    const int64_t outer = shape_numel(Shape(dims.begin(), dims.begin() + axis));
    const int64_t inner = shape_numel(Shape(dims.begin() + axis + 1, dims.end()));
    int64_t e = 0;
    for (int64_t o = 0; o < outer; ++o)
      for (size_t k = 0; k < in.size(); ++k) {
        const OnnxConst* c = arg(static_cast<int>(k));
        const int64_t block = c->dims[axis] * inner;
        for (int64_t r = 0; r < block; ++r) copy_elem(*c, o * block + r, e++);
      }
    return done();
  }
  if (op == "ConstantOfShape") {
    const std::vector<int64_t> shape = a->ints();
    OnnxConst fill;
    fill.is_float = true;
    fill.f = {0.0f};
    if (const auto* v = onnx_attr(n, "value")) fill = decode_onnx_tensor(v->t(), file_);
    if (fill.numel() != 1) return nullptr;
    for (int64_t d : shape)
      if (d < 0) return nullptr;
    if (!reserve(shape, fill.is_float)) return nullptr;
    for (int64_t e = 0; e < out.numel(); ++e) copy_elem(fill, 0, e);
    return done();
  }
  if (op == "Range") {
    const OnnxConst *s = arg(0), *l = arg(1), *d = arg(2);
    if (!s || !l || !d || s->numel() != 1 || l->numel() != 1 || d->numel() != 1 || d->scalar() == 0 ||
        s->is_float != l->is_float || s->is_float != d->is_float)
      return nullptr;
    const double count = std::ceil((l->scalar() - s->scalar()) / d->scalar());
    if (!(count < static_cast<double>(kMaxFoldElements))) return nullptr;
    if (!reserve({std::max<int64_t>(static_cast<int64_t>(count), 0)}, s->is_float)) return nullptr;
    for (int64_t e = 0; e < out.numel(); ++e) {
      int64_t step = 0;
      if (out.is_float) out.f[e] = static_cast<float>(s->scalar() + e * d->scalar());
      else if (__builtin_mul_overflow(e, d->i[0], &step) || __builtin_add_overflow(s->i[0], step, &out.i[e]))
        return nullptr;
    }
    return done();
  }
  static const std::vector<std::string> unary = {"Sqrt", "Reciprocal", "Neg", "Erf"};
  if (std::find(unary.begin(), unary.end(), op) != unary.end()) {
    if (!a->is_float && op != "Neg") return nullptr;
    if (!reserve(a->dims, a->is_float)) return nullptr;
    for (int64_t e = 0; e < out.numel(); ++e) {
      if (!a->is_float) {
        if (a->i[e] == INT64_MIN) return nullptr;
        out.i[e] = -a->i[e];
        continue;
      }
      const float x = a->f[e];
      out.f[e] = op == "Sqrt" ? std::sqrt(x) : op == "Reciprocal" ? 1.0f / x : op == "Neg" ? -x : std::erf(x);
    }
    return done();
  }
  static const std::vector<std::string> binary = {"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Where"};
  if (std::find(binary.begin(), binary.end(), op) != binary.end()) {
    const bool where = op == "Where";
    const OnnxConst* x = where ? arg(1) : arg(0);
    const OnnxConst* y = where ? arg(2) : arg(1);
    if (!x || !y) return nullptr;
    std::optional<Dims> shape = broadcast(dims_of(x->dims), dims_of(y->dims));
    if (shape && where) shape = broadcast(*shape, dims_of(a->dims));
    if (!shape) fail(i, "operand shapes " + shape_str(x->dims) + " and " + shape_str(y->dims) + " do not broadcast");
    const Shape dims = *known_dims(*shape);
    if (op != "Pow" && !where && x->is_float != y->is_float) return nullptr;
    if (where && x->is_float != y->is_float) return nullptr;
    const bool result_float = op == "Equal" ? false : x->is_float;
    if (!reserve(dims, result_float)) return nullptr;
    bool ok = true;
    std::vector<const Shape*> shapes = {&x->dims, &y->dims};
    if (where) shapes.push_back(&a->dims);
    for_each_broadcast(dims, shapes, [&](int64_t e, const std::vector<int64_t>& off) {
      if (where) {
        const OnnxConst& pick = a->at(off[2]) != 0 ? *x : *y;
        copy_elem(pick, off[&pick == x ? 0 : 1], e);
        return;
      }
      if (op == "Equal") {
        out.i[e] = x->at(off[0]) == y->at(off[1]);
      } else if (result_float) {
        const float u = x->f[off[0]];
        const float v = y->is_float ? y->f[off[1]] : static_cast<float>(y->i[off[1]]);
        out.f[e] = op == "Add" ? u + v : op == "Sub" ? u - v : op == "Mul" ? u * v : op == "Div" ? u / v : std::pow(u, v);
      } else {
        const int64_t u = x->i[off[0]];
        int64_t r = 0;
        if (op == "Pow") {
          const double p = std::pow(static_cast<double>(u), y->at(off[1]));
          ok = ok && p == std::trunc(p) && std::fabs(p) < 9.2e18;
          r = ok ? static_cast<int64_t>(p) : 0;
        } else {
          const int64_t v = y->i[off[1]];
          if (op == "Add") ok = ok && !__builtin_add_overflow(u, v, &r);
          else if (op == "Sub") ok = ok && !__builtin_sub_overflow(u, v, &r);
          else if (op == "Mul") ok = ok && !__builtin_mul_overflow(u, v, &r);
          else if (v == 0 || (u == INT64_MIN && v == -1)) ok = false;
          else r = u / v;  // ONNX integer Div truncates, as C++
        }
        out.i[e] = r;
      }
    });
    if (!ok) return nullptr;
    return done();
  }
  return nullptr;
}

// Shape arithmetic on partially known int vectors (the batch is unknown, the rest known).
std::optional<PartialInts> OnnxGraph::partial(int i, const std::vector<const Value*>& in) const {
  const auto& n = node(i);
  const std::string& op = n.op_type();
  // An input as a partial int vector: a small int constant, or a partial value.
  auto ints_of = [&](int k) -> std::optional<PartialInts> {
    if (k >= static_cast<int>(in.size()) || !in[k]) return std::nullopt;
    const Value& v = *in[k];
    if (v.constant) {
      const OnnxConst& c = *v.constant;
      if (c.is_float || c.dims.size() > 1 || c.numel() > 64) return std::nullopt;
      PartialInts p;
      p.scalar = c.dims.empty();
      for (int64_t x : c.i) p.v.push_back(x);
      return p;
    }
    return v.ints;
  };
  auto const_ints = [&](int k) -> std::optional<std::vector<int64_t>> {
    if (k >= static_cast<int>(in.size()) || !in[k] || !in[k]->constant) return std::nullopt;
    return in[k]->constant->ints();
  };
  if (op == "Shape") {
    std::optional<PartialInts> shape;
    const Value* src = in.empty() ? nullptr : in[0];  // a Shape node may come with no input
    if (src && src->constant) shape = PartialInts{dims_of(src->constant->dims), false};
    else if (src && src->ints) shape = PartialInts{src->ints->scalar ? Dims{} : Dims{static_cast<int64_t>(src->ints->v.size())}, false};
    else if (src) shape = src->shape;
    if (!shape) return std::nullopt;
    const int64_t rank = static_cast<int64_t>(shape->v.size());
    int64_t start = onnx_attr_int(n, "start", 0), end = onnx_attr_int(n, "end", rank);
    start = std::clamp<int64_t>(start < 0 ? start + rank : start, 0, rank);
    end = std::clamp<int64_t>(end < 0 ? end + rank : end, 0, rank);
    PartialInts out;
    for (int64_t k = start; k < end; ++k) out.v.push_back(shape->v[k]);
    return out;
  }
  if (op == "Cast" || op == "Identity") return ints_of(0);
  if (op == "Reshape") {  // a shape vector flattened: [-1] or its own length
    auto p = ints_of(0);
    auto target = const_ints(1);
    if (!p || !target || target->size() != 1 || ((*target)[0] != -1 && (*target)[0] != static_cast<int64_t>(p->v.size())))
      return std::nullopt;
    p->scalar = false;
    return p;
  }
  if (op == "ConstantOfShape") {  // of a known length
    auto shape = const_ints(0);
    const auto* fill = onnx_attr(n, "value");
    if (!shape || shape->size() != 1 || (*shape)[0] > 64) return std::nullopt;
    const OnnxConst value = fill ? decode_onnx_tensor(fill->t(), file_) : OnnxConst{};
    if (fill && (value.numel() != 1 || value.is_float)) return std::nullopt;
    return PartialInts{Dims(static_cast<size_t>(std::max<int64_t>((*shape)[0], 0)), fill ? value.i[0] : 0), false};
  }
  if (op == "Equal" || op == "Where") {  // elementwise on vectors of the same length
    const bool where = op == "Where";
    auto c = ints_of(0), x = ints_of(1), y = where ? ints_of(2) : std::nullopt;
    if (!c || !x || (where && !y) || c->v.size() != x->v.size() || (where && y->v.size() != c->v.size()))
      return std::nullopt;
    PartialInts out;
    for (size_t k = 0; k < c->v.size(); ++k) {
      const auto a = c->v[k], b = x->v[k];
      if (where) {
        out.v.push_back(is_known(a) ? (*a != 0 ? b : y->v[k]) : std::nullopt);
      } else if (is_known(a) && is_known(b)) {
        out.v.push_back(*a == *b);
      } else if ((is_symbol(a) && is_known(b) && *b < 0) || (is_symbol(b) && is_known(a) && *a < 0)) {
        out.v.push_back(0);  // a size is never negative (Expand's -1 test)
      } else {
        out.v.push_back(std::nullopt);
      }
    }
    return out;
  }
  if (op == "Unsqueeze") {
    auto p = ints_of(0);
    if (!p || p->v.size() != 1) return std::nullopt;
    p->scalar = false;
    return p;
  }
  if (op == "Squeeze") {
    auto p = ints_of(0);
    if (!p || p->v.size() != 1) return std::nullopt;
    p->scalar = true;
    return p;
  }
  if (op == "Concat") {
    PartialInts out;
    for (size_t k = 0; k < in.size(); ++k) {
      auto p = ints_of(static_cast<int>(k));
      if (!p || p->scalar) return std::nullopt;
      out.v.insert(out.v.end(), p->v.begin(), p->v.end());
    }
    return out;
  }
  if (op == "Gather") {
    auto p = ints_of(0);
    const OnnxConst* idx = in.size() > 1 && in[1] ? in[1]->constant.get() : nullptr;
    if (!p || p->scalar || !idx || idx->dims.size() > 1 || onnx_attr_int(n, "axis", 0) != 0) return std::nullopt;
    PartialInts out;
    out.scalar = idx->dims.empty();
    for (int64_t j : idx->ints()) {
      const int64_t size = static_cast<int64_t>(p->v.size());
      if (j < 0) j += size;
      if (j < 0 || j >= size) return std::nullopt;
      out.v.push_back(p->v[j]);
    }
    return out;
  }
  if (op == "Slice") {
    auto p = ints_of(0);
    auto st = const_ints(1), en = const_ints(2);
    if (!p || p->scalar || !st || !en || st->size() != 1 || en->size() != 1) return std::nullopt;
    if (auto ax = const_ints(3); n.input_size() > 3 && !n.input(3).empty() && (!ax || (*ax != std::vector<int64_t>{0} && *ax != std::vector<int64_t>{-1})))
      return std::nullopt;
    if (auto sp = const_ints(4); n.input_size() > 4 && !n.input(4).empty() && (!sp || *sp != std::vector<int64_t>{1}))
      return std::nullopt;
    const auto [b, count] = slice_range(static_cast<int64_t>(p->v.size()), (*st)[0], (*en)[0], 1);
    PartialInts out;
    for (int64_t k = b; k < b + count; ++k) out.v.push_back(p->v[k]);
    return out;
  }
  if (op == "Mul" || op == "Add" || op == "Sub") {
    auto x = ints_of(0), y = ints_of(1);
    if (!x || !y) return std::nullopt;
    if (x->v.size() != y->v.size() && x->v.size() != 1 && y->v.size() != 1) return std::nullopt;
    PartialInts out;
    out.scalar = x->scalar && y->scalar;
    const size_t len = std::max(x->v.size(), y->v.size());
    for (size_t k = 0; k < len; ++k) {
      const auto u = x->v[x->v.size() == 1 ? 0 : k], v = y->v[y->v.size() == 1 ? 0 : k];
      int64_t r = 0;
      bool ok = is_known(u) && is_known(v);
      if (ok && op == "Mul") ok = !__builtin_mul_overflow(*u, *v, &r);
      if (ok && op == "Add") ok = !__builtin_add_overflow(*u, *v, &r);
      if (ok && op == "Sub") ok = !__builtin_sub_overflow(*u, *v, &r);
      out.v.push_back(ok ? std::optional<int64_t>(r) : std::nullopt);
    }
    return out;
  }
  return std::nullopt;
}

// Output shapes of a node whose values are not known, as far as its input shapes tell.
std::vector<std::optional<PartialInts>> OnnxGraph::infer_shapes(int i, const std::vector<const Value*>& in) const {
  const auto& n = node(i);
  const std::string& op = n.op_type();
  auto shape = [&](int k) -> std::optional<Dims> {
    if (k >= static_cast<int>(in.size()) || !in[k]) return std::nullopt;
    if (in[k]->constant) return dims_of(in[k]->constant->dims);
    if (in[k]->shape) return in[k]->shape->v;
    return std::nullopt;
  };
  auto ints = [&](int k) -> std::optional<Dims> {  // a shape-like int input, partially known
    if (k >= static_cast<int>(in.size()) || !in[k]) return std::nullopt;
    if (in[k]->constant) {
      if (in[k]->constant->dims.size() > 1) return std::nullopt;
      std::vector<int64_t> v = in[k]->constant->ints();
      return Dims(v.begin(), v.end());
    }
    if (in[k]->ints) return in[k]->ints->v;
    return std::nullopt;
  };
  // The axes of Unsqueeze / Squeeze / ReduceMean / Split: an input from opset 13 (18 for
  // ReduceMean), an attribute before.
  auto axes_of = [&](int input, int since) -> std::optional<std::vector<int64_t>> {
    if (opset_ >= since) {
      if (n.input_size() <= input || n.input(input).empty()) return std::vector<int64_t>{};
      if (!in[input] || !in[input]->constant) return std::nullopt;
      return in[input]->constant->ints();
    }
    return onnx_attr_ints(n, "axes").value_or(std::vector<int64_t>{});
  };
  auto one = [](std::optional<Dims> d) {
    std::vector<std::optional<PartialInts>> out;
    if (d) out.push_back(PartialInts{std::move(*d), false});
    return out;
  };
  auto product = [](const Dims& d, size_t from, size_t to) -> std::optional<int64_t> {
    int64_t p = 1;
    for (size_t k = from; k < to; ++k)
      if (!is_known(d[k]) || __builtin_mul_overflow(p, *d[k], &p)) return std::nullopt;
    return p;
  };
  // The product of d's known entries and its symbols, sorted; nullopt if an entry is unknown.
  auto factors = [](const Dims& d) -> std::optional<std::pair<int64_t, std::vector<int64_t>>> {
    std::pair<int64_t, std::vector<int64_t>> f{1, {}};
    for (const auto& e : d) {
      if (is_symbol(e)) f.second.push_back(*e);
      else if (!e || *e < 0 || __builtin_mul_overflow(f.first, *e, &f.first)) return std::nullopt;
    }
    std::sort(f.second.begin(), f.second.end());
    return f;
  };

  static const std::vector<std::string> same = {"Sqrt", "Erf", "Gelu", "Cast", "Identity", "IsNaN", "Softmax",
                                                "Reciprocal", "Neg", "LayerNormalization"};
  if (std::find(same.begin(), same.end(), op) != same.end()) return one(shape(0));
  static const std::vector<std::string> elementwise = {"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Where"};
  if (std::find(elementwise.begin(), elementwise.end(), op) != elementwise.end()) {
    std::optional<Dims> out = shape(0);
    for (int k = 1; k < n.input_size() && out; ++k) {
      auto s = shape(k);
      out = s ? broadcast(*out, *s) : std::nullopt;
    }
    return one(out);
  }
  auto x = shape(0);
  if (!x) return {};
  const int64_t rank = static_cast<int64_t>(x->size());
  if (op == "Conv") {
    auto w = shape(1);
    if (!w || rank != 4 || w->size() != 4) return {};
    const auto strides = onnx_attr_ints(n, "strides").value_or(std::vector<int64_t>{1, 1});
    const auto pads = onnx_attr_ints(n, "pads").value_or(std::vector<int64_t>{0, 0, 0, 0});
    const auto dil = onnx_attr_ints(n, "dilations").value_or(std::vector<int64_t>{1, 1});
    if (strides.size() != 2 || pads.size() != 4 || dil.size() != 2) return {};
    Dims out = {(*x)[0], (*w)[0], std::nullopt, std::nullopt};
    for (int k = 0; k < 2; ++k) {
      const auto in_size = (*x)[2 + k], kernel = (*w)[2 + k];
      if (!is_known(in_size) || !is_known(kernel) || strides[k] <= 0 || *kernel <= 0 || *in_size > (int64_t{1} << 40) ||
          *kernel > (int64_t{1} << 20) || std::abs(pads[k]) > (1 << 20) || std::abs(pads[k + 2]) > (1 << 20) ||
          dil[k] <= 0 || dil[k] > (1 << 20))
        continue;
      const int64_t span = *in_size + pads[k] + pads[k + 2] - dil[k] * (*kernel - 1) - 1;
      if (span >= 0) out[2 + k] = span / strides[k] + 1;
    }
    return one(out);
  }
  if (op == "Reshape") {
    auto target = ints(1);
    if (!target) return {};
    Dims out = *target;
    int infer = -1;
    for (size_t k = 0; k < out.size(); ++k) {
      if (!out[k]) continue;
      if (*out[k] == 0 && onnx_attr_int(n, "allowzero", 0) == 0) out[k] = k < x->size() ? (*x)[k] : std::nullopt;
      else if (*out[k] == -1 && infer < 0) infer = static_cast<int>(k);
      else if (*out[k] < 0 && !is_symbol(out[k])) return {};
    }
    if (infer >= 0) {
      Dims rest = out;
      rest.erase(rest.begin() + infer);
      const auto total = factors(*x), part = factors(rest);
      const bool divides = total && part && total->second == part->second && part->first > 0 &&
                           total->first % part->first == 0;
      out[infer] = divides ? std::optional<int64_t>(total->first / part->first) : std::nullopt;
    }
    return one(out);
  }
  if (op == "Flatten") {
    const int64_t axis = wrap_axis(onnx_attr_int(n, "axis", 1), rank);
    if (axis < 0 || axis > rank) return {};
    return one(Dims{product(*x, 0, axis), product(*x, axis, rank)});
  }
  if (op == "Transpose") {
    std::vector<int64_t> perm = onnx_attr_ints(n, "perm").value_or(std::vector<int64_t>{});
    if (perm.empty())
      for (int64_t k = rank; k-- > 0;) perm.push_back(k);
    if (static_cast<int64_t>(perm.size()) != rank) return {};
    Dims out;
    for (int64_t p : perm) {
      if (p < 0 || p >= rank) return {};
      out.push_back((*x)[p]);
    }
    return one(out);
  }
  if (op == "Concat") {
    const int64_t axis = wrap_axis(onnx_attr_int(n, "axis", 0), rank);
    if (axis < 0 || axis >= rank) return {};
    Dims out = *x;
    for (int k = 1; k < n.input_size(); ++k)  // the other axes agree: any input may tell them
      if (auto s = shape(k); s && s->size() == x->size())
        for (int64_t d = 0; d < rank; ++d)
          if (d != axis && !is_known(out[d]) && is_known((*s)[d])) out[d] = (*s)[d];
    for (int k = 1; k < n.input_size() && out[axis]; ++k) {
      auto s = shape(k);
      if (!s || s->size() != x->size() || !is_known((*s)[axis]) || !is_known(out[axis]) ||
          __builtin_add_overflow(*out[axis], *(*s)[axis], &*out[axis]))
        out[axis] = std::nullopt;
    }
    return one(out);
  }
  if (op == "Expand") {
    auto target = ints(1);
    return one(target ? broadcast(*x, *target) : std::nullopt);
  }
  if (op == "Tile") {
    auto reps = ints(1);
    if (!reps || reps->size() != x->size()) return {};
    Dims out = *x;
    for (size_t k = 0; k < out.size(); ++k) {
      int64_t r = 0;
      if ((*reps)[k] == 1) continue;
      out[k] = is_known(out[k]) && is_known((*reps)[k]) && !__builtin_mul_overflow(*out[k], *(*reps)[k], &r)
                   ? std::optional<int64_t>(r)
                   : std::nullopt;
    }
    return one(out);
  }
  if (op == "Gather") {
    const int64_t axis = wrap_axis(onnx_attr_int(n, "axis", 0), rank);
    auto idx = shape(1);
    if (!idx || axis < 0 || axis >= rank) return {};
    Dims out(x->begin(), x->begin() + axis);
    out.insert(out.end(), idx->begin(), idx->end());
    out.insert(out.end(), x->begin() + axis + 1, x->end());
    return one(out);
  }
  if (op == "Unsqueeze") {
    auto axes = axes_of(1, 13);
    if (!axes) return {};
    const int64_t out_rank = rank + static_cast<int64_t>(axes->size());
    Dims out;
    std::vector<bool> inserted(out_rank, false);
    for (int64_t a : *axes) {
      a = wrap_axis(a, out_rank);
      if (a < 0 || a >= out_rank || inserted[a]) return {};
      inserted[a] = true;
    }
    size_t next = 0;
    for (int64_t k = 0; k < out_rank; ++k) out.push_back(inserted[k] ? std::optional<int64_t>(1) : (*x)[next++]);
    return one(out);
  }
  if (op == "Squeeze") {
    auto axes = axes_of(1, 13);
    if (!axes) return {};
    std::vector<bool> drop(rank, false);
    if (axes->empty()) {
      for (int64_t k = 0; k < rank; ++k) {
        if (!is_known((*x)[k])) return {};
        drop[k] = *(*x)[k] == 1;
      }
    }
    for (int64_t a : *axes) {
      a = wrap_axis(a, rank);
      if (a < 0 || a >= rank) return {};
      drop[a] = true;
    }
    Dims out;
    for (int64_t k = 0; k < rank; ++k)
      if (!drop[k]) out.push_back((*x)[k]);
    return one(out);
  }
  if (op == "Slice") {
    auto starts = ints(1), ends = ints(2);
    if (!starts || !ends || starts->size() != ends->size()) return {};
    std::vector<int64_t> axes, steps(starts->size(), 1);
    if (n.input_size() > 3 && !n.input(3).empty()) {
      if (!in[3] || !in[3]->constant) return {};
      axes = in[3]->constant->ints();
    } else {
      for (size_t k = 0; k < starts->size(); ++k) axes.push_back(static_cast<int64_t>(k));
    }
    if (n.input_size() > 4 && !n.input(4).empty()) {
      if (!in[4] || !in[4]->constant) return {};
      steps = in[4]->constant->ints();
    }
    if (axes.size() != starts->size() || steps.size() != starts->size()) return {};
    Dims out = *x;
    for (size_t k = 0; k < axes.size(); ++k) {
      const int64_t a = wrap_axis(axes[k], rank);
      if (a < 0 || a >= rank) return {};
      const auto b0 = (*starts)[k], e0 = (*ends)[k];
      if (!is_known(out[a]) || !is_known(b0) || !is_known(e0) || steps[k] != 1) {
        out[a] = std::nullopt;
        continue;
      }
      out[a] = slice_range(*out[a], *b0, *e0, 1).second;
    }
    return one(out);
  }
  if (op == "Split") {
    const int64_t axis = wrap_axis(onnx_attr_int(n, "axis", 0), rank);
    if (axis < 0 || axis >= rank) return {};
    std::optional<std::vector<int64_t>> sizes;
    if (opset_ >= 13 && n.input_size() > 1 && !n.input(1).empty()) {
      if (in[1] && in[1]->constant) sizes = in[1]->constant->ints();
    } else if (opset_ < 13) {
      sizes = onnx_attr_ints(n, "split");
    }
    std::vector<std::optional<PartialInts>> out;
    for (int k = 0; k < n.output_size(); ++k) {
      Dims d = *x;
      if (sizes && static_cast<int>(sizes->size()) == n.output_size()) d[axis] = (*sizes)[k];
      else if (is_known((*x)[axis]) && *(*x)[axis] % n.output_size() == 0) d[axis] = *(*x)[axis] / n.output_size();
      else d[axis] = std::nullopt;
      out.push_back(PartialInts{std::move(d), false});
    }
    return out;
  }
  if (op == "ReduceMean") {
    auto axes = axes_of(1, 18);
    if (!axes) return {};
    const bool keep = onnx_attr_int(n, "keepdims", 1) != 0;
    std::vector<bool> reduce(rank, axes->empty());
    for (int64_t a : *axes) {
      a = wrap_axis(a, rank);
      if (a < 0 || a >= rank) return {};
      reduce[a] = true;
    }
    Dims out;
    for (int64_t k = 0; k < rank; ++k) {
      if (!reduce[k]) out.push_back((*x)[k]);
      else if (keep) out.push_back(1);
    }
    return one(out);
  }
  if (op == "MatMul") {
    auto y = shape(1);
    if (!y || rank < 2 || y->size() < 2) return {};
    auto batch = broadcast(Dims(x->begin(), x->end() - 2), Dims(y->begin(), y->end() - 2));
    if (!batch) return {};
    batch->push_back((*x)[rank - 2]);
    batch->push_back(y->back());
    return one(batch);
  }
  if (op == "Gemm") {
    auto y = shape(1);
    if (!y || rank != 2 || y->size() != 2) return {};
    const bool ta = onnx_attr_int(n, "transA", 0) != 0, tb = onnx_attr_int(n, "transB", 0) != 0;
    return one(Dims{(*x)[ta ? 1 : 0], (*y)[tb ? 0 : 1]});
  }
  if (op == "ConstantOfShape") {
    auto target = ints(0);
    return one(target);
  }
  return {};
}

}  // namespace shiftadd
