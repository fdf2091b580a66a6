#pragma once
// Internal to the CPU kernels: splitting cheap elementwise work over the pool.
#include <algorithm>
#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace shiftadd::kernels::cpu {

// Runs fn(begin, end) over [0, n) in at most pool.size() contiguous chunks, using only as many
// threads as give each at least `min_work` units of `work_per_item` (waking a worker costs
// microseconds; small ops run inline on the caller).
template <typename Fn>
void parallel_chunks(ThreadPool& pool, int64_t n, int64_t work_per_item, int64_t min_work,
                     Fn&& fn) {
  if (n <= 0) return;
  const int64_t parts =
      std::clamp<int64_t>(n * work_per_item / min_work, 1, std::min<int64_t>(pool.size(), n));
  if (parts == 1) {
    fn(int64_t{0}, n);
    return;
  }
  pool.parallel_for(parts,
                    [&](int, int64_t p0, int64_t p1) { fn(n * p0 / parts, n * p1 / parts); });
}

}  // namespace shiftadd::kernels::cpu
