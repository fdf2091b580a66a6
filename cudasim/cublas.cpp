// cudasim: cuBLAS Sgemm / GemmEx (16F or 32F inputs, fp32 accumulation; the TF32 math mode
// rounds inputs to 10-bit significands) as column-major reference loops on the handle's stream,
// with every matrix checked against its device allocation.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cuda_fp16.h"
#include "internal.h"

namespace cudasim {
namespace {

float to_tf32(float x) {  // round to a 10-bit significand (nearest even), as TF32 tensor cores see it
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;
  u += 0xfffu + ((u >> 13) & 1u);
  u &= ~0x1fffu;
  std::memcpy(&x, &u, 4);
  return x;
}

// fp32 dot product in 8 interleaved partial sums (the order and rounding differ from a plain
// FMA loop, as cuBLAS's do; it vectorises, where std::fma would be a libm call per term).
float dot(const float* x, const float* y, int k) {
  float part[8] = {};
  int p = 0;
  for (; p + 8 <= k; p += 8)
    for (int l = 0; l < 8; ++l) part[l] += x[p + l] * y[p + l];
  float s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; p < k; ++p) s += x[p] * y[p];
  return s;
}

struct Matrix {
  const void* p;
  cudaDataType type;
  int ld;
  bool trans;
  float at(int64_t r, int64_t c) const {  // element (r, c) of op(X)
    const int64_t i = trans ? c + r * int64_t{ld} : r + c * int64_t{ld};
    return type == CUDA_R_16F ? __half2float(static_cast<const __half*>(p)[i]) : static_cast<const float*>(p)[i];
  }
};

cublasStatus_t gemm(cublasHandle_t h, const char* fn, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                    float alpha, const void* A, cudaDataType at, int lda, const void* B, cudaDataType bt, int ldb,
                    float beta, void* C, int ldc) {
  Lock lock(g_mu);
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (ta == CUBLAS_OP_C) ta = CUBLAS_OP_T;  // real matrices: conjugate transpose is transpose
  if (tb == CUBLAS_OP_C) tb = CUBLAS_OP_T;
  if (m < 0 || n < 0 || k < 0 || (ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T) ||
      lda < std::max(1, ta == CUBLAS_OP_N ? m : k) || ldb < std::max(1, tb == CUBLAS_OP_N ? k : n) ||
      ldc < std::max(1, m)) {
    report("%s: invalid arguments (m %d n %d k %d, lda %d ldb %d ldc %d, op %d/%d)", fn, m, n, k, lda, ldb, ldc, ta,
           tb);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const size_t es_a = at == CUDA_R_16F ? 2 : 4, es_b = bt == CUDA_R_16F ? 2 : 4;
  // Column-major extents: op(A) is m x k, op(B) is k x n, C is m x n.
  const auto extent = [](int rows, int cols, int ld) { return (static_cast<size_t>(cols) - 1) * ld + rows; };
  struct Check {
    const char* name;
    const void* p;
    size_t bytes;
  };
  const Check checks[3] = {{"A", A, k ? es_a * (ta == CUBLAS_OP_N ? extent(m, k, lda) : extent(k, m, lda)) : 0},
                           {"B", B, k ? es_b * (tb == CUBLAS_OP_N ? extent(k, n, ldb) : extent(n, k, ldb)) : 0},
                           {"C", C, 4 * extent(m, n, ldc)}};
  for (const Check& c : checks)
    if (c.bytes && !device_range(c.p, c.bytes)) {
      const Alloc* al = alloc_of(c.p);
      report("%s: matrix %s (%zu bytes at %p) is %s (m %d n %d k %d, lda %d ldb %d ldc %d)", fn, c.name, c.bytes, c.p,
             al ? "not inside its device allocation" : "not device memory", m, n, k, lda, ldb, ldc);
      return CUBLAS_STATUS_EXECUTION_FAILED;
    }
  const auto overlap = [](const Check& x, const Check& y) {
    const char *a = static_cast<const char*>(x.p), *b = static_cast<const char*>(y.p);
    return x.bytes && y.bytes && a < b + y.bytes && b < a + x.bytes;
  };
  for (int i = 0; i < 2; ++i)
    if (overlap(checks[i], checks[2])) {  // cuBLAS does not define an in-place GEMM
      report("%s: the output C overlaps the input %s", fn, checks[i].name);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  const bool tf32 = h->math == CUBLAS_TF32_TENSOR_OP_MATH && at == CUDA_R_32F && bt == CUDA_R_32F;
  const Matrix MA{A, at, lda, ta == CUBLAS_OP_T}, MB{B, bt, ldb, tb == CUBLAS_OP_T};
  float* Cf = static_cast<float*>(C);
  return enqueue(h->stream, Op{fn, [=]() {
                   // op(A) as m rows of k and op(B)^T as n rows of k (fp32, TF32-rounded when
                   // that math mode is on), then one contiguous dot product per output.
                   std::vector<float> a(static_cast<size_t>(m) * k), b(static_cast<size_t>(n) * k);
                   for (int i = 0; i < m; ++i)
                     for (int p = 0; p < k; ++p) a[static_cast<size_t>(i) * k + p] = MA.at(i, p);
                   for (int j = 0; j < n; ++j)
                     for (int p = 0; p < k; ++p) b[static_cast<size_t>(j) * k + p] = MB.at(p, j);
                   if (tf32) {
                     for (float& v : a) v = to_tf32(v);
                     for (float& v : b) v = to_tf32(v);
                   }
                   for (int j = 0; j < n; ++j)
                     for (int i = 0; i < m; ++i) {
                       const float c = dot(a.data() + static_cast<size_t>(i) * k, b.data() + static_cast<size_t>(j) * k, k);
                       float& out = Cf[i + static_cast<int64_t>(j) * ldc];
                       out = alpha * c + (beta == 0.0f ? 0.0f : beta * out);  // beta 0: C is not read
                     }
                 }}) == cudaSuccess
             ? CUBLAS_STATUS_SUCCESS
             : CUBLAS_STATUS_EXECUTION_FAILED;
}


}  // namespace
}  // namespace cudasim

using namespace cudasim;

extern "C" {

// ----- cuBLAS --------------------------------------------------------------------------------------
cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  Lock lock(g_mu);
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  drain_all();
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void* workspace, size_t bytes) {
  Lock lock(g_mu);
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes && !device_range(workspace, bytes)) {
    report("cublasSetWorkspace(%p, %zu bytes): not inside a device allocation", workspace, bytes);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return CUBLAS_STATUS_SUCCESS;
}
const char* cublasGetStatusString(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                           const float* beta, float* C, int ldc) {
  return gemm(handle, "cublasSgemm", transa, transb, m, n, k, *alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, *beta, C,
              ldc);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  (void)algo;
  if (Ctype != CUDA_R_32F || computeType != CUBLAS_COMPUTE_32F || Atype != Btype) {
    report("cublasGemmEx: only A/B of one type (16F or 32F), C 32F, compute 32F are simulated");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  return gemm(handle, "cublasGemmEx", transa, transb, m, n, k, *static_cast<const float*>(alpha), A, Atype, lda, B,
              Btype, ldb, *static_cast<const float*>(beta), C, ldc);
}


}  // extern "C"
