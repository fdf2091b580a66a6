#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SHIFTADD_PAUSE() _mm_pause()
#else
#define SHIFTADD_PAUSE() ((void)0)
#endif

#include "shiftadd/error.h"

namespace shiftadd {

// How long an idle thread spins before it sleeps on the condition variable. A forward pass
// hands out work every few microseconds; waking a sleeping thread costs tens of microseconds,
// as long as a small GEMM, so threads spin through the gaps between kernels.
static constexpr int kSpinIterations = 1 << 15;

static void free_float(float* p) { std::free(p); }

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n_ = threads;
  for (int i = 0; i < n_; ++i) scratch_.emplace_back(nullptr, free_float);
  for (int t = 1; t < n_; ++t) threads_.emplace_back([this, t] { worker(t); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& th : threads_) th.join();
}

void ThreadPool::worker(int tid) {
  uint64_t seen = 0;
  for (;;) {
    for (int i = 0; i < kSpinIterations && generation_.load(std::memory_order_acquire) == seen; ++i)
      SHIFTADD_PAUSE();
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_start_.wait(lk, [&] { return stop_ || generation_.load(std::memory_order_acquire) != seen; });
      if (stop_) return;
    }
    seen = generation_.load(std::memory_order_acquire);
    (*job_)(tid);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lk(mu_);  // pairs with the waiter's predicate check
      cv_done_.notify_one();
    }
  }
}

void ThreadPool::run_job(FunctionRef<void(int)> job) {
  if (n_ == 1) {
    job(0);
    return;
  }
  job_ = &job;
  pending_.store(n_ - 1, std::memory_order_relaxed);
  {
    // Publishing under the mutex means a worker that is about to sleep cannot miss it.
    std::lock_guard<std::mutex> lk(mu_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  cv_start_.notify_all();
  job(0);
  for (int i = 0; i < kSpinIterations && pending_.load(std::memory_order_acquire) != 0; ++i)
    SHIFTADD_PAUSE();
  if (pending_.load(std::memory_order_acquire) != 0) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
  }
}

void ThreadPool::parallel_for_ref(int64_t n, FunctionRef<void(int, int64_t, int64_t)> fn) {
  if (n <= 0) return;
  const int64_t parts = std::min<int64_t>(n_, n);
  if (parts == 1) {
    fn(0, 0, n);
    return;
  }
  auto job = [&](int tid) {
    if (tid >= parts) return;
    const int64_t begin = n * tid / parts, end = n * (tid + 1) / parts;
    if (begin < end) fn(tid, begin, end);
  };
  run_job(job);
}

void ThreadPool::parallel_tasks_ref(int64_t n, FunctionRef<void(int, int64_t)> fn) {
  if (n <= 0) return;
  if (n_ == 1 || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(0, i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto job = [&](int tid) {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) fn(tid, i);
  };
  run_job(job);
}

void ThreadPool::reserve_scratch(size_t bytes) {
  if (bytes <= scratch_bytes_) return;
  bytes = (bytes + 63) / 64 * 64;
  for (auto& s : scratch_) {
    float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw Error("out of memory reserving kernel scratch");
    s.reset(p);
  }
  scratch_bytes_ = bytes;
}

}  // namespace shiftadd
