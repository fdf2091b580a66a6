// Run-time choice of the SIMD path.
#include "kernels/cpu/simd.h"

#include <atomic>
#include <cstring>

namespace shiftadd::kernels::cpu {
namespace {

Isa best_supported() {
#if SHIFTADD_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma"))
    return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Scalar;
}

bool vnni_supported() {
#if SHIFTADD_X86
  return best_supported() == Isa::Avx512 && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

std::atomic<Isa>& selected() {
  static std::atomic<Isa> isa{best_supported()};
  return isa;
}

std::atomic<bool>& vnni_selected() {
  static std::atomic<bool> on{vnni_supported()};
  return on;
}

}  // namespace

Isa isa() { return selected().load(std::memory_order_relaxed); }
bool isa_vnni() { return isa() == Isa::Avx512 && vnni_selected().load(std::memory_order_relaxed); }

bool set_simd(const char* name) {
  Isa want;
  bool vnni = false;
  if (std::strcmp(name, "avx512vnni") == 0)
    want = Isa::Avx512, vnni = true;
  else if (std::strcmp(name, "avx512") == 0)
    want = Isa::Avx512;
  else if (std::strcmp(name, "avx2") == 0)
    want = Isa::Avx2;
  else if (std::strcmp(name, "scalar") == 0)
    want = Isa::Scalar;
  else
    return false;
  if (static_cast<int>(want) > static_cast<int>(best_supported())) return false;
  if (vnni && !vnni_supported()) return false;
  selected().store(want, std::memory_order_relaxed);
  vnni_selected().store(vnni, std::memory_order_relaxed);
  return true;
}

const char* simd_name() {
  switch (isa()) {
    case Isa::Avx512:
      return isa_vnni() ? "avx512vnni" : "avx512";
    case Isa::Avx2:
      return "avx2";
    case Isa::Scalar:
      break;
  }
  return "scalar";
}

}  // namespace shiftadd::kernels::cpu
