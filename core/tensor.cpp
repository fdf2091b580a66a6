#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "shiftadd/error.h"

namespace shiftadd {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

bool shape_is_addressable(const Shape& s) {
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;)
    if (s[i] < 0 || __builtin_mul_overflow(acc, s[i], &acc)) return false;
  return true;
}

static Shape contiguous_strides(const Shape& shape) {
  // A zero dimension makes the element count 0 but not the strides: [0, 2^31, 2^31, 2^31] has
  // a stride of 2^93 elements.
  if (!shape_is_addressable(shape))
    throw Error("shape " + shape_str(shape) + " has dimensions whose products overflow int64");
  Shape st(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}

Tensor Tensor::empty(DType dtype, Shape shape, Device device) {
  if (device != Device::CPU) throw Error("Tensor::empty: only CPU tensors are allocated here");
  for (int64_t d : shape)
    if (d < 0) throw Error("Tensor::empty: negative dimension in shape " + shape_str(shape));
  Tensor t;
  t.dtype_ = dtype;
  t.device_ = device;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(t.shape_);
  size_t bytes = (t.nbytes() + 63) / 64 * 64;
  if (bytes == 0) bytes = 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes");
  std::memset(p, 0, bytes);
  t.data_ = p;
  t.owner_ = std::shared_ptr<const void>(p, [](const void* q) { std::free(const_cast<void*>(q)); });
  return t;
}

Tensor Tensor::borrow(void* data, DType dtype, Shape shape, std::shared_ptr<const void> owner,
                      Device device) {
  Tensor t;
  t.dtype_ = dtype;
  t.device_ = device;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(t.shape_);
  t.data_ = data;
  t.owner_ = std::move(owner);
  return t;
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

Tensor Tensor::reshape(Shape shape) const {
  if (shape_numel(shape) != numel())
    throw Error("reshape: cannot view " + shape_str(shape_) + " as " + shape_str(shape));
  if (!is_contiguous()) throw Error("reshape: tensor is not contiguous");
  Tensor t = *this;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(t.shape_);
  return t;
}

}  // namespace shiftadd
