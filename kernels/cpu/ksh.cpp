// KSH hashing and additive attention on packed codes (spec section 2) on the CPU.
//
// The loops are written once (always-inline bodies over contiguous arrays, vectorized by the
// compiler) and instantiated per SIMD path with target attributes. KSH: per image and head, one
// parallel pass sums the squared anchor distances (for sigma, in double), a second recomputes
// them and hashes each token. Additive attention: per image and head, each thread accumulates
// a partial KV over its tokens by adding V rows at the set bits of their codes, the partials
// are summed, then each token adds up the KV rows of its set bits (additions only).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/shift_kernels.h"

namespace shiftadd::kernels::cpu {
namespace {

#define SA_INLINE [[gnu::always_inline]] inline

int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

// ----- KSH ---------------------------------------------------------------------------------

struct KshHead {
  const KshArgs* a;
  int64_t b, h, mp, kp;
};

// Transposes this head's anchors to aT[c][j] (j padded to mp, padding 0) and A to AT[j][k].
void ksh_prepare(const KshHead& hd, float* aT, float* AT) {
  const KshArgs& a = *hd.a;
  const float* anc = a.anchors + hd.h * a.m * a.d;
  const float* A = a.A + hd.h * a.nbits * a.m;
  std::memset(aT, 0, sizeof(float) * a.d * hd.mp);
  std::memset(AT, 0, sizeof(float) * a.m * hd.kp);
  for (int64_t j = 0; j < a.m; ++j)
    for (int64_t c = 0; c < a.d; ++c) aT[c * hd.mp + j] = anc[j * a.d + c];
  for (int64_t k = 0; k < a.nbits; ++k)
    for (int64_t j = 0; j < a.m; ++j) AT[j * hd.kp + k] = A[k * a.m + j];
}

SA_INLINE void ksh_dist(const float* q, int64_t d, const float* aT, int64_t mp, float* D) {
  for (int64_t j = 0; j < mp; ++j) D[j] = 0.0f;
  for (int64_t c = 0; c < d; ++c) {
    const float qc = q[c];
    const float* ar = aT + c * mp;
    for (int64_t j = 0; j < mp; ++j) {
      const float t = qc - ar[j];
      D[j] += t * t;
    }
  }
}

SA_INLINE double ksh_sum_body(const KshHead& hd, int64_t n0, int64_t n1, float* scratch) {
  const KshArgs& a = *hd.a;
  float* aT = scratch;
  float* AT = aT + a.d * hd.mp;
  float* D = AT + a.m * hd.kp;
  ksh_prepare(hd, aT, AT);
  double total = 0.0;
  for (int64_t n = n0; n < n1; ++n) {
    ksh_dist(a.qk + hd.b * a.qk_bstride + n * a.qk_ld + hd.h * a.d, a.d, aT, hd.mp, D);
    double s = 0.0;
    for (int64_t j = 0; j < a.m; ++j) s += D[j];
    total += s;
  }
  return total;
}

SA_INLINE void ksh_hash_body(const KshHead& hd, int64_t n0, int64_t n1, float sigma,
                             float* scratch) {
  const KshArgs& a = *hd.a;
  float* aT = scratch;
  float* AT = aT + a.d * hd.mp;
  float* D = AT + a.m * hd.kp;
  float* y = D + hd.mp;
  ksh_prepare(hd, aT, AT);
  const float* mvec = a.mvec + hd.h * a.m;
  const float neg_inv = sigma > 0.0f ? -1.0f / (2.0f * sigma) : 0.0f;
  for (int64_t n = n0; n < n1; ++n) {
    ksh_dist(a.qk + hd.b * a.qk_bstride + n * a.qk_ld + hd.h * a.d, a.d, aT, hd.mp, D);
    for (int64_t k = 0; k < hd.kp; ++k) y[k] = 0.0f;
    for (int64_t j = 0; j < a.m; ++j) {
      const float kf = std::exp(D[j] * neg_inv) - mvec[j];
      const float* Ar = AT + j * hd.kp;
      for (int64_t k = 0; k < hd.kp; ++k) y[k] += kf * Ar[k];
    }
    uint64_t code = 0;
    for (int64_t k = 0; k < a.nbits; ++k) code |= static_cast<uint64_t>(y[k] > 0.0f) << k;
    const int64_t i = (hd.b * a.H + hd.h) * a.N + n;
    if (a.nbits <= 16)
      static_cast<uint16_t*>(a.codes)[i] = static_cast<uint16_t>(code);
    else
      static_cast<uint64_t*>(a.codes)[i] = code;
    if (a.preact) std::memcpy(a.preact + i * a.nbits, y, sizeof(float) * a.nbits);
  }
}

// ----- additive attention ------------------------------------------------------------------

struct AttnHead {
  const AdditiveAttentionArgs* a;
  int64_t b, h;
  SA_INLINE const float* vrow(int64_t n) const {
    return a->v + b * a->v_bstride + n * a->v_ld + h * a->d;
  }
  SA_INLINE uint64_t code_in(const void* codes, int64_t n) const {
    const int64_t i = (b * a->H + h) * a->N + n;
    return a->nbits <= 16 ? static_cast<const uint16_t*>(codes)[i]
                          : static_cast<const uint64_t*>(codes)[i];
  }
  SA_INLINE uint64_t code(int64_t n) const { return code_in(a->codes, n); }  // key side
  SA_INLINE uint64_t qcode(int64_t n) const { return code_in(a->qcodes ? a->qcodes : a->codes, n); }
};

SA_INLINE void add_row(float* dst, const float* src, int64_t d) {
  for (int64_t c = 0; c < d; ++c) dst[c] += src[c];
}

// partial[k] += V rows n in [n0, n1) with bit k set
SA_INLINE void kv_body(const AttnHead& hd, int64_t n0, int64_t n1, float* partial) {
  const int64_t d = hd.a->d;
  for (int64_t n = n0; n < n1; ++n) {
    const float* v = hd.vrow(n);
    for (uint64_t bits = hd.code(n); bits; bits &= bits - 1)
      add_row(partial + __builtin_ctzll(bits) * d, v, d);
  }
}

SA_INLINE void out_body(const AttnHead& hd, int64_t n0, int64_t n1, const float* KV, float* Z) {
  const AdditiveAttentionArgs& a = *hd.a;
  const int64_t d = a.d;
  const float* taps = a.taps + hd.h * 9;
  const float pi = static_cast<float>(M_PI);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t c = 0; c < d; ++c) Z[c] = 0.0f;
    for (uint64_t bits = hd.qcode(n); bits; bits &= bits - 1)
      add_row(Z, KV + __builtin_ctzll(bits) * d, d);
    const float* v = hd.vrow(n);
    float norm2 = 0.0f;
    for (int64_t c = 0; c < d; ++c) {
      Z[c] = 0.5f * v[c] + Z[c] / pi;
      norm2 += Z[c] * Z[c];
    }
    const float inv = norm2 > 0.0f ? 1.0f / std::sqrt(norm2) : 1.0f;
    for (int64_t c = 0; c < d; ++c) Z[c] *= inv;
    for (int64_t t = 0; t < 9; ++t) {
      const int64_t src = n - 4 + t;
      if (src < 0 || src >= a.N) continue;
      const float w = taps[t];
      const float* vs = hd.vrow(src);
      for (int64_t c = 0; c < d; ++c) Z[c] += w * vs[c];
    }
    std::memcpy(a.out + hd.b * a.o_bstride + n * a.o_ld + hd.h * d, Z, sizeof(float) * d);
  }
}

// ----- per-ISA instantiations ----------------------------------------------------------------

#define SA_DEFINE(SUFFIX, ATTR)                                                                 \
  ATTR double ksh_sum_##SUFFIX(const KshHead& hd, int64_t n0, int64_t n1, float* s) {          \
    return ksh_sum_body(hd, n0, n1, s);                                                         \
  }                                                                                             \
  ATTR void ksh_hash_##SUFFIX(const KshHead& hd, int64_t n0, int64_t n1, float sg, float* s) { \
    ksh_hash_body(hd, n0, n1, sg, s);                                                           \
  }                                                                                             \
  ATTR void kv_##SUFFIX(const AttnHead& hd, int64_t n0, int64_t n1, float* p) {                \
    kv_body(hd, n0, n1, p);                                                                     \
  }                                                                                             \
  ATTR void out_##SUFFIX(const AttnHead& hd, int64_t n0, int64_t n1, const float* KV, float* Z) { \
    out_body(hd, n0, n1, KV, Z);                                                                \
  }

SA_DEFINE(scalar, )
#if SHIFTADD_X86
SA_DEFINE(avx2, SHIFTADD_AVX2)
SA_DEFINE(avx512, SHIFTADD_AVX512)
#endif

struct Fns {
  double (*ksh_sum)(const KshHead&, int64_t, int64_t, float*);
  void (*ksh_hash)(const KshHead&, int64_t, int64_t, float, float*);
  void (*kv)(const AttnHead&, int64_t, int64_t, float*);
  void (*out)(const AttnHead&, int64_t, int64_t, const float*, float*);
};

Fns fns() {
#if SHIFTADD_X86
  switch (isa()) {
    case Isa::Avx512:
      return {ksh_sum_avx512, ksh_hash_avx512, kv_avx512, out_avx512};
    case Isa::Avx2:
      return {ksh_sum_avx2, ksh_hash_avx2, kv_avx2, out_avx2};
    case Isa::Scalar:
      break;
  }
#endif
  return {ksh_sum_scalar, ksh_hash_scalar, kv_scalar, out_scalar};
}

// Runs fn(tid, n0, n1) over [0, n): inline when small, else split over the pool.
template <class F>
void split(ThreadPool& pool, int64_t n, int64_t work_per_item, F&& fn) {
  if (pool.size() == 1 || n * work_per_item < 65536) {
    fn(0, int64_t{0}, n);
    return;
  }
  pool.parallel_for(n, fn);
}

}  // namespace

size_t ksh_scratch_bytes(const KshArgs& a) {
  const int64_t mp = pad16(a.m), kp = pad16(a.nbits);
  return sizeof(float) * static_cast<size_t>(a.d * mp + a.m * kp + mp + kp);
}

void ksh_hash(const KshArgs& a, ThreadPool& pool) {
  const Fns f = fns();
  double partial[ThreadPool::kMaxThreads];
  for (int64_t b = 0; b < a.B; ++b) {
    for (int64_t h = 0; h < a.H; ++h) {
      const KshHead hd{&a, b, h, pad16(a.m), pad16(a.nbits)};
      std::fill_n(partial, pool.size(), 0.0);
      split(pool, a.N, a.m * a.d, [&](int tid, int64_t n0, int64_t n1) {
        partial[tid] += f.ksh_sum(hd, n0, n1, pool.scratch(tid));
      });
      double total = 0.0;
      for (int t = 0; t < pool.size(); ++t) total += partial[t];
      const float sigma = static_cast<float>(total / static_cast<double>(a.N * a.m));
      split(pool, a.N, a.m * (a.d + a.nbits), [&](int tid, int64_t n0, int64_t n1) {
        f.ksh_hash(hd, n0, n1, sigma, pool.scratch(tid));
      });
    }
  }
}

size_t additive_attention_scratch_bytes(const AdditiveAttentionArgs& a) {
  return sizeof(float) * static_cast<size_t>((2 * a.nbits + 1) * a.d);
}

void additive_attention(const AdditiveAttentionArgs& a, ThreadPool& pool) {
  const Fns f = fns();
  const int64_t kvn = a.nbits * a.d;
  for (int64_t b = 0; b < a.B; ++b) {
    for (int64_t h = 0; h < a.H; ++h) {
      const AttnHead hd{&a, b, h};
      for (int t = 0; t < pool.size(); ++t) std::fill_n(pool.scratch(t), kvn, 0.0f);
      int used = 1;
      split(pool, a.N, a.d * 4, [&](int tid, int64_t n0, int64_t n1) {
        f.kv(hd, n0, n1, pool.scratch(tid));
      });
      if (pool.size() > 1 && a.N * a.d * 4 >= 65536) used = pool.size();
      // Sum the per-thread partials into thread 0's KV area.
      float* KV = pool.scratch(0) + kvn;
      std::copy_n(pool.scratch(0), kvn, KV);
      for (int t = 1; t < used; ++t) {
        const float* p = pool.scratch(t);
        for (int64_t i = 0; i < kvn; ++i) KV[i] += p[i];
      }
      split(pool, a.N, a.d * 16, [&](int tid, int64_t n0, int64_t n1) {
        f.out(hd, n0, n1, KV, pool.scratch(tid) + 2 * kvn);
      });
    }
  }
}

}  // namespace shiftadd::kernels::cpu
