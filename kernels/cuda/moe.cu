// MoE on the device (spec section 4): router and a stable partition into per-expert row lists
// (counts stay on the device, so a captured CUDA graph stays valid whatever the routing). The
// expert kernels (gemm_rows, shift_linear with a RowMap) read the split point and the
// permutation on the device: gather, scatter and the combine are fused into them.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace shiftadd::kernels::cuda {
namespace {

// Warp per row; double accumulation rounded to fp32 as ref::moe_router.
__global__ void router_kernel(RouterArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t m = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) >> 5;
  if (m >= a.M) return;
  const float* x = a.x + m * a.ldx;
  double s0 = 0.0, s1 = 0.0;
  for (int64_t k = lane; k < a.K; k += 32) {
    s0 += static_cast<double>(a.Wg[k]) * x[k];
    s1 += static_cast<double>(a.Wg[a.K + k]) * x[k];
  }
  s0 = warp_sum(s0);
  s1 = warp_sum(s1);
  if (lane == 0) {
    const float l0 = static_cast<float>((a.bg ? a.bg[0] : 0.0) + s0);
    const float l1 = static_cast<float>((a.bg ? a.bg[1] : 0.0) + s1);
    if (a.logits) a.logits[2 * m] = l0, a.logits[2 * m + 1] = l1;
    a.expert[m] = l1 > l0 ? 1 : 0;
  }
}

// The plan is a stable partition in two parallel kernels over tiles of kPlanTile rows:
// count the expert-0 rows of every tile, then every tile finds its output offsets from the
// counts of the tiles before it and writes its rows with warp-ballot prefix sums (order kept).
// With one tile (M <= kPlanTile: every MoE layer at small batch sizes) the write kernel counts
// for itself and the plan is one launch.
constexpr int kPlanThreads = 1024, kPlanTile = 4096;

// Expert-0 rows of the tile starting at `begin` (every thread of the block gets the count).
__device__ __forceinline__ int tile_zero_count(int64_t M, const uint8_t* expert, int64_t begin) {
  int zeros = 0;
  for (int s = 0; s < kPlanTile; s += kPlanThreads) {
    const int64_t m = begin + s + threadIdx.x;
    zeros += __syncthreads_count(m < M && expert[m] == 0);
  }
  return zeros;
}

__global__ void __launch_bounds__(kPlanThreads) plan_count_kernel(int64_t M, const uint8_t* expert, int32_t* tile_zeros) {
  const int zeros = tile_zero_count(M, expert, int64_t{blockIdx.x} * kPlanTile);
  if (threadIdx.x == 0) tile_zeros[blockIdx.x] = zeros;
}

__global__ void __launch_bounds__(kPlanThreads) plan_write_kernel(int64_t M, const uint8_t* expert, const int32_t* tile_zeros,
                                                                  int tiles, int32_t* perm, int32_t* counts, int64_t* counts64) {
  __shared__ int64_t base[2];
  __shared__ int warp_off[32];
  __shared__ int slice_total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int own_zeros = tile_zeros ? 0 : tile_zero_count(M, expert, 0);  // one tile: count here
  if (threadIdx.x == 0) {
    int64_t before = 0, total = own_zeros;
    for (int t = 0; tile_zeros && t < tiles; ++t) {
      if (t < static_cast<int>(blockIdx.x)) before += tile_zeros[t];
      total += tile_zeros[t];
    }
    base[0] = before;                                              // first expert-0 slot of this tile
    base[1] = total + (int64_t{blockIdx.x} * kPlanTile - before);  // first expert-1 slot
    if (blockIdx.x == 0) {
      counts[0] = static_cast<int32_t>(total);
      counts[1] = static_cast<int32_t>(M - total);
      if (counts64) counts64[0] = total, counts64[1] = M - total;
    }
  }
  __syncthreads();
  int64_t o0 = base[0], o1 = base[1];
  const int64_t begin = int64_t{blockIdx.x} * kPlanTile;
  for (int s = 0; s < kPlanTile && begin + s < M; s += kPlanThreads) {
    const int64_t m = begin + s + threadIdx.x;
    const bool valid = m < M;
    const bool zero = valid && expert[m] == 0;
    const unsigned mask = __ballot_sync(0xffffffffu, zero);
    const int lane_before = __popc(mask & ((1u << lane) - 1u));
    if (lane == 0) warp_off[warp] = __popc(mask);
    __syncthreads();
    if (warp == 0) {  // exclusive scan of the 32 warp counts
      const int c = warp_off[lane];
      int inc = c;
      for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += v;
      }
      warp_off[lane] = inc - c;
    }
    __syncthreads();
    // Expert-0 rows before m in this slice; the rest of the rows before m went to expert 1
    // (rows past M are all at the slice's end, so they never precede a valid row).
    const int zeros_before = warp_off[warp] + lane_before;
    if (valid) {
      if (zero)
        perm[o0 + zeros_before] = static_cast<int32_t>(m);
      else
        perm[o1 + (static_cast<int>(threadIdx.x) - zeros_before)] = static_cast<int32_t>(m);
    }
    if (threadIdx.x == kPlanThreads - 1) slice_total = zeros_before + (zero ? 1 : 0);
    __syncthreads();
    const int64_t rows = min(static_cast<int64_t>(kPlanThreads), M - (begin + s));
    o0 += slice_total;
    o1 += rows - slice_total;
    __syncthreads();  // warp_off and slice_total are rewritten by the next slice
  }
}

}  // namespace

void moe_router(const RouterArgs& a, cudaStream_t stream) {
  if (a.M <= 0) return;
  SHIFTADD_LAUNCH(router_kernel, blocks_for(a.M * 32), kThreads, 0, stream)(a);
}

size_t moe_plan_scratch_ints(int64_t M) { return static_cast<size_t>((M + kPlanTile - 1) / kPlanTile + 1); }

void moe_plan(int64_t M, const uint8_t* expert, int32_t* perm, int32_t* counts, int64_t* counts64,
              int32_t* tile_scratch, cudaStream_t stream) {
  const int tiles = static_cast<int>((M + kPlanTile - 1) / kPlanTile);
  if (tiles <= 0) return;
  const int32_t* tile_zeros = nullptr;  // one tile: plan_write_kernel counts for itself
  if (tiles > 1) {
    SHIFTADD_LAUNCH(plan_count_kernel, tiles, kPlanThreads, 0, stream)(M, expert, tile_scratch);
    tile_zeros = tile_scratch;
  }
  SHIFTADD_LAUNCH(plan_write_kernel, tiles, kPlanThreads, 0, stream)(M, expert, tile_zeros, tiles, perm, counts,
                                                                      counts64);
}

}  // namespace shiftadd::kernels::cuda
