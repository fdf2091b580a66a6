#pragma once
// A fixed pool of worker threads (the caller's thread is worker 0) with per-thread scratch
// memory sized once at planning time, so kernels allocate nothing per run.
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace shiftadd {

// A non-owning reference to a callable: unlike std::function it never allocates, so handing
// work to the pool costs no heap traffic per kernel call.
template <class Sig> class FunctionRef;
template <class R, class... A> class FunctionRef<R(A...)> {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef>)
  FunctionRef(F& f) : obj_(&f), call_([](void* o, A... a) -> R { return (*static_cast<F*>(o))(a...); }) {}
  R operator()(A... a) const { return call_(obj_, a...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

class ThreadPool {
 public:
  static constexpr int kMaxThreads = 1024;
  explicit ThreadPool(int threads);  // threads <= 0: hardware concurrency; > kMaxThreads: Error
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_; }

  // Runs fn(tid, begin, end) over [0, n) split into contiguous chunks, one per thread
  // (fewer when n is small). Blocks until all chunks are done. Not re-entrant.
  template <class F> void parallel_for(int64_t n, F&& fn) {
    parallel_for_ref(n, FunctionRef<void(int, int64_t, int64_t)>(fn));
  }

  // Runs fn(tid, i) for each task i in [0, n), handing tasks out dynamically.
  template <class F> void parallel_tasks(int64_t n, F&& fn) {
    parallel_tasks_ref(n, FunctionRef<void(int, int64_t)>(fn));
  }

  // Per-thread scratch. reserve_scratch grows it (planning time only); scratch(tid) is
  // 64-byte aligned and at least the reserved size.
  void reserve_scratch(size_t bytes_per_thread);
  size_t scratch_bytes() const { return scratch_bytes_; }
  float* scratch(int tid) const { return scratch_[tid].get(); }

 private:
  void parallel_for_ref(int64_t n, FunctionRef<void(int, int64_t, int64_t)> fn);
  void parallel_tasks_ref(int64_t n, FunctionRef<void(int, int64_t)> fn);
  void worker(int tid);
  void stop_workers();
  // Runs chunk(tid, c) for every c in [0, chunks) on whichever threads claim them first.
  void run_job(int64_t chunks, FunctionRef<void(int, int64_t)> chunk);
  // Claims and runs chunks of job `gen` until none are left.
  void claim_chunks(uint32_t gen, int tid);

  int n_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  // The current job. `claim_` packs (generation << 32 | chunks not yet claimed): a thread that
  // wins a chunk of generation g knows job g is still running (the caller waits for every
  // chunk), so reading job_ is then safe, and a worker that wakes late finds nothing to claim
  // instead of holding the caller up.
  const FunctionRef<void(int, int64_t)>* job_ = nullptr;
  std::atomic<uint64_t> claim_{0};
  std::atomic<int64_t> done_{0};
  int64_t chunks_ = 0;
  uint32_t generation_ = 0;
  bool stop_ = false;
  size_t scratch_bytes_ = 0;
  std::vector<std::unique_ptr<float, void (*)(float*)>> scratch_;
};

}  // namespace shiftadd
