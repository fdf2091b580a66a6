// LinAngular attention on the GPU: per-head L2 normalisation of qk, the KSH hash into packed
// codes (uint16 for <= 16 bits, uint64 up to 64), and additive attention on those codes by bit
// iteration (find-first-set / clear-lowest-bit): the KV sums and the per-token sums are
// additions only, no multiplications.
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace shiftadd::kernels::cuda {
namespace {

__global__ void l2norm_heads_kernel(int64_t rows, int64_t H, int64_t d, const float* x, int64_t ldx, float* y,
                                    int64_t ldy) {
  SHIFTADD_GRID_LOOP(i, rows * H) {
    const int64_t r = i / H, h = i - r * H;
    const float* s = x + r * ldx + h * d;
    float* o = y + r * ldy + h * d;
    float ss = 0.0f;
    for (int64_t c = 0; c < d; ++c) ss = fmaf(s[c], s[c], ss);
    const float norm = sqrtf(ss);
    for (int64_t c = 0; c < d; ++c) o[c] = norm > 0.0f ? s[c] / norm : 0.0f;
  }
}

// Squared distances D[b, h, n, j] to the anchors, one thread per (b, h, n, j).
__global__ void ksh_dist_kernel(KshArgs a, float* D) {
  SHIFTADD_GRID_LOOP(i, a.B * a.H * a.N * a.m) {
    const int64_t j = i % a.m, bhn = i / a.m, n = bhn % a.N, bh = bhn / a.N, h = bh % a.H, b = bh / a.H;
    const float* q = a.qk + b * a.qk_bstride + n * a.qk_ld + h * a.d;
    const float* anchor = a.anchors + (h * a.m + j) * a.d;
    float s = 0.0f;
    for (int64_t c = 0; c < a.d; ++c) {
      const float t = q[c] - anchor[c];
      s = fmaf(t, t, s);
    }
    D[i] = s;
  }
}

// Block per (b, h): sigma = mean of D over this image's tokens and anchors (double sum).
__global__ void ksh_sigma_kernel(KshArgs a, const float* D, float* sigma) {
  const int64_t bh = blockIdx.x, count = a.N * a.m;
  const float* Db = D + bh * count;
  double total = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) total += Db[i];
  __shared__ double part[32];
  total = warp_sum(total);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) t += part[w];
    sigma[bh] = static_cast<float>(t / static_cast<double>(count));
  }
}

// Thread per (b, h, n): Kf = exp(-D / 2 sigma) - mvec (in place), y_k = Kf . A[h, k], bit k = y_k > 0.
__global__ void ksh_code_kernel(KshArgs a, float* D, const float* sigma) {
  SHIFTADD_GRID_LOOP(i, a.B * a.H * a.N) {
    const int64_t bh = i / a.N, h = bh % a.H;
    const float sg = sigma[bh];
    float* Kf = D + i * a.m;
    const float* mvec = a.mvec + h * a.m;
    for (int64_t j = 0; j < a.m; ++j)
      Kf[j] = (sg > 0.0f ? expf(-Kf[j] / (2.0f * sg)) : 1.0f) - mvec[j];
    uint64_t code = 0;
    for (int64_t k = 0; k < a.nbits; ++k) {
      const float* A = a.A + (h * a.nbits + k) * a.m;
      float y = 0.0f;
      for (int64_t j = 0; j < a.m; ++j) y = fmaf(Kf[j], A[j], y);
      if (y > 0.0f) code |= uint64_t{1} << k;
      if (a.preact) a.preact[i * a.nbits + k] = y;
    }
    if (a.nbits <= 16)
      static_cast<uint16_t*>(a.codes)[i] = static_cast<uint16_t>(code);
    else
      static_cast<uint64_t*>(a.codes)[i] = code;
  }
}

__device__ __forceinline__ uint64_t load_code(const AdditiveAttentionArgs& a, int64_t i) {
  return a.nbits <= 16 ? static_cast<const uint16_t*>(a.codes)[i] : static_cast<const uint64_t*>(a.codes)[i];
}

constexpr int kAddThreads = 512;
constexpr int kMaxLanes = 4;  // d <= 128

// Block per (b, h): KV[k] = sum of the v rows whose bit k is set. S token slices accumulate into
// their own shared-memory copy (thread (slice, c) owns column c: no races, no atomics), the
// slices are summed and KV [nbits, d] is written to `kv` (global scratch [B, H, nbits, d]).
__global__ void __launch_bounds__(kAddThreads) additive_kv_kernel(AdditiveAttentionArgs a, int S, float* kv_out) {
  SHIFTADD_DYNAMIC_SHARED(float, KV);  // [S][nbits][d]
  const int64_t bh = blockIdx.x, b = bh / a.H, h = bh - b * a.H;
  const int d = static_cast<int>(a.d), nb = static_cast<int>(a.nbits);
  const float* v = a.v + b * a.v_bstride + h * a.d;
  const int64_t code0 = bh * a.N;
  for (int i = threadIdx.x; i < S * nb * d; i += blockDim.x) KV[i] = 0.0f;
  __syncthreads();
  {
    const int slice = threadIdx.x / d, c = threadIdx.x - slice * d;
    if (slice < S) {
      float* kv = KV + slice * nb * d;
      for (int64_t n = slice; n < a.N; n += S) {
        uint64_t code = load_code(a, code0 + n);
        if (!code) continue;
        const float x = v[n * a.v_ld + c];
        while (code) {
          const int k = __ffsll(static_cast<long long>(code)) - 1;
          kv[k * d + c] += x;
          code &= code - 1;
        }
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nb * d; i += blockDim.x) {
    float s = KV[i];
    for (int sl = 1; sl < S; ++sl) s += KV[sl * nb * d + i];
    kv_out[bh * nb * d + i] = s;
  }
}

// Grid (ceil(N / 16), B * H), warp per token: Y = sum of KV[k] over the set bits of the token's
// (query) code,
// Z = 0.5 v + Y / pi, Z /= ||Z||, plus the 9-tap conv of v along the tokens.
__global__ void __launch_bounds__(kAddThreads) additive_out_kernel(AdditiveAttentionArgs a, const float* kv_in) {
  SHIFTADD_DYNAMIC_SHARED(float, KV);  // [nbits][d]
  const int64_t bh = blockIdx.x, b = bh / a.H, h = bh - b * a.H;
  const int d = static_cast<int>(a.d), nb = static_cast<int>(a.nbits);
  for (int i = threadIdx.x; i < nb * d; i += blockDim.x) KV[i] = kv_in[bh * nb * d + i];
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = int64_t{blockIdx.y} * (kAddThreads / 32) + warp;
  if (n >= a.N) return;
  const float* v = a.v + b * a.v_bstride + h * a.d;
  const float* taps = a.taps + h * 9;
  const float inv_pi = static_cast<float>(1.0 / M_PI);
  // Queries read KV through their own codes when q and k were hashed apart.
  const int64_t ci = bh * a.N + n;
  const uint64_t code = a.qcodes ? (a.nbits <= 16 ? static_cast<const uint16_t*>(a.qcodes)[ci]
                                                  : static_cast<const uint64_t*>(a.qcodes)[ci])
                                 : load_code(a, ci);
  float z[kMaxLanes];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxLanes; ++i) {
    const int c = lane + 32 * i;
    z[i] = 0.0f;
    if (c >= d) continue;
    float y = 0.0f;
    for (uint64_t bits = code; bits; bits &= bits - 1) y += KV[(__ffsll(static_cast<long long>(bits)) - 1) * d + c];
    z[i] = 0.5f * v[n * a.v_ld + c] + y * inv_pi;
    ss = fmaf(z[i], z[i], ss);
  }
  const float norm2 = warp_sum(ss);
  const float inv = norm2 > 0.0f ? 1.0f / sqrtf(norm2) : 1.0f;
  float* o = a.out + b * a.o_bstride + n * a.o_ld + h * a.d;
#pragma unroll
  for (int i = 0; i < kMaxLanes; ++i) {
    const int c = lane + 32 * i;
    if (c >= d) continue;
    float conv = 0.0f;
#pragma unroll
    for (int t = 0; t < 9; ++t) {
      const int64_t src = n - 4 + t;
      if (src >= 0 && src < a.N) conv = fmaf(taps[t], v[src * a.v_ld + c], conv);
    }
    o[c] = z[i] * inv + conv;
  }
}

}  // namespace

void l2norm_heads(int64_t rows, int64_t H, int64_t d, const float* x, int64_t ldx, float* y, int64_t ldy,
                  cudaStream_t stream) {
  if (rows * H <= 0) return;
  SHIFTADD_LAUNCH(l2norm_heads_kernel, blocks_for(rows * H), kThreads, 0, stream)(rows, H, d, x, ldx, y, ldy);
}

size_t ksh_scratch_floats(const KshArgs& a) {
  return static_cast<size_t>(a.B * a.H * a.N * a.m + a.B * a.H);
}

void ksh_hash(const KshArgs& a, float* scratch, cudaStream_t stream) {
  if (a.B * a.H * a.N <= 0) return;
  float* D = scratch;
  float* sigma = scratch + a.B * a.H * a.N * a.m;
  SHIFTADD_LAUNCH(ksh_dist_kernel, blocks_for(a.B * a.H * a.N * a.m), kThreads, 0, stream)(a, D);
  SHIFTADD_LAUNCH(ksh_sigma_kernel, static_cast<unsigned>(a.B * a.H), kThreads, 0, stream)(a, D, sigma);
  SHIFTADD_LAUNCH(ksh_code_kernel, blocks_for(a.B * a.H * a.N), kThreads, 0, stream)(a, D, sigma);
}

size_t additive_scratch_floats(const AdditiveAttentionArgs& a) { return static_cast<size_t>(a.B * a.H * a.nbits * a.d); }

void additive_attention(const AdditiveAttentionArgs& a, float* kv_scratch, cudaStream_t stream) {
  if (a.B * a.H <= 0 || a.N <= 0) return;
  const int64_t per_slice = a.nbits * a.d * static_cast<int64_t>(sizeof(float));
  int S = static_cast<int>(kAddThreads / a.d);
  while (S > 1 && S * per_slice > 48 * 1024) --S;
  SHIFTADD_LAUNCH(additive_kv_kernel, static_cast<unsigned>(a.B * a.H), kAddThreads, S * per_slice, stream)(
      a, S, kv_scratch);
  // Images x heads on x (no 65535 limit there), token blocks on y.
  const dim3 grid(static_cast<unsigned>(a.B * a.H),
                  static_cast<unsigned>((a.N + kAddThreads / 32 - 1) / (kAddThreads / 32)));
  SHIFTADD_LAUNCH(additive_out_kernel, grid, kAddThreads, per_slice, stream)(a, kv_scratch);
}

}  // namespace shiftadd::kernels::cuda
