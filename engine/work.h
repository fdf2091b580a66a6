#pragma once
// Per-run work buffers of a backend. Each op that needs one has a layout function that carves
// its pieces out of one buffer with a WorkCarver; reserve() calls it over no buffer (the carver
// only measures) and run() over the real one, so a scratch size can never drift from its use.
#include <cstddef>

namespace shiftadd {

template <size_t Align>
class WorkCarver {
 public:
  explicit WorkCarver(void* base = nullptr) : base_(static_cast<std::byte*>(base)) {}
  // The next `count` Ts, Align-aligned relative to the base; null when only measuring.
  template <class T>
  T* take(size_t count) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + off_) : nullptr;
    off_ += (count * sizeof(T) + Align - 1) / Align * Align;
    return p;
  }
  size_t bytes() const { return off_; }

 private:
  std::byte* base_;
  size_t off_ = 0;
};

}  // namespace shiftadd
