// Fused multi-head softmax attention: scores, online (running-max) softmax and the weighted sum
// in one kernel, fp32. Covers both forms of the Attention op: packed q|k|v, and q with a packed
// k|v from PVT's spatial reduction (Nkv != Nq); the strides in AttentionArgs say which.
//
// Grid (ceil(Nq / 8), H, B); a block of 8 warps, one query row per warp. Keys and values are
// staged through shared memory 32 at a time (shared by the block's 8 queries): lane j scores
// key j, the warp updates the running max / sum with shuffles, and lane c accumulates output
// channels c, c + 32, ... (d <= 128).
#include <cmath>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace shiftadd::kernels::cuda {
namespace {

constexpr int kWarps = 8, kTile = 32;

template <int DPL>  // output channels per lane: d <= 32 * DPL
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(AttentionArgs a) {
  SHIFTADD_DYNAMIC_SHARED(float, smem);
  const int d = static_cast<int>(a.d);
  float* Ks = smem;                    // [kTile][d + 1]
  float* Vs = Ks + kTile * (d + 1);    // [kTile][d]
  float* Qs = Vs + kTile * d;          // [kWarps][d]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t n = int64_t{blockIdx.x} * kWarps + warp;
  const bool active = n < a.Nq;
  const float* q = a.q + b * a.q_bstride + h * a.d;
  const float* k = a.k + b * a.k_bstride + h * a.d;
  const float* v = a.v + b * a.v_bstride + h * a.d;
  float* qw = Qs + warp * d;
  if (active)
    for (int c = lane; c < d; c += 32) qw[c] = q[n * a.q_ld + c];
  float m = -INFINITY, l = 0.0f, acc[DPL];
#pragma unroll
  for (int i = 0; i < DPL; ++i) acc[i] = 0.0f;
  for (int64_t j0 = 0; j0 < a.Nkv; j0 += kTile) {
    const int len = static_cast<int>(min(static_cast<int64_t>(kTile), a.Nkv - j0));
    __syncthreads();  // the previous tile is consumed (and Qs written before the first)
    for (int i = threadIdx.x; i < len * d; i += blockDim.x) {
      const int j = i / d, c = i - j * d;
      Ks[j * (d + 1) + c] = k[(j0 + j) * a.k_ld + c];
      Vs[j * d + c] = v[(j0 + j) * a.v_ld + c];
    }
    __syncthreads();
    if (!active) continue;
    float s = -INFINITY;
    if (lane < len) {
      const float* kr = Ks + lane * (d + 1);
      float dot = 0.0f;
      for (int c = 0; c < d; ++c) dot = fmaf(qw[c], kr[c], dot);
      s = a.scale * dot;
    }
    const float new_m = fmaxf(m, warp_max(s));
    const float corr = expf(m - new_m);  // 0 on the first tile (m = -inf)
    const float p = lane < len ? expf(s - new_m) : 0.0f;
    l = l * corr + warp_sum(p);
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[i] *= corr;
    for (int j = 0; j < len; ++j) {
      const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
      for (int i = 0; i < DPL; ++i) {
        const int c = lane + 32 * i;
        if (c < d) acc[i] = fmaf(pj, Vs[j * d + c], acc[i]);
      }
    }
    m = new_m;
  }
  if (!active) return;
  float* out = a.out + b * a.o_bstride + n * a.o_ld + h * a.d;
  const float inv = 1.0f / l;
#pragma unroll
  for (int i = 0; i < DPL; ++i) {
    const int c = lane + 32 * i;
    if (c < d) out[c] = acc[i] * inv;
  }
}

}  // namespace

void attention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.B <= 0 || a.H <= 0 || a.Nq <= 0) return;
  const dim3 grid(static_cast<unsigned>((a.Nq + kWarps - 1) / kWarps), static_cast<unsigned>(a.H),
                  static_cast<unsigned>(a.B));
  const size_t smem = sizeof(float) * (kTile * (a.d + 1) + kTile * a.d + kWarps * a.d);
  if (a.d <= 32)
    SHIFTADD_LAUNCH(attention_kernel<1>, grid, kWarps * 32, smem, stream)(a);
  else if (a.d <= 64)
    SHIFTADD_LAUNCH(attention_kernel<2>, grid, kWarps * 32, smem, stream)(a);
  else
    SHIFTADD_LAUNCH(attention_kernel<4>, grid, kWarps * 32, smem, stream)(a);
}

}  // namespace shiftadd::kernels::cuda
