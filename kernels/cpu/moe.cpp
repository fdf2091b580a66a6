// MoE routing helpers (spec section 4) on the CPU: router logits and top-1 choice, the O(M)
// per-expert plan (the experts read and write their rows through it).
#include <algorithm>
#include <atomic>
#include <cstring>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
#include "kernels/shift_kernels.h"

namespace shiftadd::kernels::cpu {
namespace {

// Dot product with 8 independent partial sums (order fixed, independent of threads).
float dot8(const float* a, const float* b, int64_t K) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    for (int i = 0; i < 8; ++i) s[i] += a[k + i] * b[k + i];
  for (; k < K; ++k) s[k & 7] += a[k] * b[k];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void route(const RouterArgs& a, int64_t m, float l0, float l1) {
  l0 += a.bg ? a.bg[0] : 0.0f;
  l1 += a.bg ? a.bg[1] : 0.0f;
  if (a.logits) a.logits[2 * m] = l0, a.logits[2 * m + 1] = l1;
  a.expert[m] = l1 > l0 ? 1 : 0;
}

void router_rows_scalar(const RouterArgs& a, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* x = a.x + m * a.ldx;
    route(a, m, dot8(a.Wg, x, a.K), dot8(a.Wg + a.K, x, a.K));
  }
}

#if SHIFTADD_X86
// The 8 sums of acc (row r, gate g) in one tree over all of them, not 8 horizontal reductions:
// lane 4r + g of the result holds row r's logit g (lanes 4r + 2, 4r + 3 are unused).
SHIFTADD_AVX512 inline __m512 sum8(const __m512 acc[4][2]) {
  // 512 -> 256 bits per vector, two vectors per register: z[r] = row r's gate 0 | gate 1.
  __m512 z[4];
  for (int r = 0; r < 4; ++r)
    z[r] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[r][0], acc[r][1], 0x44),   // 128-bit blocks 0, 1 of each
                         _mm512_shuffle_f32x4(acc[r][0], acc[r][1], 0xEE));  // blocks 2, 3 of each
  // 256 -> 128 bits: w[i] blocks = rows 2i g0, 2i g1, 2i+1 g0, 2i+1 g1.
  __m512 w[2];
  for (int i = 0; i < 2; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], 0xDD));
  // 4 lanes -> 1 within each 128-bit block (w[0] rows 0, 1; w[1] rows 2, 3).
  const __m512 u = _mm512_add_ps(_mm512_unpacklo_ps(w[0], w[1]), _mm512_unpackhi_ps(w[0], w[1]));
  const __m512 v = _mm512_add_ps(u, _mm512_permute_ps(u, 0x4E));
  // v block b: lane 0 = sum of w[0] block b, lane 1 = sum of w[1] block b. Blocks of w[0]: row 0
  // g0, row 0 g1, row 1 g0, row 1 g1; of w[1]: the same for rows 2 and 3.
  const __m512i order = _mm512_set_epi32(0, 0, 13, 9, 0, 0, 5, 1, 0, 0, 12, 8, 0, 0, 4, 0);
  return _mm512_permutexvar_ps(order, v);
}

// Prefetch distance: at least this many rows and this many bytes ahead (a DRAM miss outlasts
// eight short rows), and on past the end of the chunk into the next one.
constexpr int64_t kRouterPrefetchRows = 8, kRouterPrefetchBytes = 4096;

// Four rows at a time: both gate rows are loaded once per 16 columns for all four.
SHIFTADD_AVX512 void router_rows_avx512(const RouterArgs& a, int64_t m0, int64_t m1) {
  const int64_t ahead =
      std::max<int64_t>(kRouterPrefetchRows, kRouterPrefetchBytes / std::max<int64_t>(4 * a.ldx, 1));
  for (int64_t m = m0; m < m1; m += 4) {
    const int rows = static_cast<int>(std::min<int64_t>(4, m1 - m));
    __m512 acc[4][2];
    for (auto& r : acc) r[0] = r[1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < a.K; k += 16) {
      const __mmask16 mk = mask16(a.K - k);
      const __m512 w0 = _mm512_maskz_loadu_ps(mk, a.Wg + k), w1 = _mm512_maskz_loadu_ps(mk, a.Wg + a.K + k);
      for (int r = 0; r < 4; ++r) {
        // The router is the first to read x (often straight from DRAM): fetch the rows a few
        // groups ahead, which the hardware prefetcher does not do for four interleaved streams.
        if (m + r + ahead < a.M)
          _mm_prefetch(reinterpret_cast<const char*>(a.x + (m + r + ahead) * a.ldx + k), _MM_HINT_T0);
        const __m512 x = _mm512_maskz_loadu_ps(mk, a.x + (m + std::min(r, rows - 1)) * a.ldx + k);
        acc[r][0] = _mm512_fmadd_ps(x, w0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(x, w1, acc[r][1]);
      }
    }
    alignas(64) float sums[16];
    _mm512_store_ps(sums, sum8(acc));
    for (int r = 0; r < rows; ++r) route(a, m + r, sums[4 * r], sums[4 * r + 1]);
  }
}

// The plan on AVX-512: 16 rows at a time, each expert's row indices compressed out of one vector
// (a branch per row mispredicts on about every other row of a balanced router).
SHIFTADD_AVX512 void plan_avx512(int64_t M, const uint8_t* expert, int32_t* perm, int64_t counts[2]) {
  int64_t n0 = 0;
  for (int64_t m = 0; m < M; m += 16) {
    const __mmask16 valid = mask16(M - m);
    const __m128i e = _mm_maskz_loadu_epi8(valid, expert + m);
    n0 += _mm_popcnt_u32(_mm_mask_cmpeq_epi8_mask(valid, e, _mm_setzero_si128()));
  }
  int64_t i0 = 0, i1 = n0;
  const __m512i step = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t m = 0; m < M; m += 16) {
    const __mmask16 valid = mask16(M - m);
    const __m128i e = _mm_maskz_loadu_epi8(valid, expert + m);
    const __mmask16 zero = _mm_mask_cmpeq_epi8_mask(valid, e, _mm_setzero_si128()), one = valid & ~zero;
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(m)), step);
    const int c0 = _mm_popcnt_u32(zero), c1 = _mm_popcnt_u32(one);
    _mm512_mask_storeu_epi32(perm + i0, mask16(c0), _mm512_maskz_compress_epi32(zero, idx));
    _mm512_mask_storeu_epi32(perm + i1, mask16(c1), _mm512_maskz_compress_epi32(one, idx));
    i0 += c0, i1 += c1;
  }
  counts[0] = n0, counts[1] = M - n0;
}
#endif

using RouterRows = void (*)(const RouterArgs&, int64_t, int64_t);
RouterRows router_rows() {
#if SHIFTADD_X86
  if (isa() == Isa::Avx512) return router_rows_avx512;
#endif
  return router_rows_scalar;
}

// Fused MoE: at most this large a dense weight (floats; every row block streams it again, and
// column slices make each thread quantize every shift row: larger layers run the experts as
// separate parallel kernels, measured as fast or faster). Rows per block: fused_rows, up to
// kFusedRows while the block's input stays within kFusedBlockBytes of L2 (longer blocks: fewer
// stalls between a block's memory-bound router and its compute-bound experts).
constexpr int64_t kFusedRows = 512, kFusedBlockBytes = 512 * 1024, kFusedMaxWeight = 32 * 1024;
// Columns per task in the column split: the shift panel width (and a multiple of every GEMM NR).
constexpr int64_t kFusedCols = 32;
// Multiply-accumulates per extra thread below which a column split stays on one thread.
constexpr double kFusedMinMacsPerThread = 1 << 18;

int64_t fused_rows(const MoeFusedArgs& a) {
  return std::clamp<int64_t>(kFusedBlockBytes / std::max<int64_t>(4 * a.router.K, 1), 64, kFusedRows);
}
bool row_blocks(const MoeFusedArgs& a, int threads) { return a.router.M >= fused_rows(a) * std::max(threads, 2); }

// The dense expert's arguments restricted to output columns [n0, n1).
GemmArgs columns(GemmArgs d, int64_t n0, int64_t n1) {
  d.N = n1 - n0;
  if (d.B) d.B += d.b_is_nk ? n0 * d.ldb : n0;
  if (d.B_codes) d.B_codes += n0 * d.ldb;
  if (d.B_packed) d.B_packed += n0 * d.K;  // n0: a multiple of kFusedCols, so of the panel width
  d.C += n0;
  if (d.epi.scale) d.epi.scale += n0;
  if (d.epi.bias) d.epi.bias += n0;
  if (d.epi.residual) d.epi.residual += n0;
  return d;
}

// Both experts over rows perm[0, c[0]) (dense) and perm[c[0], c[0] + c[1]) (shift), columns
// [n0, n1), on one thread's scratch.
void experts(const MoeFusedArgs& a, const int32_t* perm, const int64_t c[2], int64_t n0, int64_t n1, void* scratch) {
  if (c[0] > 0) {
    GemmArgs d = columns(a.dense, n0, n1);
    d.M = c[0];
    d.a_rows = d.c_rows = perm;
    gemm_serial(d, static_cast<float*>(scratch));
  }
  if (c[1] > 0) {
    ShiftLinearArgs s = a.shift;
    s.M = c[1];
    s.rows = perm + c[0];
    shift_linear_fast_serial(s, static_cast<std::byte*>(scratch), n0, n1);
  }
}

}  // namespace

void moe_router(const RouterArgs& a, ThreadPool& pool) {
  const RouterRows rows = router_rows();
  parallel_chunks(pool, a.M, 2 * a.K, 65536, [&](int64_t m0, int64_t m1) { rows(a, m0, m1); });
}

bool moe_fused_suits(const MoeFusedArgs& a) {
  return a.shift.mode == ShiftMode::Fast && a.dense.N * a.dense.K <= kFusedMaxWeight;
}

void moe_linear_fused(const MoeFusedArgs& a, int64_t counts[2], ThreadPool& pool) {
  const int64_t M = a.router.M, N = a.dense.N;
  const int threads = pool.size();
  if (!row_blocks(a, threads)) {
    // Few rows: route and plan them all, then one task per slice of columns runs both experts
    // on every row (each quantizes the shift expert's rows again: cheap next to the GEMMs).
    moe_router(a.router, pool);
    moe_plan(M, a.router.expert, a.perm, counts);
    const double macs = static_cast<double>(M) * N * std::max<int64_t>(a.dense.K, 1);
    const int64_t panels = (N + kFusedCols - 1) / kFusedCols;
    const int64_t slices = std::clamp<int64_t>(static_cast<int64_t>(macs / kFusedMinMacsPerThread), 1,
                                               std::min<int64_t>(threads, panels));
    auto task = [&](int tid, int64_t t) {
      experts(a, a.perm, counts, std::min(N, panels * t / slices * kFusedCols),
              std::min(N, panels * (t + 1) / slices * kFusedCols), pool.scratch(tid));
    };
    if (slices == 1)
      task(0, 0);
    else
      pool.parallel_tasks(slices, task);
    return;
  }
  // Blocks of about fused_rows, a whole number per thread.
  const int64_t blocks = std::max<int64_t>(1, (M / fused_rows(a) + threads - 1) / threads * threads);
  const RouterRows route_rows = router_rows();
  std::atomic<int64_t> to_dense{0};
  pool.parallel_tasks(blocks, [&](int tid, int64_t blk) {
    const int64_t m0 = M * blk / blocks, m1 = M * (blk + 1) / blocks;
    route_rows(a.router, m0, m1);
    int64_t c[2];
    moe_plan(m1 - m0, a.router.expert + m0, a.perm + m0, c);
    for (int64_t i = m0; i < m1; ++i) a.perm[i] += static_cast<int32_t>(m0);
    experts(a, a.perm + m0, c, 0, N, pool.scratch(tid));
    to_dense.fetch_add(c[0], std::memory_order_relaxed);
  });
  counts[0] = to_dense.load();
  counts[1] = M - counts[0];
}

void moe_plan(int64_t M, const uint8_t* expert, int32_t* perm, int64_t counts[2]) {
#if SHIFTADD_X86
  if (isa() == Isa::Avx512) return plan_avx512(M, expert, perm, counts);
#endif
  int64_t n0 = 0;
  for (int64_t m = 0; m < M; ++m) n0 += expert[m] == 0;
  int64_t i0 = 0, i1 = n0;
  for (int64_t m = 0; m < M; ++m) {
    if (expert[m] == 0)
      perm[i0++] = static_cast<int32_t>(m);
    else
      perm[i1++] = static_cast<int32_t>(m);
  }
  counts[0] = n0, counts[1] = M - n0;
}

}  // namespace shiftadd::kernels::cpu
