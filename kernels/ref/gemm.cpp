// Reference GEMM: the oracle for the optimized kernels, written for obviousness, not speed.
#include <cmath>

#include "core/shift_codes.h"
#include "kernels/kernels.h"

namespace shiftadd::kernels::ref {

void gemm(const GemmArgs& a) {
  for (int64_t m = 0; m < a.M; ++m) {
    const int64_t row = a.c_rows ? a.c_rows[m] : m, arow = a.a_rows ? a.a_rows[m] : m;
    for (int64_t n = 0; n < a.N; ++n) {
      double acc = 0.0;
      for (int64_t k = 0; k < a.K; ++k) {
        const float b = a.B_codes            ? decode_shift_weight(a.B_codes[n * a.ldb + k])
                        : a.b_is_nk          ? a.B[n * a.ldb + k]
                                             : a.B[k * a.ldb + n];
        acc += static_cast<double>(a.A[arow * a.lda + k]) * b;
      }
      double c = a.alpha * acc;
      if (a.epi.scale) c *= a.epi.scale[n];
      if (a.epi.bias) c += a.epi.bias[n];
      if (a.epi.combine != Combine::None) c = combine_value(static_cast<float>(c), a.epi.combine);
      if (a.epi.gelu) c = 0.5 * c * (1.0 + std::erf(c / std::sqrt(2.0)));
      // Read the residual before writing C: it may alias C.
      if (a.epi.residual) c += a.epi.residual[row * a.epi.ldr + n];
      a.C[row * a.ldc + n] = static_cast<float>(c);
    }
  }
}

}  // namespace shiftadd::kernels::ref
