#pragma once
// Tensor: dtype, shape, strides (in elements), device, and storage that is either owned
// (aligned heap allocation) or borrowed (e.g. a view into an mmap'd weight file, kept alive by
// `owner`). Borrowed weights are never copied.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "shiftadd/device.h"

namespace shiftadd {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);  // "[2, 197, 192]"
int64_t shape_numel(const Shape& s);
// True when no dimension is negative and every product of trailing dimensions (each stride of
// a contiguous tensor, and the element count) fits in int64. Loaders check it on shapes read
// from files before building tensors, which throw Error for such shapes.
bool shape_is_addressable(const Shape& s);

class Tensor {
 public:
  Tensor() = default;

  // Owning, contiguous, 64-byte aligned, zero-initialised.
  static Tensor empty(DType dtype, Shape shape, Device device = Device::CPU);
  // Borrowed, contiguous view of `data`; `owner` keeps the memory alive (may be null).
  static Tensor borrow(void* data, DType dtype, Shape shape, std::shared_ptr<const void> owner,
                       Device device = Device::CPU);

  bool defined() const { return data_ != nullptr || numel() == 0; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;

  void* raw() const { return data_; }
  template <typename T> T* data() const { return static_cast<T*>(data_); }

  // Same storage, new contiguous shape with the same element count.
  Tensor reshape(Shape shape) const;

 private:
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  Shape shape_;
  Shape strides_;
  void* data_ = nullptr;
  std::shared_ptr<const void> owner_;
};

}  // namespace shiftadd
