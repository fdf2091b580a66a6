#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <system_error>

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
  if (threads > kMaxThreads)
    throw Error("thread count " + std::to_string(threads) + " is over the limit of " +
                std::to_string(kMaxThreads));
  n_ = threads;
  for (int i = 0; i < n_; ++i) scratch_.emplace_back(nullptr, free_float);
  try {
    for (int t = 1; t < n_; ++t) threads_.emplace_back([this, t] { worker(t); });
  } catch (const std::system_error& e) {
    stop_workers();
    throw Error(std::string("cannot start worker threads: ") + e.what());
  }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& th : threads_) th.join();
}

static uint32_t generation_of(uint64_t claim) { return static_cast<uint32_t>(claim >> 32); }

void ThreadPool::claim_chunks(uint32_t gen, int tid) {
  uint64_t v = claim_.load(std::memory_order_acquire);
  while (generation_of(v) == gen && (v & 0xffffffffu) != 0) {
    if (!claim_.compare_exchange_weak(v, v - 1, std::memory_order_acq_rel)) continue;
    (*job_)(tid, static_cast<int64_t>(v & 0xffffffffu) - 1);
    const int64_t chunks = chunks_;  // read while the job is certainly still running
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) {
      std::lock_guard<std::mutex> lk(mu_);  // pairs with the caller's predicate check
      cv_done_.notify_one();
    }
    v = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker(int tid) {
  uint32_t seen = 0;
  for (;;) {
    auto fresh = [&] { return generation_of(claim_.load(std::memory_order_acquire)) != seen; };
    for (int i = 0; i < kSpinIterations && !fresh(); ++i) {
      SHIFTADD_PAUSE();
      // Under oversubscription, let whoever holds the core we spin on make progress.
      if ((i & 1023) == 1023) std::this_thread::yield();
    }
    if (!fresh()) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_start_.wait(lk, [&] { return stop_ || fresh(); });
      if (stop_) return;
    }
    seen = generation_of(claim_.load(std::memory_order_acquire));
    claim_chunks(seen, tid);
  }
}

void ThreadPool::run_job(int64_t chunks, FunctionRef<void(int, int64_t)> chunk) {
  if (n_ == 1 || chunks == 1) {
    for (int64_t c = 0; c < chunks; ++c) chunk(0, c);
    return;
  }
  if (chunks >= (int64_t{1} << 32)) throw Error("thread pool: too many chunks in one job");
  job_ = &chunk;
  chunks_ = chunks;
  done_.store(0, std::memory_order_relaxed);
  const uint32_t gen = ++generation_;
  {
    // Publishing under the mutex means a worker about to sleep cannot miss the job.
    std::lock_guard<std::mutex> lk(mu_);
    claim_.store(static_cast<uint64_t>(gen) << 32 | static_cast<uint64_t>(chunks),
                 std::memory_order_release);
  }
  cv_start_.notify_all();
  claim_chunks(gen, 0);
  auto finished = [&] { return done_.load(std::memory_order_acquire) == chunks; };
  for (int i = 0; i < kSpinIterations && !finished(); ++i) SHIFTADD_PAUSE();
  if (!finished()) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, finished);
  }
}

void ThreadPool::parallel_for_ref(int64_t n, FunctionRef<void(int, int64_t, int64_t)> fn) {
  if (n <= 0) return;
  const int64_t parts = std::min<int64_t>(n_, n);
  auto chunk = [&](int tid, int64_t c) { fn(tid, n * c / parts, n * (c + 1) / parts); };
  run_job(parts, chunk);
}

void ThreadPool::parallel_tasks_ref(int64_t n, FunctionRef<void(int, int64_t)> fn) {
  if (n <= 0) return;
  run_job(n, fn);
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
