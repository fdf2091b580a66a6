// Fused multi-head attention. One task = one (batch, head, block of query rows):
//   S = scale * Q_blk K^T   (GEMM microkernels, into this thread's scratch)
//   P = softmax(S) by rows  (max-subtracted, vectorized exp)
//   O_blk = P V            (GEMM microkernels, straight into the output rows)
// so the Nq x Nkv score matrix never exists whole and every task is independent.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/thread_pool.h"
#include "shiftadd/error.h"

namespace shiftadd::kernels::cpu {
namespace {

constexpr int64_t kMaxQueryBlock = 64;  // query rows per task; bounds the score scratch

// Scores rows are padded to 16 floats so each row starts 64-byte aligned.
int64_t score_ld(const AttentionArgs& a) { return (a.Nkv + 15) / 16 * 16; }

using SoftmaxRow = void (*)(float* s, int64_t n);

void softmax_row_scalar(float* s, int64_t n) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
}

#if SHIFTADD_X86
SHIFTADD_AVX512 void softmax_row_avx512(float* s, int64_t n) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 16)
    mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, mask16(n - j), s + j));
  const __m512 vmax = _mm512_set1_ps(hmax512(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = mask16(n - j);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmax));
    sum = _mm512_mask_add_ps(sum, m, sum, e);
    _mm512_mask_storeu_ps(s + j, m, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / hsum512(sum));
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = mask16(n - j);
    _mm512_mask_storeu_ps(s + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), inv));
  }
}

// Full vectors use plain loads/stores (AMD's masked stores are microcoded); the tail is masked,
// its lanes past n loaded as -inf for the max and zeroed for the sum.
SHIFTADD_AVX2 void softmax_row_avx2(float* s, int64_t n) {
  const int64_t full = n / 8 * 8;
  const __m256i tail = mask256(n - full);
  const __m256 tail_f = _mm256_castsi256_ps(tail);
  __m256 mx =
      _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(s + full, tail), tail_f);
  for (int64_t j = 0; j < full; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + j));
  const __m256 vmax = _mm256_set1_ps(hmax256(mx));
  __m256 sum = _mm256_setzero_ps();
  for (int64_t j = 0; j < full; j += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmax));
    sum = _mm256_add_ps(sum, e);
    _mm256_storeu_ps(s + j, e);
  }
  if (full < n) {
    const __m256 e =
        _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(s + full, tail), vmax)), tail_f);
    sum = _mm256_add_ps(sum, e);
    _mm256_maskstore_ps(s + full, tail, e);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / hsum256(sum));
  for (int64_t j = 0; j < full; j += 8)
    _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), inv));
  if (full < n)
    _mm256_maskstore_ps(s + full, tail, _mm256_mul_ps(_mm256_maskload_ps(s + full, tail), inv));
}
#endif

SoftmaxRow softmax_row() {
#if SHIFTADD_X86
  if (isa() == Isa::Avx512) return softmax_row_avx512;
  if (isa() == Isa::Avx2) return softmax_row_avx2;
#endif
  return softmax_row_scalar;
}

}  // namespace

size_t attention_scratch_bytes(const AttentionArgs& a) {
  return gemm_scratch_bytes() + static_cast<size_t>(kMaxQueryBlock * score_ld(a)) * sizeof(float);
}

void attention(const AttentionArgs& a, ThreadPool& pool) {
  if (a.B <= 0 || a.H <= 0 || a.Nq <= 0) return;
  if (a.Nkv <= 0) throw Error("attention: no keys (Nkv = 0)");
  if (pool.scratch_bytes() < attention_scratch_bytes(a))
    throw Error("attention: thread pool scratch not reserved (need attention_scratch_bytes())");
  const SoftmaxRow softmax = softmax_row();
  const int64_t ldS = score_ld(a);
  const int64_t blocks = (a.Nq + kMaxQueryBlock - 1) / kMaxQueryBlock;
  const int64_t qblock = (a.Nq + blocks - 1) / blocks;  // equal blocks, no short tail
  pool.parallel_tasks(a.B * a.H * blocks, [&](int tid, int64_t task) {
    const int64_t b = task / (a.H * blocks), h = task / blocks % a.H;
    const int64_t q0 = task % blocks * qblock, rows = std::min(qblock, a.Nq - q0);
    float* scratch = pool.scratch(tid);
    float* S = scratch + gemm_scratch_bytes() / sizeof(float);

    GemmArgs scores;
    scores.M = rows;
    scores.N = a.Nkv;
    scores.K = a.d;
    scores.A = a.q + b * a.q_bstride + q0 * a.q_ld + h * a.d;
    scores.lda = a.q_ld;
    scores.B = a.k + b * a.k_bstride + h * a.d;
    scores.ldb = a.k_ld;
    scores.b_is_nk = true;
    scores.C = S;
    scores.ldc = ldS;
    scores.alpha = a.scale;
    gemm_serial(scores, scratch);

    for (int64_t r = 0; r < rows; ++r) softmax(S + r * ldS, a.Nkv);

    GemmArgs weighted;
    weighted.M = rows;
    weighted.N = a.d;
    weighted.K = a.Nkv;
    weighted.A = S;
    weighted.lda = ldS;
    weighted.B = a.v + b * a.v_bstride + h * a.d;
    weighted.ldb = a.v_ld;
    weighted.b_is_nk = false;
    weighted.C = a.out + b * a.o_bstride + q0 * a.o_ld + h * a.d;
    weighted.ldc = a.o_ld;
    gemm_serial(weighted, scratch);
  });
}

}  // namespace shiftadd::kernels::cpu
