#pragma once
// cudasim device side: .cu kernels compiled as C++ run here, one coroutine per CUDA thread.
//
// A launch runs its blocks one after another; inside a block every thread is a coroutine that
// runs until it reaches __syncthreads() or a warp intrinsic, so barriers and shuffles have
// their CUDA meaning (a thread really waits for the others). Threads of a block are resumed in
// a shuffled order, so code that forgets a barrier reads stale shared memory here too.
// __shared__ variables are static (one block runs at a time); dynamic shared memory is a
// poisoned buffer per block.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

// Built-in variables: set by the scheduler before it resumes a thread.
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace cudasim {

enum class WarpOp { ShflXor, Shfl, ShflUp, ShflDown, Ballot, Any, All, SyncWarp };

// One thread's part of a warp-wide exchange: blocks until every lane named in `mask` has
// arrived at the same op, then returns this lane's result.
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int param, int width);
void syncthreads();
int syncthreads_count(int predicate);
void* dynamic_shared();

// Enqueues a launch of `body` (one call per simulated thread) on `stream`; `pointers` are the
// kernel's pointer arguments and the pointer members of its struct arguments, checked against
// the device allocations.
void enqueue_kernel(const char* name, dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                    std::function<void()> body, std::vector<const void*> pointers);

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move up to 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

// Kernel arguments' pointers, for the check that device code gets device (or pinned) memory:
// pointer arguments, and the pointer members of aggregate arguments (the kernels' *Args
// structs), found by counting an aggregate's members (brace initialisation from a value that
// converts to anything) and binding them with structured bindings.
struct AnyField {
  template <class T>
  operator T() const;
};
template <class T, class... A>
constexpr auto brace_constructible(int) -> decltype(T{std::declval<A>()...}, true) {
  return true;
}
template <class T, class... A>
constexpr bool brace_constructible(...) {
  return false;
}
template <class T, class... A>
constexpr size_t member_count() {
  if constexpr (sizeof...(A) > 32)
    return 0;  // beyond what collect_members binds: not inspected
  else if constexpr (brace_constructible<T, A..., AnyField>(0))
    return member_count<T, A..., AnyField>();
  else
    return sizeof...(A);
}

template <class T>
void collect_pointers(std::vector<const void*>& out, const T& v);
template <class... F>
void collect_each(std::vector<const void*>& out, const F&... f) {
  (collect_pointers(out, f), ...);
}
template <class T>
void collect_members(std::vector<const void*>& out, const T& v) {
  constexpr size_t N = member_count<T>();
  if constexpr (N == 0) {
    (void)out, (void)v;
  } else if constexpr (N == 1) {
    const auto& [f0] = v;
    collect_each(out, f0);
  } else if constexpr (N == 2) {
    const auto& [f0, f1] = v;
    collect_each(out, f0, f1);
  } else if constexpr (N == 3) {
    const auto& [f0, f1, f2] = v;
    collect_each(out, f0, f1, f2);
  } else if constexpr (N == 4) {
    const auto& [f0, f1, f2, f3] = v;
    collect_each(out, f0, f1, f2, f3);
  } else if constexpr (N == 5) {
    const auto& [f0, f1, f2, f3, f4] = v;
    collect_each(out, f0, f1, f2, f3, f4);
  } else if constexpr (N == 6) {
    const auto& [f0, f1, f2, f3, f4, f5] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5);
  } else if constexpr (N == 7) {
    const auto& [f0, f1, f2, f3, f4, f5, f6] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6);
  } else if constexpr (N == 8) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7);
  } else if constexpr (N == 9) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8);
  } else if constexpr (N == 10) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9);
  } else if constexpr (N == 11) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10);
  } else if constexpr (N == 12) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11);
  } else if constexpr (N == 13) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12);
  } else if constexpr (N == 14) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13);
  } else if constexpr (N == 15) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14);
  } else if constexpr (N == 16) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15);
  } else if constexpr (N == 17) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16);
  } else if constexpr (N == 18) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17);
  } else if constexpr (N == 19) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18);
  } else if constexpr (N == 20) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19);
  } else if constexpr (N == 21) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20);
  } else if constexpr (N == 22) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21);
  } else if constexpr (N == 23) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22);
  } else if constexpr (N == 24) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23);
  } else if constexpr (N == 25) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24);
  } else if constexpr (N == 26) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25);
  } else if constexpr (N == 27) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26);
  } else if constexpr (N == 28) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27);
  } else if constexpr (N == 29) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28);
  } else if constexpr (N == 30) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28, f29] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28, f29);
  } else if constexpr (N == 31) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28, f29, f30] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28, f29, f30);
  } else if constexpr (N == 32) {
    const auto& [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28, f29, f30, f31] = v;
    collect_each(out, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28, f29, f30, f31);
  }
}
template <class T>
void collect_pointers(std::vector<const void*>& out, const T& v) {
  if constexpr (std::is_pointer_v<T>)
    out.push_back(static_cast<const void*>(v));
  else if constexpr (std::is_class_v<T> && std::is_aggregate_v<T>)
    collect_members(out, v);
}

// kernel<<<grid, block, smem, stream>>>(args...) is written
// SHIFTADD_LAUNCH(kernel, grid, block, smem, stream)(args...): arguments are converted to the
// kernel's parameter types and copied at launch, as CUDA does.
template <class... P>
struct Launcher {
  void (*kernel)(P...);
  std::string name;
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    std::vector<const void*> pointers;
    std::apply([&](const auto&... p) { (collect_pointers(pointers, p), ...); }, params);
    auto* k = kernel;
    enqueue_kernel(
        name.c_str(), grid, block, smem, stream, [k, params]() { std::apply(k, params); }, std::move(pointers));
  }
};
// `caller` (the launching function's __PRETTY_FUNCTION__) names the template arguments of a
// kernel template, which its spelling at the launch (`kernel<P>`) does not.
template <class... P>
Launcher<P...> launch(void (*kernel)(P...), const char* name, const char* caller, dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream) {
  std::string n = name;
  if (n.find('<') != std::string::npos) n += std::string(" in ") + caller;
  return Launcher<P...>{kernel, std::move(n), grid, block, smem, stream};
}

}  // namespace cudasim

// ----- intrinsics --------------------------------------------------------------------------------
inline void __syncthreads() { cudasim::syncthreads(); }
inline int __syncthreads_count(int predicate) { return cudasim::syncthreads_count(predicate); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  cudasim::warp_exchange(cudasim::WarpOp::SyncWarp, mask, 0, 0, 32);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return cudasim::from_bits<T>(
      cudasim::warp_exchange(cudasim::WarpOp::ShflXor, mask, cudasim::to_bits(v), lane_mask, width));
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  return cudasim::from_bits<T>(
      cudasim::warp_exchange(cudasim::WarpOp::Shfl, mask, cudasim::to_bits(v), src_lane, width));
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return cudasim::from_bits<T>(
      cudasim::warp_exchange(cudasim::WarpOp::ShflUp, mask, cudasim::to_bits(v), static_cast<int>(delta), width));
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return cudasim::from_bits<T>(
      cudasim::warp_exchange(cudasim::WarpOp::ShflDown, mask, cudasim::to_bits(v), static_cast<int>(delta), width));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(cudasim::warp_exchange(cudasim::WarpOp::Ballot, mask, predicate != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int predicate) {
  return static_cast<int>(cudasim::warp_exchange(cudasim::WarpOp::Any, mask, predicate != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int predicate) {
  return static_cast<int>(cudasim::warp_exchange(cudasim::WarpOp::All, mask, predicate != 0, 0, 32));
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
// Four signed byte products of a and b added to c (the sm_61+ integer dot product).
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i)
    c += static_cast<int>(static_cast<int8_t>(a >> (8 * i))) * static_cast<int>(static_cast<int8_t>(b >> (8 * i)));
  return c;
}
// Explicitly rounded fp32 operations (never contracted into an FMA).
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;
  return r;
}
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }

// CUDA's min/max overloads for any arithmetic type (device code calls them unqualified).
template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
constexpr T min(T a, T b) {
  return b < a ? b : a;
}
template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
constexpr T max(T a, T b) {
  return a < b ? b : a;
}
