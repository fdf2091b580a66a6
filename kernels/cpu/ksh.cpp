// KSH hashing and additive attention on packed codes (spec section 2) on the CPU.
//
// Hash, two parallel passes over token chunks of every image:
//  1. normalise each token's q (and k) per head into the work buffer and sum the unit rows and
//     their squared norms per chunk; sigma, the mean squared anchor distance of an image and
//     head, then follows from those sums alone:
//       sum_{n,j} |q_n - a_j|^2 = m sum_n |q_n|^2 - 2 (sum_n q_n).(sum_j a_j) + N sum_j |a_j|^2
//     (in double), so the distances are computed once, in pass 2, not twice;
//  2. per group of 4 tokens: the distances to all anchors as register-blocked dot products
//     (D = |q|^2 + |a|^2 - 2 q.a), the kernel features, the bit projections and the code bits
//     (a vector compare is the packed code).
// Additive attention, linear in tokens and branch-free ("four Russians" over nibbles of the
// codes): pass 1 adds each token's V row into one of 16 buckets per 4-bit group of its key
// code (nbits/4 row additions per token, whatever its popcount; tokens sorted by nibble, so a
// bucket's additions run in registers); pass 2 turns the buckets into
// KV (KV[4g+i] = sum of the buckets whose nibble has bit i) and KV into per-group subset-sum
// tables (T_g[s] = sum of KV rows of the bits in s), so each token's Y is nbits/4 table rows
// added (additions only); then 0.5 V + Y / pi, the row norm and the 9-tap dconv.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/shift_kernels.h"
#include "shiftadd/error.h"

namespace shiftadd::kernels::cpu {
namespace {

#define SA_INLINE [[gnu::always_inline]] inline

constexpr int64_t kChunk = 32;   // tokens per hash task (a multiple of 16: the AVX-512 block)
constexpr int64_t kNibbles = 16;

int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

// sum_c x[c] * y[c] over 16 independent partial sums, so the compiler vectorises it (a single
// running sum is a serial chain it may not reorder).
SA_INLINE float dot16(const float* x, const float* y, int64_t d) {
  float part[16] = {};
  int64_t c = 0;
  for (; c + 16 <= d; c += 16)
    for (int i = 0; i < 16; ++i) part[i] += x[c + i] * y[c + i];
  for (; c < d; ++c) part[c & 15] += x[c] * y[c];
  for (int w = 8; w > 0; w /= 2)  // a tree, not a 16-long chain
    for (int i = 0; i < w; ++i) part[i] += part[i + w];
  return part[0];
}
size_t align64(size_t n) { return (n + 63) / 64 * 64; }

// ----- the hash's constants and work buffer ----------------------------------------------

// A layer's hash constants in the layout the passes read (ksh_prepare; once per layer).
struct KshConsts {
  int64_t mp, kp;
  float* aT;     // [H, d, mp] anchors transposed, zero padded
  float* a2;     // [H, mp] |a_j|^2
  float* mv;     // [H, mp] mvec
  float* AT;     // [H, m, kp] A transposed, zero padded
  double* asum;  // [H, d + 1]: sum_j a_j and sum_j |a_j|^2
};

struct KshWork {
  int64_t S, SH, mp, kp, chunks;
  float* qn;     // [B*N, S*H*d] normalised rows
  float* qsq;    // [B*N, S*H] their squared norms
  float* psum;   // [B, chunks, S*H, d + 1]: per chunk, sum of q and of |q|^2
  float* ninv;   // [S, B, H] -1 / (2 sigma), 0 when sigma is 0
  KshConsts k;
};

// Carves consecutive 64-byte aligned arrays out of `base` (null: only counts the bytes).
struct Carve {
  std::byte* base;
  size_t off = 0;
  template <class T>
  T* take(int64_t count) {
    T* p = base ? reinterpret_cast<T*>(base + off) : nullptr;
    off += align64(static_cast<size_t>(count) * sizeof(T));
    return p;
  }
};

KshConsts consts_layout(const KshArgs& a, Carve& c) {
  KshConsts k;
  k.mp = pad16(a.m);
  k.kp = pad16(a.nbits);
  k.aT = c.take<float>(a.H * a.d * k.mp);
  k.a2 = c.take<float>(a.H * k.mp);
  k.mv = c.take<float>(a.H * k.mp);
  k.AT = c.take<float>(a.H * a.m * k.kp);
  k.asum = c.take<double>(a.H * (a.d + 1));
  return k;
}

// The per-call layout over `base` (the prepared constants last, used when a.prepared is null).
KshWork ksh_layout(const KshArgs& a, void* base, size_t* bytes = nullptr) {
  KshWork w;
  w.S = a.streams;
  w.SH = a.streams * a.H;
  w.chunks = (a.N + kChunk - 1) / kChunk;
  Carve c{static_cast<std::byte*>(base)};
  w.qn = c.take<float>(a.B * a.N * w.SH * a.d);
  w.qsq = c.take<float>(a.B * a.N * w.SH);
  w.psum = c.take<float>(a.B * w.chunks * w.SH * (a.d + 1));
  w.ninv = c.take<float>(w.SH * a.B);
  if (a.prepared && base) {
    Carve p{static_cast<std::byte*>(const_cast<void*>(a.prepared))};
    w.k = consts_layout(a, p);
  } else {
    w.k = consts_layout(a, c);
  }
  w.mp = w.k.mp;
  w.kp = w.k.kp;
  if (bytes) *bytes = c.off;
  return w;
}

void prepare_consts(const KshArgs& a, const KshConsts& k) {
  std::fill_n(k.aT, a.H * a.d * k.mp, 0.0f);
  std::fill_n(k.a2, a.H * k.mp, 0.0f);
  std::fill_n(k.mv, a.H * k.mp, 0.0f);
  std::fill_n(k.AT, a.H * a.m * k.kp, 0.0f);
  std::fill_n(k.asum, a.H * (a.d + 1), 0.0);
  for (int64_t h = 0; h < a.H; ++h) {
    double* as = k.asum + h * (a.d + 1);
    for (int64_t j = 0; j < a.m; ++j) {
      const float* anc = a.anchors + (h * a.m + j) * a.d;
      float s = 0.0f;
      for (int64_t c = 0; c < a.d; ++c) {
        k.aT[(h * a.d + c) * k.mp + j] = anc[c];
        s += anc[c] * anc[c];
        as[c] += anc[c];
        as[a.d] += static_cast<double>(anc[c]) * anc[c];
      }
      k.a2[h * k.mp + j] = s;
      k.mv[h * k.mp + j] = a.mvec[h * a.m + j];
      for (int64_t b = 0; b < a.nbits; ++b) k.AT[(h * a.m + j) * k.kp + b] = a.A[(h * a.nbits + b) * a.m + j];
    }
  }
}

// Pass 1 body: tokens [n0, n1) of image b.
SA_INLINE void normalise_body(const KshArgs& a, const KshWork& w, int64_t b, int64_t chunk, int64_t n0,
                              int64_t n1, int64_t h0, int64_t h1) {
  const int64_t d = a.d;
  float* ps = w.psum + (b * w.chunks + chunk) * w.SH * (d + 1);
  for (int64_t s = 0; s < w.S; ++s) std::fill_n(ps + (s * a.H + h0) * (d + 1), (h1 - h0) * (d + 1), 0.0f);
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t t = b * a.N + n;
    for (int64_t s = 0; s < w.S; ++s)
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t sh = s * a.H + h;
        const float* x = a.qk + s * a.stream_offset + b * a.qk_bstride + n * a.qk_ld + h * d;
        const float ss = dot16(x, x, d);
        const float inv = ss > 0.0f ? 1.0f / std::sqrt(ss) : 0.0f;
        float* q = w.qn + (t * w.SH + sh) * d;
        float* acc = ps + sh * (d + 1);
        for (int64_t c = 0; c < d; ++c) {
          q[c] = x[c] * inv;
          acc[c] += q[c];
        }
        const float qq = dot16(q, q, d);
        acc[d] += qq;
        w.qsq[t * w.SH + sh] = qq;
      }
  }
}

// sigma of every (stream, image, head) from the pass-1 sums.
void sigmas(const KshArgs& a, const KshWork& w, int64_t b0, int64_t b1, int64_t h0, int64_t h1) {
  const int64_t d = a.d;
  double qs[257];
  for (int64_t s = 0; s < w.S; ++s)
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t sh = s * a.H + h;
        std::fill_n(qs, d + 1, 0.0);
        for (int64_t c = 0; c < w.chunks; ++c) {
          const float* ps = w.psum + ((b * w.chunks + c) * w.SH + sh) * (d + 1);
          for (int64_t e = 0; e <= d; ++e) qs[e] += ps[e];
        }
        const double* as = w.k.asum + h * (d + 1);
        double dot = 0.0;
        for (int64_t e = 0; e < d; ++e) dot += qs[e] * as[e];
        const double total = static_cast<double>(a.m) * qs[d] - 2.0 * dot + static_cast<double>(a.N) * as[d];
        const double sigma = total / static_cast<double>(a.N * a.m);
        w.ninv[(s * a.B + b) * a.H + h] = sigma > 0.0 ? static_cast<float>(-1.0 / (2.0 * sigma)) : 0.0f;
      }
}

void store_code(const KshArgs& a, int64_t i, uint64_t code, const float* y) {
  if (a.nbits <= 16)
    static_cast<uint16_t*>(a.codes)[i] = static_cast<uint16_t>(code);
  else
    static_cast<uint64_t*>(a.codes)[i] = code;
  if (a.preact) std::memcpy(a.preact + i * a.nbits, y, sizeof(float) * a.nbits);
}

// Pass 2, portable: token by token.
SA_INLINE void hash_body(const KshArgs& a, const KshWork& w, int64_t b, int64_t n0, int64_t n1, int64_t h0,
                         int64_t h1) {
  float D[64 + 16], y[64 + 16];
  const int64_t d = a.d, mp = w.mp, kp = w.kp;
  for (int64_t s = 0; s < w.S; ++s)
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t sh = s * a.H + h;
      const float ninv = w.ninv[(s * a.B + b) * a.H + h];
      const float* aT = w.k.aT + h * d * mp;
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t t = b * a.N + n;
        const float* q = w.qn + (t * w.SH + sh) * d;
        for (int64_t j = 0; j < mp; ++j) D[j] = 0.0f;
        for (int64_t c = 0; c < d; ++c)
          for (int64_t j = 0; j < mp; ++j) D[j] += q[c] * aT[c * mp + j];
        const float qq = w.qsq[t * w.SH + sh];
        for (int64_t k = 0; k < kp; ++k) y[k] = 0.0f;
        for (int64_t j = 0; j < a.m; ++j) {
          const float dist = qq + w.k.a2[h * mp + j] - 2.0f * D[j];
          const float kf = std::exp(dist * ninv) - w.k.mv[h * mp + j];
          const float* Ar = w.k.AT + (h * a.m + j) * kp;
          for (int64_t k = 0; k < kp; ++k) y[k] += kf * Ar[k];
        }
        uint64_t code = 0;
        for (int64_t k = 0; k < a.nbits; ++k) code |= static_cast<uint64_t>(y[k] > 0.0f) << k;
        store_code(a, ((s * a.B + b) * a.H + h) * a.N + n, code, y);
      }
    }
}

#if SHIFTADD_X86
// Transposes a 16 x 16 block of floats held in r[0..15] (rows) in place (columns).
SHIFTADD_AVX512 inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
}

// Distances of 16 tokens (lanes of qt[c]) to anchors [j0, j0 + J): kf[j] = exp(D * ninv) - mvec.
// anc: the anchors transposed (anc[c * mp + j], the prepared aT), so one base pointer serves all
// J broadcasts of a coordinate.
template <int J>
SHIFTADD_AVX512 void kernel_features16(const float* qt, int64_t d, const float* anc, int64_t mp, const float* a2,
                                       const float* mv, const float* qqs, float ninv_s, float* kf) {
  const __m512 qq = _mm512_load_ps(qqs), ninv = _mm512_set1_ps(ninv_s);
  __m512 acc[J];
#pragma GCC unroll 32
  for (int j = 0; j < J; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; ++c) {
    const __m512 qc = _mm512_load_ps(qt + 16 * c);
#pragma GCC unroll 32  // keeps the J accumulators in registers
    for (int j = 0; j < J; ++j) acc[j] = _mm512_fmadd_ps(qc, _mm512_set1_ps(anc[c * mp + j]), acc[j]);
  }
#pragma GCC unroll 32
  for (int j = 0; j < J; ++j) {
    const __m512 dist = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), acc[j], _mm512_add_ps(qq, _mm512_set1_ps(a2[j])));
    // dist >= 0 up to rounding: clamp the exponent to <= 0, exp512's domain.
    const __m512 e = exp512(_mm512_min_ps(_mm512_mul_ps(dist, ninv), _mm512_setzero_ps()));
    _mm512_store_ps(kf + 16 * j, _mm512_sub_ps(e, _mm512_set1_ps(mv[j])));
  }
}

constexpr int kMaxJ = 28;  // accumulators + the token vector + a broadcast stay within 32 zmm
using Features16 = void (*)(const float*, int64_t, const float*, int64_t, const float*, const float*, const float*,
                            float, float*);
constexpr auto kFeatures16 = row_kernels<Features16, kMaxJ>([]<int J>() { return &kernel_features16<J>; });

// Pass 2 on AVX-512: 16 tokens at a time, one per lane, so every anchor coordinate is one
// broadcast FMA for 16 tokens and a bit's 16 compares are one mask.
SHIFTADD_AVX512 void hash_block16(const KshArgs& a, const KshWork& w, int64_t b, int64_t s, int64_t h, int64_t n0,
                                  int rows) {
  const int64_t d = a.d, sh = s * a.H + h, mp = w.mp;
  alignas(64) float qt[256 * 16], kf[64 * 16], yb[64 * 16], qqs[16];
  // The block's normalised rows, transposed: qt[c][t].
  for (int64_t c0 = 0; c0 < d; c0 += 16) {
    const __mmask16 m = mask16(d - c0);
    __m512 r[16];
    for (int t = 0; t < 16; ++t)
      r[t] = t < rows ? _mm512_maskz_loadu_ps(m, w.qn + ((b * a.N + n0 + t) * w.SH + sh) * d + c0)
                      : _mm512_setzero_ps();
    transpose16(r);
    // Stored register by register: a variable-count loop over r[] compiles to a rep movs copy.
#pragma GCC unroll 16
    for (int c = 0; c < 16; ++c)
      if (c0 + c < d) _mm512_store_ps(qt + 16 * (c0 + c), r[c]);
  }
  for (int t = 0; t < 16; ++t) qqs[t] = t < rows ? w.qsq[(b * a.N + n0 + t) * w.SH + sh] : 0.0f;
  const float ninv = w.ninv[(s * a.B + b) * a.H + h];
  const float* anc = w.k.aT + h * d * mp;
  const float* a2 = w.k.a2 + h * mp;
  const float* mv = w.k.mv + h * mp;
  // Anchors in as few blocks as fit the registers (<= kMaxJ accumulators), sized evenly: a small
  // tail block would be one long dependent FMA chain (m = 25 as 24 + 1 cost 17% more).
  for (int64_t j = 0; j < a.m;) {
    const int64_t left = a.m - j, blocks = (left + kMaxJ - 1) / kMaxJ, jn = (left + blocks - 1) / blocks;
    kFeatures16[jn - 1](qt, d, anc + j, mp, a2 + j, mv + j, qqs, ninv, kf + 16 * j);
    j += jn;
  }
  // Bit k of the 16 codes: y_k = sum_j A[k, j] kf[j] > 0, OR-ed in as 1 << k per lane; four
  // bits at a time (four independent FMA chains).
  __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
  const float* A = a.A + h * a.nbits * a.m;
  for (int64_t k0 = 0; k0 < a.nbits; k0 += 4) {
    const int nk = static_cast<int>(std::min<int64_t>(4, a.nbits - k0));
    const float* Ak[4];
    for (int i = 0; i < 4; ++i) Ak[i] = A + (k0 + std::min(i, nk - 1)) * a.m;
    __m512 y[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t j = 0; j < a.m; ++j) {
      const __m512 f = _mm512_load_ps(kf + 16 * j);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) y[i] = _mm512_fmadd_ps(_mm512_set1_ps(Ak[i][j]), f, y[i]);
    }
    for (int i = 0; i < nk; ++i) {
      const int64_t k = k0 + i;
      const __mmask16 set = _mm512_cmp_ps_mask(y[i], _mm512_setzero_ps(), _CMP_GT_OQ);
      if (k < 32)
        lo = _mm512_mask_or_epi32(lo, set, lo, _mm512_set1_epi32(static_cast<int32_t>(1u << k)));
      else
        hi = _mm512_mask_or_epi32(hi, set, hi, _mm512_set1_epi32(static_cast<int32_t>(1u << (k - 32))));
      if (a.preact) _mm512_store_ps(yb + 16 * k, y[i]);
    }
  }
  alignas(64) uint32_t clo[16], chi[16];
  _mm512_store_si512(clo, lo);
  _mm512_store_si512(chi, hi);
  for (int t = 0; t < rows; ++t) {
    const int64_t i = ((s * a.B + b) * a.H + h) * a.N + n0 + t;
    if (a.nbits <= 16)
      static_cast<uint16_t*>(a.codes)[i] = static_cast<uint16_t>(clo[t]);
    else
      static_cast<uint64_t*>(a.codes)[i] = clo[t] | static_cast<uint64_t>(chi[t]) << 32;
    if (a.preact)
      for (int64_t k = 0; k < a.nbits; ++k) a.preact[i * a.nbits + k] = yb[16 * k + t];
  }
}

SHIFTADD_AVX512 void hash_avx512(const KshArgs& a, const KshWork& w, int64_t b, int64_t n0, int64_t n1, int64_t h0,
                                 int64_t h1) {
  for (int64_t s = 0; s < w.S; ++s)
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t n = n0; n < n1; n += 16)
        hash_block16(a, w, b, s, h, n, static_cast<int>(std::min<int64_t>(16, n1 - n)));
}
#endif

// ----- additive attention ------------------------------------------------------------------

int64_t groups(int64_t nbits) { return (nbits + 3) / 4; }
// Token parts per (image, head) in pass 1: enough tasks for every thread.
int64_t bucket_parts(int64_t BH, int threads) { return std::max<int64_t>(1, (threads + BH - 1) / BH); }
// Tokens pass 1 sorts by nibble at a time (offsets fit a uint8_t).
constexpr int64_t kBucketBlock = 256;

struct Additive {
  const AdditiveAttentionArgs* a;
  int64_t G, parts;  // nibble groups; token parts per (image, head) in pass 1
  float* buckets;    // [B, H, parts, G, 16, d]
  // Bits at or above nbits (which a hash never sets) are ignored, as ref:: does.
  SA_INLINE uint64_t code_in(const void* codes, int64_t b, int64_t h, int64_t n) const {
    const int64_t i = (b * a->H + h) * a->N + n;
    const uint64_t c =
        a->nbits <= 16 ? static_cast<const uint16_t*>(codes)[i] : static_cast<const uint64_t*>(codes)[i];
    return a->nbits < 64 ? c & ((uint64_t{1} << a->nbits) - 1) : c;
  }
  SA_INLINE const float* vrow(int64_t b, int64_t h, int64_t n) const {
    return a->v + b * a->v_bstride + n * a->v_ld + h * a->d;
  }
  float* bucket(int64_t b, int64_t h, int64_t part) const {
    return buckets + ((b * a->H + h) * parts + part) * G * kNibbles * a->d;
  }
};

SA_INLINE void add_row(float* dst, const float* src, int64_t d) {
  for (int64_t c = 0; c < d; ++c) dst[c] += src[c];
}

// Sums the V rows of a block's tokens order[0..count) (offsets from token n) into row: added to
// it, or (first) replacing it. Portable: an accumulator row.
struct SumRun {
  SA_INLINE void operator()(const Additive& ad, int64_t b, int64_t h, int64_t n, const uint8_t* order, int count,
                            bool first, float* row) const {
    const int64_t d = ad.a->d;
    float acc[256];
    if (first)
      std::fill_n(acc, d, 0.0f);
    else
      std::copy_n(row, d, acc);
    for (int i = 0; i < count; ++i) add_row(acc, ad.vrow(b, h, n + order[i]), d);
    std::copy_n(acc, d, row);
  }
};

// Pass 1: tokens [n0, n1) of (b, h) into the buckets of part p. Per block of tokens and nibble
// group, the tokens are counting-sorted by nibble, so each bucket is one run of additions into
// an accumulator and one store: adding token by token into the bucket rows in memory makes a
// token whose nibble repeats the previous one's wait on that store.
template <class Sum>
SA_INLINE void bucket_blocks(const Additive& ad, int64_t b, int64_t h, int64_t p, int64_t n0, int64_t n1, Sum sum) {
  const int64_t d = ad.a->d;
  float* bk = ad.bucket(b, h, p);
  uint8_t nib[kBucketBlock], order[kBucketBlock];
  uint64_t codes[kBucketBlock];
  for (int64_t blk = n0; blk == n0 || blk < n1; blk += kBucketBlock) {  // one pass when empty: zeros
    const int count = static_cast<int>(std::clamp<int64_t>(n1 - blk, 0, kBucketBlock));
    for (int t = 0; t < count; ++t) codes[t] = ad.code_in(ad.a->codes, b, h, blk + t);
    for (int64_t g = 0; g < ad.G; ++g) {
      int start[kNibbles + 1] = {};
      for (int t = 0; t < count; ++t) {
        nib[t] = static_cast<uint8_t>((codes[t] >> (4 * g)) & 15);
        ++start[nib[t] + 1];
      }
      for (int k = 0; k < kNibbles; ++k) start[k + 1] += start[k];
      int pos[kNibbles];
      std::copy_n(start, kNibbles, pos);
      for (int t = 0; t < count; ++t) order[pos[nib[t]]++] = static_cast<uint8_t>(t);
      for (int k = 0; k < kNibbles; ++k)
        sum(ad, b, h, blk, order + start[k], start[k + 1] - start[k], blk == n0, bk + (g * kNibbles + k) * d);
    }
  }
}

// The buckets of all parts of (b, h) summed into T, or a single part's read in place.
SA_INLINE const float* summed_buckets(const Additive& ad, int64_t b, int64_t h, float* T) {
  const float* sum = ad.bucket(b, h, 0);
  if (ad.parts == 1) return sum;
  const int64_t rows = ad.G * kNibbles * ad.a->d;
  std::copy_n(sum, rows, T);
  for (int64_t p = 1; p < ad.parts; ++p) add_row(T, ad.bucket(b, h, p), rows);
  return T;
}

// Pass 2: the subset-sum tables of (b, h), already divided by pi, into T [G, 16, d].
SA_INLINE void tables_body(const Additive& ad, int64_t b, int64_t h, float* T) {
  const int64_t d = ad.a->d;
  const float inv_pi = static_cast<float>(1.0 / M_PI);
  const float* sum = summed_buckets(ad, b, h, T);  // then KV rows, then subset sums
  for (int64_t g = 0; g < ad.G; ++g) {
    const float* Sg = sum + g * kNibbles * d;
    float* Tg = T + g * kNibbles * d;
    // KV row i: the 8 buckets whose nibble has bit i, summed column by column (adding them
    // row by row into kv[i] would chain every addition through a store).
    float kv[4][256];
    for (int i = 0; i < 4; ++i) {
      const float* r[8];
      for (int64_t nib = 1, k = 0; nib < kNibbles; ++nib)
        if (nib >> i & 1) r[k++] = Sg + nib * d;
      for (int64_t c = 0; c < d; ++c)
        kv[i][c] = ((((((r[0][c] + r[1][c]) + r[2][c]) + r[3][c]) + r[4][c]) + r[5][c]) + r[6][c]) + r[7][c];
    }
    std::fill_n(Tg, d, 0.0f);
    for (int64_t sub = 1; sub < kNibbles; ++sub) {
      const float* prev = Tg + (sub & (sub - 1)) * d;
      const float* row = kv[__builtin_ctzll(static_cast<uint64_t>(sub))];
      float* dst = Tg + sub * d;
      for (int64_t c = 0; c < d; ++c) dst[c] = prev[c] + row[c] * inv_pi;
    }
  }
}

// Pass 2, then tokens [n0, n1) of (b, h); Z is scratch of d floats.
SA_INLINE void out_body(const Additive& ad, int64_t b, int64_t h, int64_t n0, int64_t n1, const float* T, float* Z) {
  const AdditiveAttentionArgs& a = *ad.a;
  const int64_t d = a.d;
  const float* taps = a.taps + h * 9;
  const void* qcodes = a.qcodes ? a.qcodes : a.codes;
  for (int64_t n = n0; n < n1; ++n) {
    const uint64_t code = ad.code_in(qcodes, b, h, n);
    const float* v = ad.vrow(b, h, n);
    for (int64_t c = 0; c < d; ++c) Z[c] = 0.5f * v[c];
    for (int64_t g = 0; g < ad.G; ++g) add_row(Z, T + (g * kNibbles + ((code >> (4 * g)) & 15)) * d, d);
    const float norm2 = dot16(Z, Z, d);
    const float inv = norm2 > 0.0f ? 1.0f / std::sqrt(norm2) : 1.0f;
    for (int64_t c = 0; c < d; ++c) Z[c] *= inv;
    for (int64_t t = 0; t < 9; ++t) {
      const int64_t src = n - 4 + t;
      if (src < 0 || src >= a.N) continue;
      const float tw = taps[t];
      const float* vs = ad.vrow(b, h, src);
      for (int64_t c = 0; c < d; ++c) Z[c] += tw * vs[c];
    }
    std::memcpy(a.out + b * a.o_bstride + n * a.o_ld + h * d, Z, sizeof(float) * d);
  }
}

#if SHIFTADD_X86
// 1 / sqrt(x) for x > 0: the 14-bit estimate and one Newton step (~1 ulp; no divide or sqrt on
// the per-token path).
SHIFTADD_AVX512 inline float rsqrt_nr(float x) {
  const __m128 v = _mm_set_ss(x);
  const __m128 r = _mm_rsqrt14_ss(v, v);
  const __m128 rr = _mm_mul_ss(_mm_mul_ss(r, r), v);
  return _mm_cvtss_f32(_mm_mul_ss(_mm_mul_ss(_mm_set_ss(0.5f), r), _mm_sub_ss(_mm_set_ss(3.0f), rr)));
}

// AVX-512 passes for head dims of 16, 32, 48 or 64 (NV vectors), each row held in registers.
// Normalise: 16 tokens of one (stream, head) at a time, so their 16 squared norms come out of one
// transpose as a vector (no per-row horizontal sum) and the 1/sqrt is one vector op.
template <int NV>
SHIFTADD_AVX512 void normalise_nv(const KshArgs& a, const KshWork& w, int64_t b, int64_t chunk, int64_t n0,
                                  int64_t n1, int64_t h0, int64_t h1) {
  constexpr int64_t d = 16 * NV;
  float* ps = w.psum + (b * w.chunks + chunk) * w.SH * (d + 1);
  for (int64_t s = 0; s < w.S; ++s)
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t sh = s * a.H + h;
      __m512 acc[NV];
      for (int v = 0; v < NV; ++v) acc[v] = _mm512_setzero_ps();
      float qq_sum = 0.0f;
      for (int64_t nb = n0; nb < n1; nb += 16) {
        const int rows = static_cast<int>(std::min<int64_t>(16, n1 - nb));
        const float* x0 = a.qk + s * a.stream_offset + b * a.qk_bstride + nb * a.qk_ld + h * d;
        __m512 ss[16];
        for (int t = 0; t < 16; ++t) {
          ss[t] = _mm512_setzero_ps();
          if (t < rows)
            for (int v = 0; v < NV; ++v) {
              const __m512 x = _mm512_loadu_ps(x0 + t * a.qk_ld + 16 * v);
              ss[t] = _mm512_fmadd_ps(x, x, ss[t]);
            }
        }
        transpose16(ss);  // ss[c] lane t: partial sum c of token t
        for (int half = 8; half > 0; half /= 2)
          for (int i = 0; i < half; ++i) ss[i] = _mm512_add_ps(ss[i], ss[i + half]);
        const __m512 sum = ss[0];
        const __mmask16 pos = _mm512_cmp_ps_mask(sum, _mm512_setzero_ps(), _CMP_GT_OQ);
        // 1 / sqrt: the 14-bit estimate and one Newton step (~1 ulp), 0 for a zero row.
        const __m512 r = _mm512_maskz_rsqrt14_ps(pos, sum);
        const __m512 inv = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), r),
                                         _mm512_fnmadd_ps(_mm512_mul_ps(r, r), sum, _mm512_set1_ps(3.0f)));
        const __m512 qq = _mm512_mul_ps(_mm512_mul_ps(sum, inv), inv);  // |q / |q||^2
        alignas(64) float invs[16], qqs[16];
        _mm512_store_ps(invs, inv);
        _mm512_store_ps(qqs, qq);
        qq_sum += _mm512_mask_reduce_add_ps(mask16(rows), qq);
        for (int t = 0; t < rows; ++t) {
          const int64_t tok = b * a.N + nb + t;
          const __m512 it = _mm512_set1_ps(invs[t]);
          float* qn = w.qn + (tok * w.SH + sh) * d;
          for (int v = 0; v < NV; ++v) {
            const __m512 q = _mm512_mul_ps(_mm512_loadu_ps(x0 + t * a.qk_ld + 16 * v), it);
            _mm512_storeu_ps(qn + 16 * v, q);
            acc[v] = _mm512_add_ps(acc[v], q);
          }
          w.qsq[tok * w.SH + sh] = qqs[t];
        }
      }
      float* out = ps + sh * (d + 1);
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + 16 * v, acc[v]);
      out[d] = qq_sum;
    }
}

template <int NV>
SHIFTADD_AVX512 void out_tokens_nv(const Additive& ad, int64_t b, int64_t h, int64_t n0, int64_t n1, const float* T) {
  const AdditiveAttentionArgs& a = *ad.a;
  constexpr int64_t d = 16 * NV;
  const float* taps = a.taps + h * 9;
  const void* qcodes = a.qcodes ? a.qcodes : a.codes;
  for (int64_t n = n0; n < n1; ++n) {
    const uint64_t code = ad.code_in(qcodes, b, h, n);
    const float* v = ad.vrow(b, h, n);
    __m512 z[NV];
    for (int i = 0; i < NV; ++i) z[i] = _mm512_mul_ps(_mm512_set1_ps(0.5f), _mm512_loadu_ps(v + 16 * i));
    for (int64_t g = 0; g < ad.G; ++g) {
      const float* row = T + (g * kNibbles + ((code >> (4 * g)) & 15)) * d;
      for (int i = 0; i < NV; ++i) z[i] = _mm512_add_ps(z[i], _mm512_loadu_ps(row + 16 * i));
    }
    __m512 nn = _mm512_setzero_ps();
    for (int i = 0; i < NV; ++i) nn = _mm512_fmadd_ps(z[i], z[i], nn);
    const float norm2 = _mm512_reduce_add_ps(nn);
    const __m512 inv = _mm512_set1_ps(norm2 > 0.0f ? rsqrt_nr(norm2) : 1.0f);
    for (int i = 0; i < NV; ++i) z[i] = _mm512_mul_ps(z[i], inv);
    for (int64_t t = 0; t < 9; ++t) {
      const int64_t src = n - 4 + t;
      if (src < 0 || src >= a.N) continue;
      const __m512 tw = _mm512_set1_ps(taps[t]);
      const float* vs = ad.vrow(b, h, src);
      for (int i = 0; i < NV; ++i) z[i] = _mm512_fmadd_ps(tw, _mm512_loadu_ps(vs + 16 * i), z[i]);
    }
    float* out = a.out + b * a.o_bstride + n * a.o_ld + h * d;
    for (int i = 0; i < NV; ++i) _mm512_storeu_ps(out + 16 * i, z[i]);
  }
}
#endif

// ----- per-ISA instantiations ----------------------------------------------------------------

#define SA_DEFINE(SUFFIX, ATTR)                                                                          \
  ATTR void normalise_##SUFFIX(const KshArgs& a, const KshWork& w, int64_t b, int64_t ch, int64_t n0,    \
                               int64_t n1, int64_t h0, int64_t h1) {                                     \
    normalise_body(a, w, b, ch, n0, n1, h0, h1);                                                         \
  }                                                                                                      \
  ATTR void hash_generic_##SUFFIX(const KshArgs& a, const KshWork& w, int64_t b, int64_t n0, int64_t n1,  \
                                  int64_t h0, int64_t h1) {                                              \
    hash_body(a, w, b, n0, n1, h0, h1);                                                                  \
  }                                                                                                      \
  ATTR void bucket_##SUFFIX(const Additive& ad, int64_t b, int64_t h, int64_t p, int64_t n0, int64_t n1) { \
    bucket_blocks(ad, b, h, p, n0, n1, SumRun{});                                                        \
  }                                                                                                      \
  ATTR void out_##SUFFIX(const Additive& ad, int64_t b, int64_t h, int64_t n0, int64_t n1, float* T,     \
                         float* Z) {                                                                     \
    tables_body(ad, b, h, T);                                                                            \
    out_body(ad, b, h, n0, n1, T, Z);                                                                    \
  }

SA_DEFINE(scalar, )
#if SHIFTADD_X86
SA_DEFINE(avx2, SHIFTADD_AVX2)
SA_DEFINE(avx512, SHIFTADD_AVX512)
#undef SA_DEFINE
#endif

#if SHIFTADD_X86
// A bucket's run of V rows summed in NV registers.
template <int NV>
struct SumRunNv {
  SHIFTADD_AVX512 void operator()(const Additive& ad, int64_t b, int64_t h, int64_t n, const uint8_t* order, int count,
                                  bool first, float* row) const {
    __m512 acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(row + 16 * v);
    for (int i = 0; i < count; ++i) {
      const float* x = ad.vrow(b, h, n + order[i]);
      for (int v = 0; v < NV; ++v) acc[v] = _mm512_add_ps(acc[v], _mm512_loadu_ps(x + 16 * v));
    }
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(row + 16 * v, acc[v]);
  }
};

template <int NV>
SHIFTADD_AVX512 void bucket_nv(const Additive& ad, int64_t b, int64_t h, int64_t p, int64_t n0, int64_t n1) {
  bucket_blocks(ad, b, h, p, n0, n1, SumRunNv<NV>{});
}

// Pass 2's tables, one 16-column slice at a time: the slice's 4 KV vectors and 16 subset sums
// stay in registers.
template <int NV>
SHIFTADD_AVX512 void tables_nv(const Additive& ad, int64_t b, int64_t h, float* T) {
  constexpr int64_t d = 16 * NV;
  const __m512 inv_pi = _mm512_set1_ps(static_cast<float>(1.0 / M_PI));
  const float* sum = summed_buckets(ad, b, h, T);
  for (int64_t g = 0; g < ad.G; ++g) {
    const float* Sg = sum + g * kNibbles * d;
    float* Tg = T + g * kNibbles * d;
    for (int v = 0; v < NV; ++v) {
      __m512 kv[4];
      for (int i = 0; i < 4; ++i) {
        kv[i] = _mm512_setzero_ps();
#pragma GCC unroll 16
        for (int nib = 1; nib < kNibbles; ++nib)
          if (nib >> i & 1) kv[i] = _mm512_add_ps(kv[i], _mm512_loadu_ps(Sg + nib * d + 16 * v));
      }
      __m512 t[kNibbles];
      t[0] = _mm512_setzero_ps();
      _mm512_storeu_ps(Tg + 16 * v, t[0]);
#pragma GCC unroll 16
      for (int sub = 1; sub < kNibbles; ++sub) {
        t[sub] = _mm512_fmadd_ps(kv[__builtin_ctz(sub)], inv_pi, t[sub & (sub - 1)]);
        _mm512_storeu_ps(Tg + sub * d + 16 * v, t[sub]);
      }
    }
  }
}

template <int NV>
SHIFTADD_AVX512 void out_nv(const Additive& ad, int64_t b, int64_t h, int64_t n0, int64_t n1, float* T, float*) {
  tables_nv<NV>(ad, b, h, T);
  out_tokens_nv<NV>(ad, b, h, n0, n1, T);
}
#endif

struct Fns {
  void (*normalise)(const KshArgs&, const KshWork&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);
  void (*hash)(const KshArgs&, const KshWork&, int64_t, int64_t, int64_t, int64_t, int64_t);
  void (*bucket)(const Additive&, int64_t, int64_t, int64_t, int64_t, int64_t);
  void (*out)(const Additive&, int64_t, int64_t, int64_t, int64_t, float*, float*);
};

// The passes for head dim d and m anchors on this machine's SIMD path.
Fns fns(int64_t d, int64_t m) {
#if SHIFTADD_X86
  switch (isa()) {
    case Isa::Avx512: {
      // Head dims 16..64 in registers; the blocked hash keeps a block's features for <= 64 anchors.
      Fns f{normalise_avx512, m > 64 ? hash_generic_avx512 : hash_avx512, bucket_avx512, out_avx512};
      switch (d) {
        case 16: f.normalise = normalise_nv<1>, f.bucket = bucket_nv<1>, f.out = out_nv<1>; break;
        case 32: f.normalise = normalise_nv<2>, f.bucket = bucket_nv<2>, f.out = out_nv<2>; break;
        case 48: f.normalise = normalise_nv<3>, f.bucket = bucket_nv<3>, f.out = out_nv<3>; break;
        case 64: f.normalise = normalise_nv<4>, f.bucket = bucket_nv<4>, f.out = out_nv<4>; break;
        default: break;
      }
      return f;
    }
    case Isa::Avx2:
      return {normalise_avx2, hash_generic_avx2, bucket_avx2, out_avx2};
    case Isa::Scalar:
      break;
  }
#endif
  return {normalise_scalar, hash_generic_scalar, bucket_scalar, out_scalar};
}

// Runs fn(tid, t) for tasks [0, n): inline when the work is small, else over the pool.
template <class F>
void run_tasks(ThreadPool& pool, int64_t n, double work, F&& fn) {
  if (pool.size() == 1 || n == 1 || work < 2e4) {
    for (int64_t t = 0; t < n; ++t) fn(0, t);
    return;
  }
  pool.parallel_tasks(n, fn);
}

}  // namespace

size_t ksh_work_bytes(const KshArgs& a) {
  size_t bytes = 0;
  KshArgs unprepared = a;
  unprepared.prepared = nullptr;
  ksh_layout(unprepared, nullptr, &bytes);
  return bytes;
}

size_t ksh_prepared_bytes(const KshArgs& a) {
  Carve c{nullptr};
  consts_layout(a, c);
  return c.off;
}

void ksh_prepare(const KshArgs& a, void* out) {
  Carve c{static_cast<std::byte*>(out)};
  prepare_consts(a, consts_layout(a, c));
}

void ksh_hash(const KshArgs& a, ThreadPool& pool) {
  if (a.N <= 0 || a.B <= 0) return;
  if (!a.work) throw Error("ksh_hash: needs a work buffer (ksh_work_bytes())");
  if (a.nbits > 64 || a.d > 256) throw Error("ksh_hash: at most 64 bits and head dim 256");
  const KshWork w = ksh_layout(a, a.work);
  const Fns f = fns(a.d, a.m);
  if (!a.prepared) prepare_consts(a, w.k);
  const double per_token = static_cast<double>(w.SH) * a.d;
  const int64_t tasks = a.B * w.chunks;
  run_tasks(pool, tasks, per_token * a.B * a.N, [&](int, int64_t t) {
    const int64_t b = t / w.chunks, c = t % w.chunks;
    f.normalise(a, w, b, c, c * kChunk, std::min(a.N, (c + 1) * kChunk), 0, a.H);
  });
  sigmas(a, w, 0, a.B, 0, a.H);
  run_tasks(pool, tasks, per_token * (a.m + a.nbits) * a.B * a.N, [&](int, int64_t t) {
    const int64_t b = t / w.chunks, c = t % w.chunks;
    f.hash(a, w, b, c * kChunk, std::min(a.N, (c + 1) * kChunk), 0, a.H);
  });
}

size_t additive_attention_scratch_bytes(const AdditiveAttentionArgs& a) {
  return sizeof(float) * static_cast<size_t>(groups(a.nbits) * kNibbles * a.d + a.d);
}

size_t additive_attention_work_bytes(const AdditiveAttentionArgs& a, int threads) {
  const int64_t parts = bucket_parts(std::max<int64_t>(1, a.B * a.H), threads);
  return sizeof(float) * static_cast<size_t>(a.B * a.H * parts * groups(a.nbits) * kNibbles * a.d);
}

void additive_attention(const AdditiveAttentionArgs& a, ThreadPool& pool) {
  if (a.N <= 0 || a.B <= 0) return;
  if (!a.work) throw Error("additive_attention: needs a work buffer (additive_attention_work_bytes())");
  if (a.d > 256 || a.nbits > 64) throw Error("additive_attention: at most 64 bits and head dim 256");
  const Fns f = fns(a.d, 0);
  const int64_t BH = a.B * a.H;
  Additive ad{&a, groups(a.nbits), bucket_parts(BH, pool.size()), static_cast<float*>(a.work)};
  const double work = static_cast<double>(BH) * a.N * a.d * ad.G;
  // Output tasks: enough token chunks per (image, head) to feed every thread, each at least
  // 64 tokens (each task rebuilds its tables: 16 * G rows).
  const int64_t chunks = std::clamp<int64_t>(a.N / 64, 1, (pool.size() + BH - 1) / BH * 2);
  if (ad.parts == 1 && chunks == 1) {  // both passes have one task per (image, head): one region
    run_tasks(pool, BH, work * 5, [&](int tid, int64_t bh) {
      float* T = pool.scratch(tid);
      f.bucket(ad, bh / a.H, bh % a.H, 0, 0, a.N);
      f.out(ad, bh / a.H, bh % a.H, 0, a.N, T, T + ad.G * kNibbles * a.d);
    });
    return;
  }
  run_tasks(pool, BH * ad.parts, work, [&](int, int64_t t) {
    const int64_t bh = t / ad.parts, p = t % ad.parts;
    f.bucket(ad, bh / a.H, bh % a.H, p, a.N * p / ad.parts, a.N * (p + 1) / ad.parts);
  });
  run_tasks(pool, BH * chunks, work * 4, [&](int tid, int64_t t) {
    const int64_t bh = t / chunks, c = t % chunks;
    float* T = pool.scratch(tid);
    f.out(ad, bh / a.H, bh % a.H, a.N * c / chunks, a.N * (c + 1) / chunks, T, T + ad.G * kNibbles * a.d);
  });
}

}  // namespace shiftadd::kernels::cpu
