// Reference KSH hashing (row normalisation included) and additive attention on packed codes
// (spec section 2), in double precision with plain loops.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/shift_kernels.h"

namespace shiftadd::kernels::ref {

void ksh_hash(const KshArgs& a) {
  std::vector<double> D(static_cast<size_t>(a.N * a.m)), q(static_cast<size_t>(a.d));
  for (int64_t s = 0; s < a.streams; ++s) {
    for (int64_t b = 0; b < a.B; ++b) {
      for (int64_t h = 0; h < a.H; ++h) {
        const float* anchors = a.anchors + h * a.m * a.d;
        double total = 0.0;
        for (int64_t n = 0; n < a.N; ++n) {
          const float* x = a.qk + s * a.stream_offset + b * a.qk_bstride + n * a.qk_ld + h * a.d;
          double nn = 0.0;
          for (int64_t c = 0; c < a.d; ++c) nn += static_cast<double>(x[c]) * x[c];
          const double inv = nn > 0.0 ? 1.0 / std::sqrt(nn) : 0.0;
          for (int64_t c = 0; c < a.d; ++c) q[c] = x[c] * inv;
          for (int64_t j = 0; j < a.m; ++j) {
            double dd = 0.0;
            for (int64_t c = 0; c < a.d; ++c) {
              const double t = q[c] - anchors[j * a.d + c];
              dd += t * t;
            }
            D[n * a.m + j] = dd;
            total += dd;
          }
        }
        const double sigma = total / static_cast<double>(a.N * a.m);
        for (int64_t n = 0; n < a.N; ++n) {
          uint64_t code = 0;
          const int64_t i = ((s * a.B + b) * a.H + h) * a.N + n;
          for (int64_t k = 0; k < a.nbits; ++k) {
            double y = 0.0;
            for (int64_t j = 0; j < a.m; ++j) {
              const double e = sigma > 0.0 ? std::exp(-D[n * a.m + j] / (2.0 * sigma)) : 1.0;
              y += (e - a.mvec[h * a.m + j]) * a.A[(h * a.nbits + k) * a.m + j];
            }
            if (y > 0.0) code |= uint64_t{1} << k;
            if (a.preact) a.preact[i * a.nbits + k] = static_cast<float>(y);
          }
          if (a.nbits <= 16)
            static_cast<uint16_t*>(a.codes)[i] = static_cast<uint16_t>(code);
          else
            static_cast<uint64_t*>(a.codes)[i] = code;
        }
      }
    }
  }
}

void additive_attention(const AdditiveAttentionArgs& a) {
  const double pi = M_PI;
  std::vector<double> KV(static_cast<size_t>(a.nbits * a.d)), Z(static_cast<size_t>(a.d));
  for (int64_t b = 0; b < a.B; ++b) {
    for (int64_t h = 0; h < a.H; ++h) {
      auto code_in = [&](const void* codes, int64_t n) -> uint64_t {
        const int64_t i = (b * a.H + h) * a.N + n;
        return a.nbits <= 16 ? static_cast<const uint16_t*>(codes)[i]
                             : static_cast<const uint64_t*>(codes)[i];
      };
      auto code = [&](int64_t n) { return code_in(a.codes, n); };
      auto qcode = [&](int64_t n) { return code_in(a.qcodes ? a.qcodes : a.codes, n); };
      auto vrow = [&](int64_t n) { return a.v + b * a.v_bstride + n * a.v_ld + h * a.d; };
      std::fill(KV.begin(), KV.end(), 0.0);
      for (int64_t n = 0; n < a.N; ++n)
        for (int64_t k = 0; k < a.nbits; ++k)
          if ((code(n) >> k) & 1)
            for (int64_t c = 0; c < a.d; ++c) KV[k * a.d + c] += vrow(n)[c];
      for (int64_t n = 0; n < a.N; ++n) {
        double norm2 = 0.0;
        for (int64_t c = 0; c < a.d; ++c) {
          double y = 0.0;
          for (int64_t k = 0; k < a.nbits; ++k)
            if ((qcode(n) >> k) & 1) y += KV[k * a.d + c];
          Z[c] = 0.5 * vrow(n)[c] + y / pi;
          norm2 += Z[c] * Z[c];
        }
        const double inv = norm2 > 0.0 ? 1.0 / std::sqrt(norm2) : 1.0;
        float* o = a.out + b * a.o_bstride + n * a.o_ld + h * a.d;
        for (int64_t c = 0; c < a.d; ++c) {
          double conv = 0.0;
          for (int64_t t = 0; t < 9; ++t) {
            const int64_t src = n - 4 + t;
            if (src >= 0 && src < a.N) conv += static_cast<double>(a.taps[h * 9 + t]) * vrow(src)[c];
          }
          o[c] = static_cast<float>(Z[c] * inv + conv);
        }
      }
    }
  }
}

}  // namespace shiftadd::kernels::ref
