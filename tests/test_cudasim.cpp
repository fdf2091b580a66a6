// cudasim itself (cudasim/): the semantics the CUDA tests rely on when they run without a
// GPU (barriers, warp intrinsics, deferred streams, graph capture rules, cuBLAS layouts), and
// the bugs it must report instead of passing silently. Built only with SHIFTADD_CUDA_SIM=ON.
#include <gtest/gtest.h>

#ifdef SHIFTADD_CUDA_SIM

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/common.cuh"

namespace {

// Each thread writes its index to shared memory; after the barrier it reads its neighbour's.
__global__ void neighbour_kernel(int* out, bool barrier) {
  __shared__ int tile[256];
  tile[threadIdx.x] = static_cast<int>(threadIdx.x + 1000 * blockIdx.x);
  if (barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = tile[(threadIdx.x + 1) % blockDim.x];
}

__global__ void warp_kernel(float* sums, int* up, unsigned* ballots, int* counts) {
  const int lane = threadIdx.x & 31;
  float v = static_cast<float>(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  sums[threadIdx.x] = v;
  up[threadIdx.x] = __shfl_up_sync(0xffffffffu, static_cast<int>(threadIdx.x), 3);
  ballots[threadIdx.x] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  counts[threadIdx.x] = __syncthreads_count(threadIdx.x % 5 == 0);
}

__global__ void half_warp_shuffle_kernel(float* out) {
  float v = 1.0f;
  if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);  // lanes 16..31 never arrive
  out[threadIdx.x] = v;
}

__global__ void store_kernel(float* out, int64_t n) { SHIFTADD_GRID_LOOP(i, n) out[i] = static_cast<float>(i); }

struct StoreArgs {
  int64_t n = 0;
  float* out = nullptr;
};
__global__ void store_struct_kernel(StoreArgs a) {
  SHIFTADD_GRID_LOOP(i, a.n) a.out[i] = static_cast<float>(i);
}

// Two half warps in different intrinsics with disjoint masks; a width-16 xor across segments.
__global__ void split_warp_kernel(int* out) {
  const int lane = threadIdx.x & 31;
  int v = lane;
  if (lane < 16)
    v = __shfl_xor_sync(0x0000ffffu, v, 1, 16);
  else
    v = static_cast<int>(__ballot_sync(0xffff0000u, lane % 2 == 0) >> 16);
  out[threadIdx.x] = v;
  out[32 + threadIdx.x] = __shfl_xor_sync(0xffffffffu, lane, 16, 16);
}

__global__ void smem_overrun_kernel(float* out, int n) {
  SHIFTADD_DYNAMIC_SHARED(float, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x];
}

template <class T>
T* device_alloc(size_t n) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
  return static_cast<T*>(p);
}

template <class T>
std::vector<T> download(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

TEST(CudaSim, BarrierOrdersSharedMemoryAndMissingOneIsVisible) {
  int* d = device_alloc<int>(3 * 256);
  SHIFTADD_LAUNCH(neighbour_kernel, 3, 256, 0, nullptr)(d, true);
  std::vector<int> got = download(d, 3 * 256);
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 256; ++t) ASSERT_EQ(got[b * 256 + t], (t + 1) % 256 + 1000 * b) << b << " " << t;
  // Without the barrier some threads read before their neighbour wrote (threads resume in a
  // shuffled order): the result differs, as it may on a GPU.
  SHIFTADD_LAUNCH(neighbour_kernel, 3, 256, 0, nullptr)(d, false);
  got = download(d, 3 * 256);
  int wrong = 0;
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 256; ++t) wrong += got[b * 256 + t] != (t + 1) % 256 + 1000 * b;
  EXPECT_GT(wrong, 0);
  cudaFree(d);
}

TEST(CudaSim, WarpIntrinsicsAndCountingBarrier) {
  float* sums = device_alloc<float>(64);
  int* up = device_alloc<int>(64);
  unsigned* ballots = device_alloc<unsigned>(64);
  int* counts = device_alloc<int>(64);
  SHIFTADD_LAUNCH(warp_kernel, 1, 64, 0, nullptr)(sums, up, ballots, counts);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const auto s = download(sums, 64);
  const auto u = download(up, 64);
  const auto bl = download(ballots, 64);
  const auto c = download(counts, 64);
  unsigned every_third = 0;
  for (int l = 0; l < 32; l += 3) every_third |= 1u << l;
  for (int t = 0; t < 64; ++t) {
    const int w = t / 32, lane = t % 32;
    EXPECT_EQ(s[t], static_cast<float>(32 * 32 * w + 31 * 32 / 2)) << t;  // sum over the warp
    EXPECT_EQ(u[t], lane >= 3 ? t - 3 : t) << t;
    EXPECT_EQ(bl[t], every_third) << t;
    EXPECT_EQ(c[t], 13) << t;  // 0, 5, ..., 60
  }
}

TEST(CudaSim, DisjointMasksAndSegmentedShuffles) {
  int* d = device_alloc<int>(64);
  SHIFTADD_LAUNCH(split_warp_kernel, 1, 32, 0, nullptr)(d);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto got = download(d, 64);
  for (int l = 0; l < 32; ++l) {
    EXPECT_EQ(got[l], l < 16 ? (l ^ 1) : 0x5555) << l;  // even lanes of 16..31 voted
    // Width 16: lane l reads l ^ 16 when that lane is not in a later segment (PTX shfl.bfly).
    EXPECT_EQ(got[32 + l], l < 16 ? l : l ^ 16) << l;
  }
  cudaFree(d);
}

TEST(CudaSim, StreamsRunWhenTheHostSynchronises) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  float* d = device_alloc<float>(1000);
  float* pinned = nullptr;
  ASSERT_EQ(cudaHostAlloc(reinterpret_cast<void**>(&pinned), 1000 * sizeof(float), cudaHostAllocDefault), cudaSuccess);
  std::fill(pinned, pinned + 1000, -1.0f);
  SHIFTADD_LAUNCH(store_kernel, 2, 128, 0, s)(d, int64_t{1000});
  ASSERT_EQ(cudaMemcpyAsync(pinned, d, 1000 * sizeof(float), cudaMemcpyDeviceToHost, s), cudaSuccess);
  EXPECT_EQ(pinned[999], -1.0f);  // nothing ran yet: reading before the synchronisation is a bug
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(pinned[i], static_cast<float>(i));
  cudaFreeHost(pinned);
  cudaFree(d);
  cudaStreamDestroy(s);
}

TEST(CudaSim, CaptureRecordsAndRefusesWhatCudaRefuses) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  float* d = device_alloc<float>(256);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  SHIFTADD_LAUNCH(store_kernel, 1, 256, 0, s)(d, int64_t{256});
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(download(d, 256)[255], 255.0f);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);

  // cudaMalloc while capturing fails and invalidates the capture, as on a GPU.
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(graph, nullptr);
  // So does a copy from pageable memory.
  std::vector<float> host(256, 1.0f);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(d, host.data(), 1024, cudaMemcpyHostToDevice, s), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
  // And a launch that fails (a bad configuration).
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  SHIFTADD_LAUNCH(store_kernel, dim3(1, 70000), 32, 0, s)(d, int64_t{16});
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
  cudaGetLastError();
  cudaFree(d);
  cudaStreamDestroy(s);
}

TEST(CudaSim, LaunchConfigurationAndPointerChecks) {
  float* d = device_alloc<float>(16);
  SHIFTADD_LAUNCH(store_kernel, dim3(1, 70000), 32, 0, nullptr)(d, int64_t{16});  // grid.y > 65535
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  SHIFTADD_LAUNCH(store_kernel, 1, 2048, 0, nullptr)(d, int64_t{16});  // > 1024 threads
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  std::vector<float> host(16);
  SHIFTADD_LAUNCH(store_kernel, 1, 32, 0, nullptr)(host.data(), int64_t{16});  // a host pointer
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  SHIFTADD_LAUNCH(store_struct_kernel, 1, 32, 0, nullptr)(StoreArgs{16, host.data()});  // one inside a struct
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  SHIFTADD_LAUNCH(store_struct_kernel, 1, 32, 0, nullptr)(StoreArgs{16, d});
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(d, host.data(), 64, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);   // wrong direction
  EXPECT_EQ(cudaMemcpy(d, host.data(), 128, cudaMemcpyHostToDevice), cudaErrorInvalidValue);  // past the end
  cudaGetLastError();
  cudaFree(d);
}

TEST(CudaSim, CublasColumnMajorGemmAndBoundsCheck) {
  // C[m, n] (row-major) = A[m, k] B[n, k]^T, the backend's call: Sgemm(T, N, n, m, k, B, A).
  const int m = 5, n = 7, k = 9;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> A(m * k), B(n * k), want(m * n);
  for (float& v : A) v = u(rng);
  for (float& v : B) v = u(rng);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int p = 0; p < k; ++p) s += double{A[i * k + p]} * B[j * k + p];
      want[i * n + j] = static_cast<float>(s);
    }
  float *dA = device_alloc<float>(A.size()), *dB = device_alloc<float>(B.size()), *dC = device_alloc<float>(m * n);
  cudaMemcpy(dA, A.data(), A.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, B.data(), B.size() * 4, cudaMemcpyHostToDevice);
  cublasHandle_t h;
  ASSERT_EQ(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
  const float one = 1.0f, zero = 0.0f;
  ASSERT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, dB, k, dA, k, &zero, dC, n), CUBLAS_STATUS_SUCCESS);
  const auto got = download(dC, m * n);
  for (int i = 0; i < m * n; ++i) EXPECT_NEAR(got[i], want[i], 1e-5f) << i;
  // A leading dimension one too large reads past B's allocation: reported, not computed.
  EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, dB, k + 1, dA, k, &zero, dC, n),
            CUBLAS_STATUS_EXECUTION_FAILED);
  EXPECT_EQ(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, dB, k - 1, dA, k, &zero, dC, n),
            CUBLAS_STATUS_INVALID_VALUE);  // lda < k
  cublasDestroy(h);
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dC);
}

// The kernels' argument structs are aggregates, so cudasim finds their pointer members.
TEST(CudaSim, KernelArgumentStructsAreInspected) {
  using namespace shiftadd::kernels;
  const auto members = [](const auto& v) {
    std::vector<const void*> p;
    cudasim::collect_pointers(p, v);
    return p.size();
  };
  EXPECT_GE(members(AttentionArgs{}), 4u);
  EXPECT_GE(members(KshArgs{}), 5u);
  EXPECT_GE(members(AdditiveAttentionArgs{}), 4u);
  EXPECT_GE(members(GemmArgs{}), 5u);  // A, B, C and the epilogue's bias and residual
  EXPECT_GE(members(ShiftLinearArgs{}), 4u);
  EXPECT_GE(members(Conv2dArgs{}), 4u);
  EXPECT_GE(members(DwConv3x3Args{}), 4u);
  EXPECT_GE(members(RouterArgs{}), 4u);
  EXPECT_EQ(members(shiftadd::kernels::cuda::RowMap{}), 3u);  // lo, hi, perm
}

// The reports that end the process (a GPU would fault or hang): checked in a forked child.
using CudaSimDeathTest = ::testing::Test;

TEST(CudaSimDeathTest, HostReadOfDeviceMemoryStops) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        float* d = device_alloc<float>(4);
        volatile float v = d[0];
        (void)v;
      },
      "host code touched device memory");
}

TEST(CudaSimDeathTest, KernelPastTheEndOfAnAllocationStops) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        float* d = device_alloc<float>(1000);
        SHIFTADD_LAUNCH(store_kernel, 16, 256, 0, nullptr)(d, int64_t{4096});
        cudaDeviceSynchronize();
      },
      "kernel 'store_kernel' touched .* past the end of the 4000-byte device allocation");
}

TEST(CudaSimDeathTest, DynamicSharedMemoryOverrunStops) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        float* d = device_alloc<float>(256);
        SHIFTADD_LAUNCH(smem_overrun_kernel, 1, 256, 256 * sizeof(float), nullptr)(d, 2048);
        cudaDeviceSynchronize();
      },
      "kernel 'smem_overrun_kernel' accessed dynamic shared memory .* past the 1024 bytes");
}

TEST(CudaSimDeathTest, DivergentShuffleIsALaunchFailure) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        float* d = device_alloc<float>(32);
        SHIFTADD_LAUNCH(half_warp_shuffle_kernel, 1, 32, 0, nullptr)(d);
        std::exit(cudaDeviceSynchronize() == cudaErrorLaunchFailure ? 3 : 4);
      },
      ::testing::ExitedWithCode(3), "__shfl_xor_sync");
}

}  // namespace

#else
TEST(CudaSim, NotBuilt) { GTEST_SKIP() << "configure with -DSHIFTADD_CUDA=OFF -DSHIFTADD_CUDA_SIM=ON to test cudasim"; }
#endif
