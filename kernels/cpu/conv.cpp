// 2-D convolution (NCHW or token-major input) as im2col + GEMM. Output positions (over the whole batch) are the GEMM rows:
// a chunk of them is unfolded into [rows, Cin*kh*kw] patches in thread 0's scratch (after the
// GEMM's own packing space), then multiplied by the weight viewed as [Cout, Cin*kh*kw]
// (the [N,K] layout) with the bias fused, writing token-major output directly.
#include <algorithm>
#include <cstring>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
#include "shiftadd/error.h"

namespace shiftadd::kernels::cpu {
namespace {

constexpr int64_t kIm2colBytes = 2 << 20;  // patch buffer budget (whole ViT/PVT stems fit)
constexpr int64_t kMinChunkRows = 64;
constexpr int64_t kMinElemsPerThread = 32768;

int64_t patch_len(const Conv2dArgs& a) { return a.Cin * a.kh * a.kw; }

int64_t chunk_rows(const Conv2dArgs& a) {
  const int64_t rows = a.B * a.OH() * a.OW();
  const int64_t fit = kIm2colBytes / static_cast<int64_t>(patch_len(a) * sizeof(float));
  return std::min(rows, std::max(kMinChunkRows, fit));
}

// Unfolds the receptive field of output position `row` (over the batch) into dst.
void im2col_row(const Conv2dArgs& a, int64_t row, float* dst) {
  const int64_t OH = a.OH(), OW = a.OW();
  const int64_t b = row / (OH * OW), oy = row / OW % OH, ox = row % OW;
  const int64_t iy0 = oy * a.stride - a.pad, ix0 = ox * a.stride - a.pad;
  const bool x_inside = ix0 >= 0 && ix0 + a.kw <= a.W;
  if (a.channels_last) {
    // Token-major input: gather (ci, ky, kx) from pixel rows of Cin contiguous channels.
    const float* img = a.x + b * a.H * a.W * a.Cin;
    for (int64_t ci = 0; ci < a.Cin; ++ci) {
      for (int64_t ky = 0; ky < a.kh; ++ky, dst += a.kw) {
        const int64_t iy = iy0 + ky;
        if (iy < 0 || iy >= a.H) {
          std::fill(dst, dst + a.kw, 0.0f);
          continue;
        }
        const float* row = img + iy * a.W * a.Cin + ci;
        for (int64_t kx = 0; kx < a.kw; ++kx) {
          const int64_t ix = ix0 + kx;
          dst[kx] = ix >= 0 && ix < a.W ? row[ix * a.Cin] : 0.0f;
        }
      }
    }
    return;
  }
  for (int64_t ci = 0; ci < a.Cin; ++ci) {
    const float* plane = a.x + (b * a.Cin + ci) * a.H * a.W;
    for (int64_t ky = 0; ky < a.kh; ++ky, dst += a.kw) {
      const int64_t iy = iy0 + ky;
      if (iy < 0 || iy >= a.H) {
        std::fill(dst, dst + a.kw, 0.0f);
      } else if (x_inside) {
        std::memcpy(dst, plane + iy * a.W + ix0, a.kw * sizeof(float));
      } else {
        for (int64_t kx = 0; kx < a.kw; ++kx) {
          const int64_t ix = ix0 + kx;
          dst[kx] = ix >= 0 && ix < a.W ? plane[iy * a.W + ix] : 0.0f;
        }
      }
    }
  }
}

}  // namespace

size_t conv2d_scratch_bytes(const Conv2dArgs& a) {
  return gemm_scratch_bytes() + static_cast<size_t>(chunk_rows(a) * patch_len(a)) * sizeof(float);
}

void conv2d(const Conv2dArgs& a, ThreadPool& pool) {
  if (a.stride < 1 || a.pad < 0 || a.kh < 1 || a.kw < 1 || a.OH() < 1 || a.OW() < 1)
    throw Error("conv2d: bad kernel/stride/padding for the input size");
  if (pool.scratch_bytes() < conv2d_scratch_bytes(a))
    throw Error("conv2d: thread pool scratch not reserved (need conv2d_scratch_bytes())");
  const int64_t K = patch_len(a), rows = a.B * a.OH() * a.OW(), chunk = chunk_rows(a);
  float* patches = pool.scratch(0) + gemm_scratch_bytes() / sizeof(float);
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t n = std::min(chunk, rows - r0);
    parallel_chunks(pool, n, K, kMinElemsPerThread, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) im2col_row(a, r0 + r, patches + r * K);
    });
    gemm(conv_gemm_args(a, patches, r0, n), pool);
  }
}

}  // namespace shiftadd::kernels::cpu
